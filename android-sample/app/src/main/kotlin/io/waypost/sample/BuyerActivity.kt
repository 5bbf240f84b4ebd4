package io.waypost.sample

import android.os.Bundle
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ListView
import android.widget.TextView
import android.widget.Toast
import androidx.appcompat.app.AppCompatActivity
import io.waypost.sample.core.BuyerSession
import io.waypost.sample.core.BuyerUiState
import io.waypost.sample.core.CallbackTokenProvider
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.MessageStatus
import io.waypost.sdk.WaypostException
import kotlinx.coroutines.launch

/**
 * The buyer's order screen: the courier's position as text (no map, to keep
 * the sample small) and the order chat. All SDK state handling is in
 * [BuyerSession]; this class only renders its [BuyerUiState] on the main
 * thread and forwards the send button.
 */
class BuyerActivity : AppCompatActivity() {
    private var session: BuyerSession? = null
    private lateinit var adapter: ArrayAdapter<String>

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_buyer)
        adapter = ArrayAdapter(this, android.R.layout.simple_list_item_1, mutableListOf())
        findViewById<ListView>(R.id.messages).adapter = adapter

        val token = intent.getStringExtra(EXTRA_TOKEN).orEmpty()
        val userId = intent.getStringExtra(EXTRA_USER_ID).orEmpty()
        session = try {
            BuyerSession(
                BuyerConfig(
                    baseUrl = intent.getStringExtra(EXTRA_URL).orEmpty(),
                    userId = userId,
                    // The chat store and outbox survive restarts: messages written offline are sent later.
                    dbPath = filesDir.resolve("waypost-chat.db").absolutePath,
                ),
                CallbackTokenProvider { token },
                waypostApp.platform,
                driverId = intent.getStringExtra(EXTRA_DRIVER_ID).orEmpty(),
                room = intent.getStringExtra(EXTRA_ROOM).orEmpty(),
            ) { state -> runOnUiThread { render(state, userId) } } // SDK thread → main thread
        } catch (e: WaypostException) {
            Toast.makeText(this, e.message, Toast.LENGTH_LONG).show()
            finish()
            return
        }
        session?.let { render(it.state(), userId) }

        val compose = findViewById<EditText>(R.id.compose)
        findViewById<Button>(R.id.send).setOnClickListener {
            val body = compose.text.toString().trim()
            if (body.isEmpty()) return@setOnClickListener
            try {
                session?.send(body)
                compose.text.clear()
            } catch (e: WaypostException) {
                Toast.makeText(this, e.message, Toast.LENGTH_SHORT).show()
            }
        }
        compose.setOnKeyListener { _, _, _ -> session?.typing(); false }
    }

    private fun render(state: BuyerUiState, me: String) {
        findViewById<TextView>(R.id.connection).text = state.connection
        findViewById<TextView>(R.id.tracking).text = state.tracking
        findViewById<TextView>(R.id.typing).text = state.typing.orEmpty()
        adapter.clear()
        adapter.addAll(
            state.messages.map { m ->
                val who = if (m.sender == me) "you" else m.sender
                val status = BuyerSession.statusLabel(m)
                if (m.status == MessageStatus.RECEIVED || status.isEmpty()) "$who: ${m.body}" else "$who: ${m.body}  ($status)"
            },
        )
    }

    override fun onDestroy() {
        val s = session
        session = null
        if (s != null) {
            waypostApp.scope.launch {
                s.stop()
                s.close()
            }
        }
        super.onDestroy()
    }

    companion object {
        const val EXTRA_URL = "url"
        const val EXTRA_USER_ID = "user_id"
        const val EXTRA_TOKEN = "token"
        const val EXTRA_DRIVER_ID = "driver_id"
        const val EXTRA_ROOM = "room"
    }
}

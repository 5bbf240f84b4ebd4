package io.waypost.sample

import android.os.Bundle
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ListView
import android.widget.TextView
import android.widget.Toast
import androidx.appcompat.app.AppCompatActivity
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.lifecycleScope
import androidx.lifecycle.repeatOnLifecycle
import io.waypost.sample.core.BuyerSession
import io.waypost.sample.core.BuyerUiState
import io.waypost.sample.core.CallbackTokenProvider
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.types.MessageStatus
import io.waypost.sdk.types.WaypostException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.filterNotNull
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/**
 * The buyer's order screen: the courier's position as text (no map, to keep
 * the sample small) and the order chat. All SDK state handling is in
 * [BuyerSession]; this class renders its [BuyerUiState]s, which arrive as a
 * StateFlow collected only while the screen is visible.
 *
 * Opening the client (SQLite chat store) and sending are `suspend` calls the
 * SDK runs on its own threads: the main thread never waits for the SDK.
 */
class BuyerActivity : AppCompatActivity() {
    private var session: BuyerSession? = null
    private val states = MutableStateFlow<BuyerUiState?>(null)
    private lateinit var adapter: ArrayAdapter<String>

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_buyer)
        adapter = ArrayAdapter(this, android.R.layout.simple_list_item_1, mutableListOf())
        findViewById<ListView>(R.id.messages).adapter = adapter

        val token = intent.getStringExtra(EXTRA_TOKEN).orEmpty()
        val userId = intent.getStringExtra(EXTRA_USER_ID).orEmpty()
        lifecycleScope.launch {
            val dbPath = withContext(Dispatchers.IO) { filesDir.resolve("waypost-chat.db").absolutePath } // may mkdir
            val opened = try {
                BuyerSession.open(
                    BuyerConfig(
                        baseUrl = intent.getStringExtra(EXTRA_URL).orEmpty(),
                        userId = userId,
                        // The chat store and outbox survive restarts: messages written offline are sent later.
                        dbPath = dbPath,
                    ),
                    CallbackTokenProvider { token },
                    waypostApp.platform,
                    driverId = intent.getStringExtra(EXTRA_DRIVER_ID).orEmpty(),
                    room = intent.getStringExtra(EXTRA_ROOM).orEmpty(),
                ) { state -> states.value = state } // any thread; the collector below runs on main
            } catch (e: WaypostException) {
                Toast.makeText(this@BuyerActivity, e.message, Toast.LENGTH_LONG).show()
                finish()
                return@launch
            }
            if (isDestroyed) { // left the screen while opening
                waypostApp.scope.launch { opened.stop(); opened.close() }
                return@launch
            }
            session = opened
            states.value = opened.state()
            // Push: the messaging service syncs through this client while
            // the screen is open, and through a short-lived one on the
            // same store (with this login) when a push wakes the app.
            waypostApp.activeBuyer = opened.client
            val login = BuyerLogin(
                url = intent.getStringExtra(EXTRA_URL).orEmpty(),
                userId = userId,
                token = token,
                dbPath = dbPath,
            )
            waypostApp.scope.launch {
                BuyerLogin.save(this@BuyerActivity.applicationContext, login)
                WaypostMessagingService.registerCurrentToken(this@BuyerActivity.applicationContext)
            }
        }
        lifecycleScope.launch {
            repeatOnLifecycle(Lifecycle.State.STARTED) {
                states.filterNotNull().collect { render(it, userId) }
            }
        }

        val compose = findViewById<EditText>(R.id.compose)
        findViewById<Button>(R.id.send).setOnClickListener {
            val body = compose.text.toString().trim()
            val s = session
            if (body.isEmpty() || s == null) return@setOnClickListener
            compose.text.clear()
            lifecycleScope.launch {
                try {
                    // The pending entry shows at once (through the state flow); works offline.
                    s.send(body)
                } catch (e: WaypostException) {
                    Toast.makeText(this@BuyerActivity, e.message, Toast.LENGTH_SHORT).show()
                }
            }
        }
        compose.setOnKeyListener { _, _, _ ->
            session?.typing()
            false
        }
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
            if (waypostApp.activeBuyer === s.client) waypostApp.activeBuyer = null
            // Ends tracking and chat and closes the socket; outlives the activity.
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

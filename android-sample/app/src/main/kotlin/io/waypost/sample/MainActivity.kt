package io.waypost.sample

import android.Manifest
import android.content.Intent
import android.os.Build
import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.TextView
import android.widget.Toast
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.core.content.ContextCompat
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.lifecycleScope
import androidx.lifecycle.repeatOnLifecycle
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/**
 * Start screen: server URL, id and token (mint one with
 * `waypost token --dev --sub d-1 --role driver`), then either start the
 * driver's foreground service or open the buyer screen.
 *
 * The main thread never touches disk: the saved form is loaded and saved on
 * Dispatchers.IO, and the driver's status arrives as a StateFlow the service
 * publishes (collected only while the screen is visible), not by polling the
 * SDK.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var fields: Map<String, EditText>

    private val permissions = registerForActivityResult(ActivityResultContracts.RequestMultiplePermissions()) { granted ->
        val fine = granted[Manifest.permission.ACCESS_FINE_LOCATION] == true
        val coarse = granted[Manifest.permission.ACCESS_COARSE_LOCATION] == true
        // The SDK learns the answer through the PlatformState (permission and accuracy).
        waypostApp.receivers.refreshPermissions(justAsked = true)
        when {
            fine -> startDriving()
            // Android 12+: the user may grant only approximate location. Recording still
            // works: the SDK keeps the 1-5 km fixes marked coarse and health says so.
            coarse -> {
                Toast.makeText(this, R.string.approximate_only, Toast.LENGTH_LONG).show()
                startDriving()
            }
            else -> Toast.makeText(this, "Location permission is needed to drive", Toast.LENGTH_LONG).show()
        }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        if (savedInstanceState == null) syncTappedPush(intent)
        fields = mapOf(
            "url" to findViewById(R.id.server_url),
            "user" to findViewById(R.id.user_id),
            "token" to findViewById(R.id.token),
            "track" to findViewById(R.id.track_driver_id),
            "room" to findViewById(R.id.room),
        )
        lifecycleScope.launch {
            val saved = withContext(Dispatchers.IO) {
                val prefs = getSharedPreferences("waypost", MODE_PRIVATE)
                fields.keys.associateWith { prefs.getString(it, null) }
            }
            saved.forEach { (key, value) -> if (value != null) fields.getValue(key).setText(value) }
        }

        findViewById<Button>(R.id.start_driving).setOnClickListener {
            save()
            val wanted = mutableListOf(Manifest.permission.ACCESS_FINE_LOCATION, Manifest.permission.ACCESS_COARSE_LOCATION)
            if (Build.VERSION.SDK_INT >= 33) wanted += Manifest.permission.POST_NOTIFICATIONS
            permissions.launch(wanted.toTypedArray())
        }
        findViewById<Button>(R.id.stop_driving).setOnClickListener {
            stopService(Intent(this, LocationService::class.java))
        }
        findViewById<Button>(R.id.track_order).setOnClickListener {
            save()
            startActivity(
                Intent(this, BuyerActivity::class.java)
                    .putExtra(BuyerActivity.EXTRA_URL, text("url"))
                    .putExtra(BuyerActivity.EXTRA_USER_ID, text("user"))
                    .putExtra(BuyerActivity.EXTRA_TOKEN, text("token"))
                    .putExtra(BuyerActivity.EXTRA_DRIVER_ID, text("track"))
                    .putExtra(BuyerActivity.EXTRA_ROOM, text("room")),
            )
        }

        val status = findViewById<TextView>(R.id.driver_status)
        lifecycleScope.launch {
            repeatOnLifecycle(Lifecycle.State.STARTED) {
                LocationService.status.collect { status.text = it }
            }
        }
    }

    override fun onNewIntent(intent: Intent) {
        super.onNewIntent(intent)
        syncTappedPush(intent)
    }

    /**
     * A tapped Waypost notification (shown by Android while the app was in
     * the background) opens this screen with the push's keys as extras:
     * the SDK reads what it announced, off the main thread.
     */
    private fun syncTappedPush(intent: Intent?) {
        val extras = intent?.extras ?: return
        val app = waypostApp
        app.scope.launch {
            val synced = WaypostMessagingService.syncFromExtras(app, extras) ?: return@launch
            withContext(Dispatchers.Main) {
                Toast.makeText(app, io.waypost.sample.core.PushGlue.describe(synced), Toast.LENGTH_SHORT).show()
            }
        }
    }

    private fun text(key: String) = fields.getValue(key).text.toString()

    private fun save() {
        val values = fields.mapValues { it.value.text.toString() }
        waypostApp.scope.launch(Dispatchers.IO) {
            getSharedPreferences("waypost", MODE_PRIVATE).edit()
                .apply { values.forEach { (k, v) -> putString(k, v) } }
                .commit()
        }
    }

    private fun startDriving() {
        ContextCompat.startForegroundService(
            this,
            Intent(this, LocationService::class.java)
                .putExtra(LocationService.EXTRA_URL, text("url"))
                .putExtra(LocationService.EXTRA_DRIVER_ID, text("user"))
                .putExtra(LocationService.EXTRA_TOKEN, text("token")),
        )
    }
}

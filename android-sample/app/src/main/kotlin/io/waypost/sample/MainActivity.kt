package io.waypost.sample

import android.Manifest
import android.content.Intent
import android.os.Build
import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.TextView
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.core.content.ContextCompat
import androidx.lifecycle.lifecycleScope
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch

/**
 * Start screen: server URL, id and token (mint one with
 * `waypost token --dev --sub d-1 --role driver`), then either start the
 * driver's foreground service or open the buyer screen.
 */
class MainActivity : AppCompatActivity() {
    private val permissions = registerForActivityResult(ActivityResultContracts.RequestMultiplePermissions()) { granted ->
        if (granted[Manifest.permission.ACCESS_FINE_LOCATION] == true) startDriving()
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        val prefs = getSharedPreferences("waypost", MODE_PRIVATE)
        val fields = mapOf(
            "url" to findViewById<EditText>(R.id.server_url),
            "user" to findViewById<EditText>(R.id.user_id),
            "token" to findViewById<EditText>(R.id.token),
            "track" to findViewById<EditText>(R.id.track_driver_id),
            "room" to findViewById<EditText>(R.id.room),
        )
        fields.forEach { (key, view) -> prefs.getString(key, null)?.let { view.setText(it) } }
        fun save() = prefs.edit().apply { fields.forEach { (k, v) -> putString(k, v.text.toString()) } }.apply()

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
                    .putExtra(BuyerActivity.EXTRA_URL, fields.getValue("url").text.toString())
                    .putExtra(BuyerActivity.EXTRA_USER_ID, fields.getValue("user").text.toString())
                    .putExtra(BuyerActivity.EXTRA_TOKEN, fields.getValue("token").text.toString())
                    .putExtra(BuyerActivity.EXTRA_DRIVER_ID, fields.getValue("track").text.toString())
                    .putExtra(BuyerActivity.EXTRA_ROOM, fields.getValue("room").text.toString()),
            )
        }

        // Driver status, refreshed once a second while visible.
        val status = findViewById<TextView>(R.id.driver_status)
        lifecycleScope.launch {
            while (true) {
                val s = LocationService.running
                status.text = if (s == null) "not driving" else
                    s.statusText() + "\n" + s.recentEvents().take(5).joinToString("\n")
                delay(1_000)
            }
        }
    }

    private fun startDriving() {
        val prefs = getSharedPreferences("waypost", MODE_PRIVATE)
        ContextCompat.startForegroundService(
            this,
            Intent(this, LocationService::class.java)
                .putExtra(LocationService.EXTRA_URL, prefs.getString("url", ""))
                .putExtra(LocationService.EXTRA_DRIVER_ID, prefs.getString("user", ""))
                .putExtra(LocationService.EXTRA_TOKEN, prefs.getString("token", "")),
        )
    }
}

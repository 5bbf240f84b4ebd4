package io.waypost.sample

import android.Manifest
import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.Service
import android.content.Context
import android.content.Intent
import android.content.pm.PackageManager
import android.content.pm.ServiceInfo
import android.os.Build
import android.os.IBinder
import android.os.Looper
import android.util.Log
import androidx.core.app.NotificationCompat
import androidx.core.app.ServiceCompat
import androidx.core.content.ContextCompat
import com.google.android.gms.location.FusedLocationProviderClient
import com.google.android.gms.location.LocationCallback
import com.google.android.gms.location.LocationRequest
import com.google.android.gms.location.LocationResult
import com.google.android.gms.location.LocationServices
import io.waypost.sample.core.CallbackTokenProvider
import io.waypost.sample.core.DriverSession
import io.waypost.sample.core.Fixes
import io.waypost.sample.core.LocationRequestSpec
import io.waypost.sdk.DriverConfig
import io.waypost.sdk.WaypostException
import kotlinx.coroutines.launch
import java.util.concurrent.Executors

/**
 * Foreground service of type `location`: keeps recording with the screen
 * off. Fused-provider fixes go into the SDK's [DriverSession] (which
 * buffers them in SQLite and uploads in the background); when the SDK asks
 * for different sampling (somebody started watching, the phone stopped
 * moving, the battery is low) the location request is replaced.
 */
class LocationService : Service() {
    private lateinit var fused: FusedLocationProviderClient
    private var session: DriverSession? = null
    /** record() commits to SQLite: keep it off the main thread, in order. */
    private val recorder = Executors.newSingleThreadExecutor { r -> Thread(r, "waypost-record") }

    private val callback = object : LocationCallback() {
        override fun onLocationResult(result: LocationResult) {
            val fixes = result.locations.map { l ->
                Fixes.location(
                    timeMs = l.time,
                    lat = l.latitude,
                    lon = l.longitude,
                    accuracyM = if (l.hasAccuracy()) l.accuracy else null,
                    speedMps = if (l.hasSpeed()) l.speed else null,
                    bearingDeg = if (l.hasBearing()) l.bearing else null,
                    altitudeM = if (l.hasAltitude()) l.altitude else null,
                )
            }
            recorder.execute {
                try {
                    session?.record(fixes)
                } catch (e: WaypostException) {
                    Log.e(TAG, "recording failed", e)
                }
            }
        }
    }

    override fun onCreate() {
        super.onCreate()
        fused = LocationServices.getFusedLocationProviderClient(this)
    }

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        ServiceCompat.startForeground(
            this, NOTIFICATION_ID, notification(),
            if (Build.VERSION.SDK_INT >= 29) ServiceInfo.FOREGROUND_SERVICE_TYPE_LOCATION else 0,
        )
        if (session == null && intent != null) {
            val token = intent.getStringExtra(EXTRA_TOKEN).orEmpty()
            val config = DriverConfig(
                baseUrl = intent.getStringExtra(EXTRA_URL).orEmpty(),
                driverId = intent.getStringExtra(EXTRA_DRIVER_ID).orEmpty(),
                deviceId = deviceId(),
                bufferPath = filesDir.resolve("waypost-buffer.db").absolutePath,
            )
            try {
                // A real app fetches and refreshes the token from its backend here.
                val s = DriverSession(config, CallbackTokenProvider { token }, waypostApp.platform) { spec ->
                    ContextCompat.getMainExecutor(this).execute { requestUpdates(spec) }
                }
                session = s
                running = s
                requestUpdates(s.initialRequest())
            } catch (e: WaypostException) {
                Log.e(TAG, "cannot start the driver", e)
                stopSelf()
            }
        }
        return START_REDELIVER_INTENT
    }

    private fun requestUpdates(spec: LocationRequestSpec) {
        if (ContextCompat.checkSelfPermission(this, Manifest.permission.ACCESS_FINE_LOCATION) !=
            PackageManager.PERMISSION_GRANTED
        ) {
            Log.w(TAG, "no location permission")
            return
        }
        val request = LocationRequest.Builder(spec.priority, spec.intervalMs)
            .setMinUpdateDistanceMeters(spec.minUpdateDistanceM)
            .setMaxUpdateDelayMillis(spec.maxUpdateDelayMs)
            .build()
        fused.removeLocationUpdates(callback)
        fused.requestLocationUpdates(request, callback, Looper.getMainLooper())
        Log.i(TAG, "location request: $spec")
    }

    override fun onDestroy() {
        fused.removeLocationUpdates(callback)
        val s = session
        session = null
        running = null
        recorder.shutdown()
        if (s != null) {
            // Unsent fixes stay in the buffer and go out at the next start.
            waypostApp.scope.launch {
                s.stop()
                s.close()
            }
        }
        super.onDestroy()
    }

    override fun onBind(intent: Intent?): IBinder? = null

    private fun deviceId(): String {
        val prefs = getSharedPreferences("waypost", Context.MODE_PRIVATE)
        return prefs.getString("device_id", null) ?: "android-${java.util.UUID.randomUUID().toString().take(12)}"
            .also { prefs.edit().putString("device_id", it).apply() }
    }

    private fun notification(): Notification {
        val nm = getSystemService(NotificationManager::class.java)
        nm.createNotificationChannel(
            NotificationChannel(CHANNEL_ID, getString(R.string.channel_name), NotificationManager.IMPORTANCE_LOW),
        )
        return NotificationCompat.Builder(this, CHANNEL_ID)
            .setContentTitle(getString(R.string.app_name))
            .setContentText(getString(R.string.notification_text))
            .setSmallIcon(android.R.drawable.ic_menu_mylocation)
            .setOngoing(true)
            .build()
    }

    companion object {
        private const val TAG = "WaypostLocation"
        private const val CHANNEL_ID = "tracking"
        private const val NOTIFICATION_ID = 1
        const val EXTRA_URL = "url"
        const val EXTRA_DRIVER_ID = "driver_id"
        const val EXTRA_TOKEN = "token"

        /** The running session, for the status line in [MainActivity]. */
        @Volatile var running: DriverSession? = null
            private set
    }
}

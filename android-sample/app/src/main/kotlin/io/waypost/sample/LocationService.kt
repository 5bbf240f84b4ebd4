package io.waypost.sample

import android.Manifest
import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.PendingIntent
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
import io.waypost.sdk.types.Location
import io.waypost.sdk.types.WaypostException
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/**
 * Foreground service of type `location`: keeps recording with the screen off
 * and survives process death.
 *
 * - The UI starts it with a [Shift] in the intent; the shift is persisted
 *   ([ShiftStore]) and the service returns START_STICKY, so after the system
 *   kills the process it restarts the service with a null intent, which
 *   reloads the shift and reopens the driver on the same SQLite buffer:
 *   nothing recorded before the kill is lost.
 * - The main thread never blocks: opening the driver, recording and reading
 *   its stats are `suspend` calls the SDK runs on its own threads; fixes go
 *   through a channel to one recording coroutine, so they reach the buffer
 *   in the order FLP delivered them.
 * - When the shift ends the driver shuts down and a [DrainWorker] uploads
 *   whatever is still buffered once a network is available.
 */
class LocationService : Service() {
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Main.immediate)

    /** FLP batches, in delivery order, for the one recording coroutine (bounded: a stalled
     *  store drops the newest batch rather than growing without limit). */
    private val batches = Channel<List<Location>>(capacity = 256)
    private lateinit var fused: FusedLocationProviderClient
    private lateinit var store: ShiftStore
    private var session: DriverSession? = null
    private var opening = false

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
            if (batches.trySend(fixes).isFailure) Log.w(TAG, "recording queue full: ${fixes.size} fixes dropped")
        }
    }

    override fun onCreate() {
        super.onCreate()
        fused = LocationServices.getFusedLocationProviderClient(this)
        store = ShiftStore(this)
    }

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        // Within 5 s of startForegroundService, and before any slow work.
        ServiceCompat.startForeground(
            this, NOTIFICATION_ID, notification(getString(R.string.notification_text)),
            if (Build.VERSION.SDK_INT >= 29) ServiceInfo.FOREGROUND_SERVICE_TYPE_LOCATION else 0,
        )
        if (session == null && !opening) {
            opening = true
            // A new shift from the UI carries its parameters; a START_STICKY restart after
            // process death has no intent, and WaypostApp's resume an intent without extras:
            // both reload the persisted shift.
            val fresh = intent?.hasExtra(EXTRA_URL) == true
            val restartedInBackground = intent == null
            scope.launch { open(if (fresh) intent else null, restartedInBackground) }
        }
        return START_STICKY
    }

    private suspend fun open(intent: Intent?, restartedInBackground: Boolean) {
        val shift = if (intent != null) {
            store.begin(
                url = intent.getStringExtra(EXTRA_URL).orEmpty(),
                driverId = intent.getStringExtra(EXTRA_DRIVER_ID).orEmpty(),
                token = intent.getStringExtra(EXTRA_TOKEN).orEmpty(),
            )
        } else {
            store.active()
        }
        if (shift == null) { // restarted, but the shift had ended
            stopSelf()
            return
        }
        val path = withContext(Dispatchers.IO) { bufferPath(this@LocationService) } // filesDir may mkdir
        val s = try {
            DriverSession.open(
                DriverConfig(
                    baseUrl = shift.url,
                    driverId = shift.driverId,
                    deviceId = shift.deviceId,
                    bufferPath = path,
                ),
                // A real app fetches and refreshes the token from its backend here (it may suspend).
                CallbackTokenProvider { shift.token },
                waypostApp.platform,
                onHealth = { h -> scope.launch { if (!h.ok) notify(h.summary) } }, // SDK thread → main
            ) { spec -> scope.launch { requestUpdates(spec) } } // SDK thread → main
        } catch (e: WaypostException) {
            Log.e(TAG, "cannot open the driver", e)
            mutableStatus.value = "cannot start: ${e.message}"
            opening = false
            stopSelf()
            return
        }
        session = s
        opening = false
        mutableRunning.value = true
        // The one recording coroutine: in order, suspending (never blocking) on the SDK.
        scope.launch {
            for (batch in batches) {
                try {
                    s.record(batch)
                    publishStatus(s)
                } catch (e: WaypostException) {
                    Log.e(TAG, "recording failed", e)
                    mutableStatus.value = "recording failed: ${e.message}"
                }
            }
        }
        if (!requestUpdates(s.initialRequest()) && restartedInBackground) {
            // Restarted from the background without location access (while-in-use
            // permission only): the buffer still uploads; ask the courier to reopen.
            notify(getString(R.string.notification_reopen))
        }
        publishStatus(s)
    }

    /** Returns false when there is no location permission to request updates with. */
    private fun requestUpdates(spec: LocationRequestSpec): Boolean {
        if (!spec.active) {
            // The PlatformState says denied / not determined: the SDK asks for nothing.
            fused.removeLocationUpdates(callback)
            mutableStatus.value = "no location permission"
            return false
        }
        if (ContextCompat.checkSelfPermission(this, Manifest.permission.ACCESS_FINE_LOCATION) !=
            PackageManager.PERMISSION_GRANTED &&
            ContextCompat.checkSelfPermission(this, Manifest.permission.ACCESS_COARSE_LOCATION) !=
            PackageManager.PERMISSION_GRANTED
        ) {
            Log.w(TAG, "no location permission")
            mutableStatus.value = "no location permission"
            return false
        }
        val request = LocationRequest.Builder(spec.priority, spec.intervalMs)
            .setMinUpdateDistanceMeters(spec.minUpdateDistanceM)
            .setMaxUpdateDelayMillis(spec.maxUpdateDelayMs)
            .build()
        return try {
            fused.removeLocationUpdates(callback)
            fused.requestLocationUpdates(request, callback, Looper.getMainLooper())
            Log.i(TAG, "location request: $spec")
            true
        } catch (e: SecurityException) {
            Log.w(TAG, "location access refused", e)
            false
        }
    }

    /** The status line for the UI (reads the buffer's stats: a suspend call). */
    private suspend fun publishStatus(s: DriverSession) {
        mutableStatus.value = try {
            s.statusText() + "\n" + s.recentEvents().take(5).joinToString("\n")
        } catch (e: WaypostException) {
            "status unavailable: ${e.message}"
        }
    }

    override fun onDestroy() {
        fused.removeLocationUpdates(callback)
        val s = session
        session = null
        mutableRunning.value = false
        scope.cancel()
        // The shift ended (stopService from the UI): no restart, shut the driver
        // down (suspend), then let WorkManager upload any leftovers.
        batches.close()
        val app = waypostApp
        app.scope.launch {
            store.end()
            if (s != null) {
                s.stop()
                s.close()
            }
            DrainWorker.enqueue(app)
        }
        mutableStatus.value = "not driving"
        super.onDestroy()
    }

    override fun onBind(intent: Intent?): IBinder? = null

    private fun notify(text: String) {
        getSystemService(NotificationManager::class.java).notify(NOTIFICATION_ID, notification(text))
    }

    private fun notification(text: String): Notification {
        val nm = getSystemService(NotificationManager::class.java)
        nm.createNotificationChannel(
            NotificationChannel(CHANNEL_ID, getString(R.string.channel_name), NotificationManager.IMPORTANCE_LOW),
        )
        val open = PendingIntent.getActivity(
            this, 0, Intent(this, MainActivity::class.java), PendingIntent.FLAG_IMMUTABLE,
        )
        return NotificationCompat.Builder(this, CHANNEL_ID)
            .setContentTitle(getString(R.string.app_name))
            .setContentText(text)
            .setSmallIcon(android.R.drawable.ic_menu_mylocation)
            .setContentIntent(open)
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

        private val mutableStatus = MutableStateFlow("not driving")

        /** The driver's status line, for [MainActivity] to collect (no polling, no disk). */
        val status: StateFlow<String> = mutableStatus.asStateFlow()

        private val mutableRunning = MutableStateFlow(false)

        /** Whether a shift's driver is open in this process. */
        val running: StateFlow<Boolean> = mutableRunning.asStateFlow()

        fun bufferPath(context: Context): String =
            context.filesDir.resolve("waypost-buffer.db").absolutePath
    }
}

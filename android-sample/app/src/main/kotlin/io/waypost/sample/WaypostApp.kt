package io.waypost.sample

import android.app.Application
import android.content.Intent
import android.util.Log
import androidx.core.content.ContextCompat
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import io.waypost.sdk.BuyerClient
import io.waypost.sdk.LogLevel
import io.waypost.sdk.LogSink
import io.waypost.sdk.PlatformState
import io.waypost.sdk.initLogging
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.launch

/**
 * Process-wide state: the one [PlatformState] of the process (network,
 * battery, power saver, foreground/background, location permission and
 * accuracy), kept current by [PlatformReceivers] and handed to every driver
 * and buyer client, which follow it by themselves; and a scope for SDK
 * shutdowns that must outlive the activity or service that started them.
 *
 * Nothing here opens an SDK object or touches disk on the main thread:
 * logging and the receivers are set up in onCreate; SDK objects are opened
 * by the screens and the service, on Dispatchers.IO.
 */
class WaypostApp : Application() {
    val platform = PlatformState()
    val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
    /**
     * The buyer screen's open client, for [WaypostMessagingService] (one
     * client per SQLite store); null while no buyer screen is open.
     */
    @Volatile
    var activeBuyer: BuyerClient? = null
    lateinit var receivers: PlatformReceivers
        private set

    override fun onCreate() {
        super.onCreate()
        // SDK logs into logcat (tag "Waypost"); once per process.
        initLogging("info,waypost_sdk=debug", object : LogSink {
            override fun log(level: LogLevel, target: String, message: String) {
                val priority = when (level) {
                    LogLevel.ERROR -> Log.ERROR
                    LogLevel.WARN -> Log.WARN
                    LogLevel.INFO -> Log.INFO
                    LogLevel.DEBUG -> Log.DEBUG
                    LogLevel.TRACE -> Log.VERBOSE
                }
                Log.println(priority, "Waypost", "$target: $message")
            }
        })
        receivers = PlatformReceivers(this, platform).also { it.register() }
        // Foreground/background (and a permission re-read on every return).
        ProcessLifecycleOwner.get().lifecycle.addObserver(receivers)
        ProcessLifecycleOwner.get().lifecycle.addObserver(ResumeShift())
    }

    /**
     * When the app comes to the foreground with a shift still marked running
     * but no service (the system killed the process and did not restart the
     * sticky service, or restarted it without location access), start the
     * service again: from the foreground it may, with location access.
     */
    private inner class ResumeShift : DefaultLifecycleObserver {
        override fun onStart(owner: LifecycleOwner) {
            scope.launch {
                if (ShiftStore(this@WaypostApp).active() != null && !LocationService.running.value) {
                    ContextCompat.startForegroundService(
                        this@WaypostApp, Intent(this@WaypostApp, LocationService::class.java),
                    )
                }
            }
        }
    }
}

val android.content.Context.waypostApp: WaypostApp
    get() = applicationContext as WaypostApp

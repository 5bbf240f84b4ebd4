package io.waypost.sample

import android.app.Application
import android.util.Log
import io.waypost.sample.core.PlatformState
import io.waypost.sdk.LogLevel
import io.waypost.sdk.LogSink
import io.waypost.sdk.initLogging
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob

/**
 * Process-wide state: one [PlatformState] that the broadcast receivers keep
 * current and every SDK object reads, and a scope for SDK shutdowns that
 * must outlive the activity or service that started them.
 */
class WaypostApp : Application() {
    val platform = PlatformState()
    val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
    private lateinit var receivers: PlatformReceivers

    override fun onCreate() {
        super.onCreate()
        // SDK logs into logcat (tag "Waypost").
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
    }
}

val android.content.Context.waypostApp: WaypostApp
    get() = applicationContext as WaypostApp

package io.waypost.sample

import android.app.Application
import io.waypost.sample.core.PlatformState
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
        receivers = PlatformReceivers(this, platform).also { it.register() }
    }
}

val android.content.Context.waypostApp: WaypostApp
    get() = applicationContext as WaypostApp

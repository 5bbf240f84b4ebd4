package io.waypost.sample

import android.Manifest
import android.content.BroadcastReceiver
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.content.pm.PackageManager
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import android.os.BatteryManager
import android.os.Build
import android.os.PowerManager
import androidx.core.content.ContextCompat
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import io.waypost.sample.core.PlatformInputs
import io.waypost.sdk.PlatformState
import io.waypost.sdk.types.NetworkType

/**
 * Feeds the app's one [PlatformState] from the system: network
 * (`ConnectivityManager` default network callback), battery and power saver
 * (`ACTION_BATTERY_CHANGED`, `ACTION_POWER_SAVE_MODE_CHANGED`), foreground /
 * background (`ProcessLifecycleOwner`, registered as an observer by
 * [WaypostApp]) and the location permission and accuracy (re-read whenever
 * the app comes to the foreground, since the user changes them in Settings,
 * and after every permission request: [refreshPermissions]).
 *
 * Every SDK object opened with the state follows it by itself. The mapping
 * from raw values lives in [PlatformInputs] so the JVM tests cover it.
 * Callbacks arrive on the main thread; the setters are cheap and never
 * block.
 */
class PlatformReceivers(
    private val context: Context,
    private val platform: PlatformState,
) : DefaultLifecycleObserver {
    private val power = context.getSystemService(PowerManager::class.java)
    private val connectivity = context.getSystemService(ConnectivityManager::class.java)
    private val prefs = context.getSharedPreferences("waypost-permissions", Context.MODE_PRIVATE)

    private val batteryReceiver = object : BroadcastReceiver() {
        override fun onReceive(context: Context, intent: Intent) {
            when (intent.action) {
                Intent.ACTION_BATTERY_CHANGED -> updateBattery(intent)
                // The sticky battery intent carries no power-save flag: re-read it.
                PowerManager.ACTION_POWER_SAVE_MODE_CHANGED ->
                    context.registerReceiver(null, IntentFilter(Intent.ACTION_BATTERY_CHANGED))?.let { updateBattery(it) }
            }
        }
    }

    private val networkCallback = object : ConnectivityManager.NetworkCallback() {
        override fun onCapabilitiesChanged(network: Network, caps: NetworkCapabilities) {
            platform.setNetwork(
                PlatformInputs.networkFrom(
                    hasInternet = caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_VALIDATED),
                    wifi = caps.hasTransport(NetworkCapabilities.TRANSPORT_WIFI),
                    cellular = caps.hasTransport(NetworkCapabilities.TRANSPORT_CELLULAR),
                    ethernet = caps.hasTransport(NetworkCapabilities.TRANSPORT_ETHERNET),
                ),
            )
        }

        override fun onLost(network: Network) {
            platform.setNetwork(NetworkType.OFFLINE)
        }
    }

    fun register() {
        val filter = IntentFilter().apply {
            addAction(Intent.ACTION_BATTERY_CHANGED)
            addAction(PowerManager.ACTION_POWER_SAVE_MODE_CHANGED)
        }
        // ACTION_BATTERY_CHANGED is sticky: the current state arrives at once.
        ContextCompat.registerReceiver(context, batteryReceiver, filter, ContextCompat.RECEIVER_NOT_EXPORTED)
        connectivity.registerDefaultNetworkCallback(networkCallback)
        if (connectivity.activeNetwork == null) platform.setNetwork(NetworkType.OFFLINE)
        refreshPermissions()
    }

    fun unregister() {
        context.unregisterReceiver(batteryReceiver)
        connectivity.unregisterNetworkCallback(networkCallback)
    }

    /** ProcessLifecycleOwner: the app is on screen. Permissions may have changed in Settings meanwhile. */
    override fun onStart(owner: LifecycleOwner) {
        platform.setAppState(PlatformInputs.appStateFrom(started = true))
        refreshPermissions()
    }

    override fun onStop(owner: LifecycleOwner) {
        platform.setAppState(PlatformInputs.appStateFrom(started = false))
    }

    /** Call after a permission request returns (and at start). `asked` persists across launches. */
    fun refreshPermissions(justAsked: Boolean = false) {
        if (justAsked) prefs.edit().putBoolean("asked", true).apply()
        val fine = granted(Manifest.permission.ACCESS_FINE_LOCATION)
        val coarse = granted(Manifest.permission.ACCESS_COARSE_LOCATION)
        val background = if (Build.VERSION.SDK_INT >= 29) {
            granted(Manifest.permission.ACCESS_BACKGROUND_LOCATION)
        } else {
            true // before Android 10 a location grant covers the background
        }
        platform.setPermission(PlatformInputs.permissionFrom(fine, coarse, background, prefs.getBoolean("asked", false)))
        platform.setAccuracy(PlatformInputs.accuracyFrom(fine))
    }

    private fun granted(permission: String) =
        ContextCompat.checkSelfPermission(context, permission) == PackageManager.PERMISSION_GRANTED

    private fun updateBattery(intent: Intent) {
        platform.setBattery(
            PlatformInputs.batteryFrom(
                level = intent.getIntExtra(BatteryManager.EXTRA_LEVEL, -1),
                scale = intent.getIntExtra(BatteryManager.EXTRA_SCALE, -1),
                plugged = intent.getIntExtra(BatteryManager.EXTRA_PLUGGED, 0),
                powerSave = power.isPowerSaveMode,
            ),
        )
    }
}

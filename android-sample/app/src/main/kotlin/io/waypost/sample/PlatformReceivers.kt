package io.waypost.sample

import android.content.BroadcastReceiver
import android.content.Context
import android.content.Intent
import android.content.IntentFilter
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import android.os.BatteryManager
import android.os.PowerManager
import androidx.core.content.ContextCompat
import io.waypost.sample.core.PlatformState
import io.waypost.sdk.types.NetworkType

/**
 * Feeds the phone's battery, power-saver and network state into
 * [PlatformState] (which the SDK reads, and which tells the SDK about
 * changes). The mapping from raw values lives in PlatformState's companion
 * so the JVM tests cover it.
 */
class PlatformReceivers(private val context: Context, private val platform: PlatformState) {
    private val power = context.getSystemService(PowerManager::class.java)
    private val connectivity = context.getSystemService(ConnectivityManager::class.java)

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
            platform.updateNetwork(
                PlatformState.networkFrom(
                    hasInternet = caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_VALIDATED),
                    wifi = caps.hasTransport(NetworkCapabilities.TRANSPORT_WIFI),
                    cellular = caps.hasTransport(NetworkCapabilities.TRANSPORT_CELLULAR),
                    ethernet = caps.hasTransport(NetworkCapabilities.TRANSPORT_ETHERNET),
                ),
            )
        }

        override fun onLost(network: Network) {
            platform.updateNetwork(NetworkType.OFFLINE)
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
        if (connectivity.activeNetwork == null) platform.updateNetwork(NetworkType.OFFLINE)
    }

    fun unregister() {
        context.unregisterReceiver(batteryReceiver)
        connectivity.unregisterNetworkCallback(networkCallback)
    }

    private fun updateBattery(intent: Intent) {
        platform.updateBattery(
            PlatformState.batteryFrom(
                level = intent.getIntExtra(BatteryManager.EXTRA_LEVEL, -1),
                scale = intent.getIntExtra(BatteryManager.EXTRA_SCALE, -1),
                plugged = intent.getIntExtra(BatteryManager.EXTRA_PLUGGED, 0),
                powerSave = power.isPowerSaveMode,
            ),
        )
    }
}

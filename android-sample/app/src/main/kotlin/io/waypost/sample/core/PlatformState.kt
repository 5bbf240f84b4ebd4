package io.waypost.sample.core

import io.waypost.sdk.types.BatteryState
import io.waypost.sdk.types.NetworkType
import io.waypost.sdk.PlatformInfo
import java.util.concurrent.CopyOnWriteArrayList

/**
 * Network and battery as the app's broadcast receivers last saw them.
 *
 * The SDK reads it through [PlatformInfo] from its own threads, often, so
 * reads are plain volatile loads. Receivers call [updateNetwork] /
 * [updateBattery]; on a real change the registered listeners run (the app
 * registers `driver::environmentChanged` and `buyer::environmentChanged`
 * so the SDK uploads or reconnects as soon as the network is back).
 *
 * Plain Kotlin (no Android types): the JVM tests in bindings/kotlin use it.
 */
class PlatformState(
    network: NetworkType = NetworkType.WIFI,
    battery: BatteryState = BatteryState(level = 1.0, charging = false, lowPowerMode = false),
) : PlatformInfo {
    @Volatile private var currentNetwork = network
    @Volatile private var currentBattery = battery
    private val listeners = CopyOnWriteArrayList<() -> Unit>()

    override fun network(): NetworkType = currentNetwork

    override fun battery(): BatteryState = currentBattery

    /** Runs [listener] after every change (on the thread that reported it). */
    fun addChangeListener(listener: () -> Unit) {
        listeners.add(listener)
    }

    fun removeChangeListener(listener: () -> Unit) {
        listeners.remove(listener)
    }

    /** Returns whether anything changed. */
    fun updateNetwork(network: NetworkType): Boolean {
        if (network == currentNetwork) return false
        currentNetwork = network
        listeners.forEach { it() }
        return true
    }

    /**
     * Returns whether anything changed that the SDK cares about (level
     * moves of under 1 % are ignored: ACTION_BATTERY_CHANGED fires often).
     */
    fun updateBattery(battery: BatteryState): Boolean {
        val old = currentBattery
        val same = old.charging == battery.charging &&
            old.lowPowerMode == battery.lowPowerMode &&
            kotlin.math.abs(old.level - battery.level) < 0.01
        if (same) return false
        currentBattery = battery
        listeners.forEach { it() }
        return true
    }

    companion object {
        /**
         * The battery from `ACTION_BATTERY_CHANGED` extras: `EXTRA_LEVEL`,
         * `EXTRA_SCALE`, `EXTRA_PLUGGED` (0 = on battery) and
         * `PowerManager.isPowerSaveMode`. Unknown values (-1) read as full.
         */
        fun batteryFrom(level: Int, scale: Int, plugged: Int, powerSave: Boolean): BatteryState {
            val fraction = if (level < 0 || scale <= 0) 1.0 else (level.toDouble() / scale).coerceIn(0.0, 1.0)
            return BatteryState(level = fraction, charging = plugged > 0, lowPowerMode = powerSave)
        }

        /**
         * The network from the default network's `NetworkCapabilities`:
         * validated internet, and which transports it has. Ethernet counts
         * as Wi-Fi (cheap, unmetered).
         */
        fun networkFrom(hasInternet: Boolean, wifi: Boolean, cellular: Boolean, ethernet: Boolean): NetworkType =
            when {
                !hasInternet -> NetworkType.OFFLINE
                wifi || ethernet -> NetworkType.WIFI
                cellular -> NetworkType.CELLULAR
                else -> NetworkType.WIFI // VPN or other transport with internet: treat as unmetered.
            }
    }
}

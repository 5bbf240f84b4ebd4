package io.waypost.sample.core

import io.waypost.sdk.types.AccuracyAuthorization
import io.waypost.sdk.types.AppState
import io.waypost.sdk.types.BatteryState
import io.waypost.sdk.types.LocationPermission
import io.waypost.sdk.types.MotionActivity
import io.waypost.sdk.types.NetworkType

/**
 * Raw Android readings → the SDK's platform inputs. The app's one
 * `io.waypost.sdk.PlatformState` (created in `WaypostApp`) is fed with
 * these by `PlatformReceivers`; every driver and buyer client opened with
 * it follows the changes by itself.
 *
 * Plain Kotlin (no Android types): the JVM tests in bindings/kotlin cover
 * the mapping.
 */
object PlatformInputs {
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
     * validated internet, and which transports it has. Ethernet counts as
     * Wi-Fi (cheap, unmetered).
     */
    fun networkFrom(hasInternet: Boolean, wifi: Boolean, cellular: Boolean, ethernet: Boolean): NetworkType =
        when {
            !hasInternet -> NetworkType.OFFLINE
            wifi || ethernet -> NetworkType.WIFI
            cellular -> NetworkType.CELLULAR
            else -> NetworkType.WIFI // VPN or other transport with internet: treat as unmetered.
        }

    /**
     * The permission from `checkSelfPermission` results: `background` is
     * `ACCESS_BACKGROUND_LOCATION` (Android 10+; below 10 a foreground grant
     * includes the background, pass `true`), `asked` whether the app asked
     * before (persisted by the app: Android has no "not determined" state).
     */
    fun permissionFrom(fine: Boolean, coarse: Boolean, background: Boolean, asked: Boolean): LocationPermission =
        when {
            (fine || coarse) && background -> LocationPermission.ALWAYS
            fine || coarse -> LocationPermission.WHEN_IN_USE
            asked -> LocationPermission.DENIED
            else -> LocationPermission.NOT_DETERMINED
        }

    /**
     * Android 12+: the user may grant only approximate location
     * (`ACCESS_COARSE_LOCATION` without `ACCESS_FINE_LOCATION`): fixes are
     * then 1–5 km off, and the SDK records them marked coarse.
     */
    fun accuracyFrom(fine: Boolean): AccuracyAuthorization =
        if (fine) AccuracyAuthorization.PRECISE else AccuracyAuthorization.REDUCED

    /** `ProcessLifecycleOwner`: STARTED or later means on screen. */
    fun appStateFrom(started: Boolean): AppState = if (started) AppState.FOREGROUND else AppState.BACKGROUND

    /**
     * A `com.google.android.gms.location.DetectedActivity` type (activity
     * recognition transitions), for apps that use it (this sample does not:
     * it needs the `ACTIVITY_RECOGNITION` runtime permission).
     */
    fun activityFrom(detectedActivityType: Int): MotionActivity = when (detectedActivityType) {
        0 -> MotionActivity.AUTOMOTIVE // IN_VEHICLE
        1 -> MotionActivity.CYCLING // ON_BICYCLE
        2, 7, 8 -> MotionActivity.WALKING // ON_FOOT, WALKING, RUNNING
        3 -> MotionActivity.STILL
        else -> MotionActivity.UNKNOWN // UNKNOWN, TILTING
    }
}

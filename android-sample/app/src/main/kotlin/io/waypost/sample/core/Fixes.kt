package io.waypost.sample.core

import io.waypost.sdk.types.Accuracy
import io.waypost.sdk.types.Location
import io.waypost.sdk.types.SamplingRequest

/**
 * Conversions between the OS location service and the SDK, free of Android
 * types so the JVM tests cover them: the foreground service passes the
 * fields of each `android.location.Location` to [location], and configures
 * `LocationRequest.Builder` from [LocationRequestSpec.from].
 */
object Fixes {
    /**
     * A fix from `android.location.Location` fields (`time`, `latitude`,
     * `longitude`, and `accuracy`/`speed`/`bearing`/`altitude` when their
     * `has*()` is true, else null).
     */
    fun location(
        timeMs: Long,
        lat: Double,
        lon: Double,
        accuracyM: Float? = null,
        speedMps: Float? = null,
        bearingDeg: Float? = null,
        altitudeM: Double? = null,
    ): Location = Location(
        tsMs = timeMs,
        lat = lat,
        lon = lon,
        accuracyM = accuracyM?.toDouble(),
        speedMps = speedMps?.toDouble(),
        headingDeg = bearingDeg?.toDouble(),
        altitudeM = altitudeM,
    )
}

/**
 * The fused location provider's request settings for a [SamplingRequest]:
 * `LocationRequest.Builder(priority, intervalMs)
 *      .setMinUpdateDistanceMeters(minUpdateDistanceM)
 *      .setMaxUpdateDelayMillis(maxUpdateDelayMs)`.
 */
data class LocationRequestSpec(
    /** A `com.google.android.gms.location.Priority` constant. */
    val priority: Int,
    val intervalMs: Long,
    val minUpdateDistanceM: Float,
    /** Lets the OS batch fixes (fewer wake-ups) up to this delay. */
    val maxUpdateDelayMs: Long,
    /** False: no location permission, stop the updates (do not request). */
    val active: Boolean = true,
) {
    companion object {
        // Values of com.google.android.gms.location.Priority.
        const val PRIORITY_HIGH_ACCURACY = 100
        const val PRIORITY_BALANCED_POWER_ACCURACY = 102
        const val PRIORITY_LOW_POWER = 104

        fun from(s: SamplingRequest): LocationRequestSpec {
            val priority = when (s.accuracy) {
                Accuracy.HIGH -> PRIORITY_HIGH_ACCURACY
                Accuracy.BALANCED -> PRIORITY_BALANCED_POWER_ACCURACY
                Accuracy.LOW -> PRIORITY_LOW_POWER
            }
            val interval = s.intervalMs.toLong().coerceAtLeast(1_000L)
            // High accuracy means someone watches live: deliver at once.
            // Otherwise let the OS batch up to the heartbeat; the SDK
            // records batches in one transaction anyway.
            val maxDelay = if (s.accuracy == Accuracy.HIGH) 0L else s.heartbeatMs.toLong().coerceAtLeast(interval)
            return LocationRequestSpec(priority, interval, s.distanceFilterM.toFloat(), maxDelay, s.active)
        }
    }
}

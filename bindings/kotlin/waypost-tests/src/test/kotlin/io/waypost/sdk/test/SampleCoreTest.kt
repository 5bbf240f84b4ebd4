package io.waypost.sdk.test

import io.waypost.sample.core.BuyerSession
import io.waypost.sample.core.LocationRequestSpec
import io.waypost.sample.core.PlatformInputs
import io.waypost.sdk.PlatformState
import io.waypost.sdk.types.AccuracyAuthorization
import io.waypost.sdk.types.AppState
import io.waypost.sdk.types.LocationPermission
import io.waypost.sdk.types.MotionActivity
import io.waypost.sdk.types.Accuracy
import io.waypost.sdk.types.BatteryState
import io.waypost.sdk.types.LocationUpdate
import io.waypost.sdk.types.NetworkType
import io.waypost.sdk.types.SamplingRequest
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/** The Android sample's platform-free logic (no server needed). */
class SampleCoreTest {
    @Test
    fun `battery and network readings map onto the SDK's types`() {
        assertEquals(BatteryState(0.5, true, false), PlatformInputs.batteryFrom(50, 100, 2, false))
        assertEquals(BatteryState(1.0, false, true), PlatformInputs.batteryFrom(-1, -1, 0, true))
        assertEquals(NetworkType.OFFLINE, PlatformInputs.networkFrom(false, true, false, false))
        assertEquals(NetworkType.WIFI, PlatformInputs.networkFrom(true, false, true, true))
        assertEquals(NetworkType.CELLULAR, PlatformInputs.networkFrom(true, false, true, false))
    }

    @Test
    fun `permission, accuracy, lifecycle and activity readings map onto the SDK's types`() {
        assertEquals(LocationPermission.ALWAYS, PlatformInputs.permissionFrom(fine = true, coarse = true, background = true, asked = true))
        assertEquals(LocationPermission.WHEN_IN_USE, PlatformInputs.permissionFrom(fine = false, coarse = true, background = false, asked = true))
        assertEquals(LocationPermission.DENIED, PlatformInputs.permissionFrom(fine = false, coarse = false, background = false, asked = true))
        assertEquals(LocationPermission.NOT_DETERMINED, PlatformInputs.permissionFrom(fine = false, coarse = false, background = false, asked = false))
        assertEquals(AccuracyAuthorization.REDUCED, PlatformInputs.accuracyFrom(fine = false))
        assertEquals(AccuracyAuthorization.PRECISE, PlatformInputs.accuracyFrom(fine = true))
        assertEquals(AppState.BACKGROUND, PlatformInputs.appStateFrom(started = false))
        assertEquals(MotionActivity.STILL, PlatformInputs.activityFrom(3))
        assertEquals(MotionActivity.AUTOMOTIVE, PlatformInputs.activityFrom(0))
        assertEquals(MotionActivity.UNKNOWN, PlatformInputs.activityFrom(5))
    }

    @Test
    fun `the SDK's PlatformState reports only real changes`() {
        val p = PlatformState()
        assertFalse(p.setNetwork(NetworkType.WIFI), "Wi-Fi is the default")
        assertTrue(p.setNetwork(NetworkType.OFFLINE))
        assertEquals(NetworkType.OFFLINE, p.snapshot().network)
        assertTrue(p.setBattery(BatteryState(0.995, false, false)))
        assertFalse(p.setBattery(BatteryState(0.99, false, false)), "sub-1 % level change ignored")
        assertTrue(p.setBattery(BatteryState(0.99, true, false)))
        assertTrue(p.setPermission(LocationPermission.WHEN_IN_USE))
        assertTrue(p.setAppState(AppState.BACKGROUND))
        assertTrue(p.setAccuracy(AccuracyAuthorization.REDUCED))
        assertTrue(p.setActivity(MotionActivity.STILL))
        val s = p.snapshot()
        assertEquals(LocationPermission.WHEN_IN_USE, s.permission)
        assertEquals(AccuracyAuthorization.REDUCED, s.accuracy)
        assertEquals(BatteryState(0.99, true, false), s.battery)
    }

    @Test
    fun `sampling requests become fused-provider settings`() {
        val high = LocationRequestSpec.from(SamplingRequest(Accuracy.HIGH, 1_000u, 5.0, 30_000u, true, false))
        assertEquals(LocationRequestSpec(LocationRequestSpec.PRIORITY_HIGH_ACCURACY, 1_000, 5f, 0), high)
        val low = LocationRequestSpec.from(SamplingRequest(Accuracy.LOW, 200u, 50.0, 120_000u, true, true))
        assertEquals(LocationRequestSpec(LocationRequestSpec.PRIORITY_LOW_POWER, 1_000, 50f, 120_000), low)
        val off = LocationRequestSpec.from(SamplingRequest(Accuracy.HIGH, 1_000u, 5.0, 30_000u, false, false))
        assertFalse(off.active, "permission denied: no updates requested")
    }

    @Test
    fun `tracking text`() {
        val u = LocationUpdate("d-1", 7u, 0, 52.52, 13.405, 8.0, 10.0, null)
        assertEquals("Courier at 52.52000, 13.40500 · ±8 m · 36 km/h", BuyerSession.trackingText(u))
    }
}

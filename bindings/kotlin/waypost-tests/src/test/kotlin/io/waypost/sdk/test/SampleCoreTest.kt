package io.waypost.sdk.test

import io.waypost.sample.core.BuyerSession
import io.waypost.sample.core.LocationRequestSpec
import io.waypost.sample.core.PlatformState
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
        assertEquals(BatteryState(0.5, true, false), PlatformState.batteryFrom(50, 100, 2, false))
        assertEquals(BatteryState(1.0, false, true), PlatformState.batteryFrom(-1, -1, 0, true))
        assertEquals(NetworkType.OFFLINE, PlatformState.networkFrom(false, true, false, false))
        assertEquals(NetworkType.WIFI, PlatformState.networkFrom(true, false, true, true))
        assertEquals(NetworkType.CELLULAR, PlatformState.networkFrom(true, false, true, false))
    }

    @Test
    fun `platform changes notify listeners only on real changes`() {
        val p = PlatformState()
        var calls = 0
        p.addChangeListener { calls++ }
        assertFalse(p.updateNetwork(NetworkType.WIFI))
        assertTrue(p.updateNetwork(NetworkType.OFFLINE))
        assertEquals(NetworkType.OFFLINE, p.network())
        assertFalse(p.updateBattery(BatteryState(0.995, false, false)), "sub-1 % level change ignored")
        assertTrue(p.updateBattery(BatteryState(0.995, true, false)))
        assertEquals(2, calls)
    }

    @Test
    fun `sampling requests become fused-provider settings`() {
        val high = LocationRequestSpec.from(SamplingRequest(Accuracy.HIGH, 1_000u, 5.0, 30_000u))
        assertEquals(LocationRequestSpec(LocationRequestSpec.PRIORITY_HIGH_ACCURACY, 1_000, 5f, 0), high)
        val low = LocationRequestSpec.from(SamplingRequest(Accuracy.LOW, 200u, 50.0, 120_000u))
        assertEquals(LocationRequestSpec(LocationRequestSpec.PRIORITY_LOW_POWER, 1_000, 50f, 120_000), low)
    }

    @Test
    fun `tracking text`() {
        val u = LocationUpdate("d-1", 7u, 0, 52.52, 13.405, 8.0, 10.0, null)
        assertEquals("Courier at 52.52000, 13.40500 · ±8 m · 36 km/h", BuyerSession.trackingText(u))
    }
}

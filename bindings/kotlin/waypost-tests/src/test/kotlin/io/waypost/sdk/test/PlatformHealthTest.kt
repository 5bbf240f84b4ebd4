package io.waypost.sdk.test

import io.waypost.sample.core.Fixes
import io.waypost.sdk.Driver
import io.waypost.sdk.DriverConfig
import io.waypost.sdk.HealthListener
import io.waypost.sdk.ktx.health
import io.waypost.sdk.PlatformState
import io.waypost.sdk.staticToken
import io.waypost.sdk.types.AccuracyAuthorization
import io.waypost.sdk.types.DropReason
import io.waypost.sdk.types.DriverHealth
import io.waypost.sdk.types.HealthReason
import io.waypost.sdk.types.HealthSeverity
import io.waypost.sdk.types.LocationPermission
import io.waypost.sdk.types.NetworkType
import io.waypost.sdk.types.RecordOutcome
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.util.concurrent.CopyOnWriteArrayList

/**
 * The one per-process PlatformState and the driver's health, through the
 * Kotlin bindings against the real native library and a real server.
 */
class PlatformHealthTest {
    private fun config(driverId: String) = DriverConfig(
        baseUrl = TestEnv.url,
        driverId = driverId,
        deviceId = "jvm-ph",
        bufferPath = TestEnv.tempDir().resolve("buffer.db").toString(),
    )

    /** Fixes 6 s and ~110 m apart, ending a few seconds ago. */
    private fun route(n: Int, accuracyM: Float = 8f) = (0 until n).map { i ->
        Fixes.location(
            timeMs = System.currentTimeMillis() - 5_000 - (n - 1 - i) * 6_000L,
            lat = 52.52 + i * 0.001,
            lon = 13.405,
            accuracyM = accuracyM,
            speedMps = 18f,
        )
    }

    private class Reports : HealthListener {
        val reports = CopyOnWriteArrayList<DriverHealth>()
        override fun onHealth(health: DriverHealth) { reports += health }
        fun codes() = reports.map { r -> r.issues.map { it.code } }
    }

    @Test
    fun `going offline shows in health and coming back uploads without any other call`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val platform = PlatformState()
        platform.setNetwork(NetworkType.OFFLINE)
        val driver = Driver.open(config(driverId), staticToken(TestEnv.token(driverId, "driver")), null, platform)
        val reports = Reports()
        val sub = driver.addHealthListener(reports)
        try {
            driver.start()
            val outcomes = driver.recordMany(route(4))
            assertTrue(outcomes.all { it is RecordOutcome.Recorded }, "$outcomes")
            val health = driver.health()
            assertEquals(listOf("offline"), health.issues.map { it.code }, health.summary)
            assertFalse(health.ok)
            assertEquals(HealthReason.Offline(4uL), health.issues[0].reason)
            assertTrue(health.summary.contains("offline"), health.summary)
            assertEquals(0uL, driver.stats().requests, "nothing sent while offline")

            // What the ConnectivityManager callback does; nothing else is called.
            assertTrue(platform.setNetwork(NetworkType.WIFI))
            TestEnv.await("the backlog reaches the server") { TestEnv.trail(driverId).size == 4 }
            TestEnv.await("health clears") { driver.health().ok }
            TestEnv.await("the listener heard it") { reports.codes().lastOrNull() == emptyList<String>() }
            // Offline with an empty buffer holds nothing back (no issue): the report
            // on add is healthy, "offline" comes with the first waiting fix.
            assertEquals(
                listOf(emptyList(), listOf("offline"), emptyList()),
                reports.codes(),
                "one report per change, not per fix",
            )
        } finally {
            sub.close()
            driver.shutdown()
            driver.close()
        }
    }

    @Test
    fun `reduced accuracy fixes are uploaded marked coarse and precise mode rejects and counts them`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val platform = PlatformState()
        val driver = Driver.open(config(driverId), staticToken(TestEnv.token(driverId, "driver")), null, platform)
        try {
            val fuzzy = route(4, accuracyM = 3_000f)
            val rejected = driver.recordMany(fuzzy.take(3))
            assertTrue(
                rejected.all { it is RecordOutcome.Dropped && it.reason is DropReason.Inaccurate },
                "$rejected",
            )
            val counted = driver.health()
            assertEquals(listOf("fixes_rejected_inaccurate"), counted.issues.map { it.code }, counted.summary)
            assertEquals(HealthReason.FixesRejectedInaccurate(3uL, 3_000.0, 100.0), counted.issues[0].reason)
            assertEquals(3uL, counted.rejectedInaccurateTotal)

            // The user allowed approximate location only.
            assertTrue(platform.setAccuracy(AccuracyAuthorization.REDUCED))
            val sampling = driver.desiredSampling()
            assertTrue(sampling.coarse && sampling.active, "$sampling")
            assertTrue(sampling.intervalMs >= 60_000uL, "coarse fixes are sampled slowly: $sampling")
            val kept = driver.recordMany(fuzzy.drop(3))
            assertTrue(kept.single() is RecordOutcome.Recorded, "$kept")
            assertTrue(driver.lastRecorded()!!.coarse)
            val reduced = driver.health()
            assertEquals(listOf("accuracy_reduced"), reduced.issues.map { it.code }, reduced.summary)
            assertEquals(1uL, reduced.coarseRecordedTotal)

            assertEquals(0uL, driver.uploadNow().pending)
            val (status, body) = TestEnv.get("/v1/drivers/$driverId/trail?limit=1000")
            assertEquals(200, status, body)
            assertEquals(1, Regex("\"coarse\":true").findAll(body).count(), body)
            assertTrue(body.contains("\"accuracy_m\":3000.0"), body)
        } finally {
            driver.shutdown()
            driver.close()
        }
    }

    @Test
    fun `denied permission requests nothing and health says why`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val platform = PlatformState()
        val driver = Driver.open(config(driverId), staticToken(TestEnv.token(driverId, "driver")), null, platform)
        val reports = Reports()
        val sub = driver.addHealthListener(reports)
        try {
            driver.start()
            assertTrue(driver.desiredSampling().active)
            platform.setPermission(LocationPermission.DENIED)
            assertFalse(driver.desiredSampling().active)
            TestEnv.await("the listener hears about it") { reports.codes().lastOrNull() == listOf("permission_denied") }
            val issue = reports.reports.last().issues.single()
            assertEquals(HealthSeverity.CRITICAL, issue.severity)
            assertTrue(issue.message.contains("permission"), issue.message)
            sub.cancel()
            platform.setPermission(LocationPermission.ALWAYS)
            Thread.sleep(200)
            assertEquals(listOf("permission_denied"), reports.codes().last(), "no reports after cancel")
            assertTrue(driver.health().ok)
        } finally {
            sub.close()
            driver.shutdown()
            driver.close()
        }
    }

    @Test
    fun `Driver health is a Flow with the current report first, then changes, and cancelling removes its listener`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val platform = PlatformState()
        platform.setNetwork(NetworkType.OFFLINE)
        val driver = Driver.open(config(driverId), staticToken(TestEnv.token(driverId, "driver")), null, platform)
        driver.start()
        // Fixes waiting while offline: that is what makes "offline" an issue.
        assertTrue(driver.recordMany(route(2)).all { it is RecordOutcome.Recorded })
        val seen = CopyOnWriteArrayList<List<String>>()
        val job = launch(Dispatchers.Default, start = CoroutineStart.UNDISPATCHED) {
            driver.health.collect { h -> seen += h.issues.map { it.code } }
        }
        try {
            TestEnv.await("the current report arrives at once") { seen.isNotEmpty() }
            assertEquals(listOf("offline"), seen.first())
            assertTrue(platform.setNetwork(NetworkType.WIFI))
            TestEnv.await("the change arrives") { seen.last().isEmpty() }
            job.cancel()
            job.join()
            val before = seen.size
            TestEnv.await("the backlog is uploaded") { runBlocking { driver.stats() }.pending == 0uL }
            assertTrue(platform.setNetwork(NetworkType.OFFLINE))
            // Nothing waiting: offline alone is no issue.
            assertTrue(driver.health().ok, driver.health().summary)
            assertTrue(platform.setPermission(LocationPermission.DENIED))
            TestEnv.await("the driver sees it") { driver.health().issues.any { it.code == "permission_denied" } }
            Thread.sleep(200)
            assertEquals(before, seen.size, "no reports after the collection is cancelled")
        } finally {
            job.cancel()
            driver.shutdown()
            driver.close()
        }
    }
}

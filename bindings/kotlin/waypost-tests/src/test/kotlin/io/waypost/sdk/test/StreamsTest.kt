package io.waypost.sdk.test

import io.waypost.sample.core.Fixes
import io.waypost.sdk.PlatformState
import io.waypost.sdk.BuyerClient
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.BuyerListener
import io.waypost.sdk.Driver
import io.waypost.sdk.DriverConfig
import io.waypost.sdk.ktx.BuyerListenerAdapter
import io.waypost.sdk.ktx.chatMessages
import io.waypost.sdk.ktx.connectionState
import io.waypost.sdk.ktx.driverLocations
import io.waypost.sdk.ktx.events
import io.waypost.sdk.staticToken
import io.waypost.sdk.types.ChatEntry
import io.waypost.sdk.types.ConnectionState
import io.waypost.sdk.types.DriverEvent
import io.waypost.sdk.types.LocationUpdate
import io.waypost.sdk.LogLevel
import io.waypost.sdk.types.RecordOutcome
import java.lang.ref.WeakReference
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicLong
import kotlinx.coroutines.CoroutineExceptionHandler
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.cancel
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.isActive
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.test.runTest
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Disabled
import org.junit.jupiter.api.Test
import kotlin.time.Duration.Companion.seconds

/** A listener that owns its client, as an activity that is both would. */
private class OwningListener : BuyerListenerAdapter() {
    var client: BuyerClient? = null
}

/** The -ktx Flows and the threading contract, against the real library and server. */
class StreamsTest {
    private fun driverConfig(driverId: String) = DriverConfig(
        baseUrl = TestEnv.url,
        driverId = driverId,
        deviceId = "jvm-1",
        bufferPath = TestEnv.tempDir().resolve("buffer.db").toString(),
    )

    private suspend fun openDriver(driverId: String) =
        Driver.open(driverConfig(driverId), staticToken(TestEnv.token(driverId, "driver")), null, PlatformState())

    /** Records one fix at [lat] (30 s after the previous one: move ~100 m per call, no jump) and uploads it. */
    private val clock = AtomicLong(System.currentTimeMillis() - 600_000)
    private suspend fun moveTo(driver: Driver, lat: Double) {
        val outcome = driver.record(Fixes.location(clock.addAndGet(30_000), lat, 13.405, 5f, 4f))
        assertTrue(outcome is RecordOutcome.Recorded, "$outcome")
        assertEquals(0uL, driver.uploadNow().pending)
    }

    /** Subscribers of [channel] on the server (admin API). */
    private fun subscribers(channel: String): Long {
        val (status, body) = TestEnv.get("/v1/admin/channels/$channel")
        check(status == 200) { "admin: HTTP $status $body" }
        return Regex("\"subscribers\":(\\d+)").find(body)!!.groupValues[1].toLong()
    }

    private suspend fun openBuyer(buyerId: String, channels: List<String>, listener: BuyerListener = BuyerListenerAdapter()) =
        BuyerClient.open(
            BuyerConfig(baseUrl = TestEnv.url, userId = buyerId),
            listener,
            staticToken(TestEnv.token(buyerId, "buyer", channels)),
            null,
        )

    @Test
    fun `a driver Flow yields only its driver and cancelling it ends the core and wire subscription`(): Unit = runBlocking {
        val d1 = TestEnv.uniqueId("d")
        val d2 = TestEnv.uniqueId("d")
        val buyer = openBuyer(TestEnv.uniqueId("b"), listOf("tracking:$d1", "tracking:$d2"))
        val driver1 = openDriver(d1)
        val driver2 = openDriver(d2)
        val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
        try {
            val seen1 = CopyOnWriteArrayList<LocationUpdate>()
            val seen2 = CopyOnWriteArrayList<LocationUpdate>()
            val job1 = scope.launch { buyer.driverLocations(d1).collect { seen1 += it } }
            scope.launch { buyer.driverLocations(d2).collect { seen2 += it } }
            TestEnv.await("both wire subscriptions") { subscribers("tracking:$d1") == 1L && subscribers("tracking:$d2") == 1L }
            assertEquals(2u, buyer.subscriptionCount())

            moveTo(driver1, 48.100)
            moveTo(driver2, 50.100)
            TestEnv.await("each Flow got its driver") { seen1.isNotEmpty() && seen2.isNotEmpty() }
            assertTrue(seen1.all { it.driverId == d1 }, "$seen1")
            assertTrue(seen2.all { it.driverId == d2 }, "$seen2")

            job1.cancelAndJoin()
            assertEquals(1u, buyer.subscriptionCount(), "the core listener is gone at once")
            TestEnv.await("the wire subscription of d1 ended") { subscribers("tracking:$d1") == 0L }
            val before = seen1.size
            moveTo(driver1, 48.101)
            moveTo(driver2, 50.101)
            // d2's newer fix is the barrier: d1's went out before it.
            TestEnv.await("d2's second fix") { seen2.any { near(it.lat, 50.101) } }
            assertEquals(before, seen1.size, "no updates after cancel")
            assertEquals(1L, subscribers("tracking:$d2"))
        } finally {
            scope.cancel()
            driver1.shutdown(); driver2.shutdown(); buyer.shutdown()
            driver1.close(); driver2.close(); buyer.close()
        }
    }

    @Test
    fun `a collector that throws does not kill the SDK, another collector keeps receiving`(): Unit = runBlocking {
        val d = TestEnv.uniqueId("d")
        val buyer = openBuyer(TestEnv.uniqueId("b"), listOf("tracking:$d"))
        val driver = openDriver(d)
        val failures = CopyOnWriteArrayList<Throwable>()
        val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default + CoroutineExceptionHandler { _, e -> failures += e })
        try {
            val good = CopyOnWriteArrayList<LocationUpdate>()
            val bad = scope.launch { buyer.driverLocations(d).collect { throw IllegalStateException("collector bug") } }
            scope.launch { buyer.driverLocations(d).collect { good += it } }
            TestEnv.await("two core subscriptions") { buyer.subscriptionCount() == 2u }
            moveTo(driver, 47.100)
            TestEnv.await("the throwing collector failed") { bad.isCompleted }
            assertTrue(failures.single() is IllegalStateException, "$failures")
            TestEnv.await("its subscription ended") { buyer.subscriptionCount() == 1u }
            moveTo(driver, 47.101)
            TestEnv.await("the other collector keeps receiving") { good.any { near(it.lat, 47.101) } }
            assertTrue(buyer.connectionState.value is ConnectionState.Connected)
        } finally {
            scope.cancel()
            driver.shutdown(); buyer.shutdown()
            driver.close(); buyer.close()
        }
    }

    @Test
    fun `connection state is a StateFlow and chat messages a per-room Flow`() = runTest {
        // Real I/O: wait on a real dispatcher (runTest's virtual clock would skip the timeouts).
        withContext(Dispatchers.Default) {
            val room = TestEnv.uniqueId("room")
            val other = TestEnv.uniqueId("room")
            val buyerId = TestEnv.uniqueId("b")
            val vendorId = TestEnv.uniqueId("v")
            val buyer = openBuyer(buyerId, listOf("chat:$room", "chat:$other"))
            val vendor = openBuyer(vendorId, listOf("chat:$room", "chat:$other"))
            try {
                withTimeout(10.seconds) { buyer.connectionState.first { it is ConnectionState.Connected } }
                val got = CopyOnWriteArrayList<ChatEntry>()
                val job = launch { buyer.chatMessages(room).collect { got += it } }
                TestEnv.await("joined") { subscribers("chat:$room") >= 1L && buyer.subscriptionCount() >= 2u }
                vendor.sendMessage(other, "not for this Flow")
                vendor.sendMessage(room, "hello")
                TestEnv.await("the room's message") { got.any { it.body == "hello" } }
                assertTrue(got.none { it.room != room }, "$got")
                job.cancelAndJoin()
                buyer.shutdown()
                withTimeout(10.seconds) { buyer.connectionState.first { it is ConnectionState.Closed } }
            } finally {
                buyer.shutdown(); vendor.shutdown()
                buyer.close(); vendor.close()
            }
        }
    }

    @Test
    fun `driver events arrive as a Flow`(): Unit = runBlocking {
        val d = TestEnv.uniqueId("d")
        val driver = openDriver(d)
        try {
            val uploaded = CopyOnWriteArrayList<DriverEvent.Uploaded>()
            val job = launch(Dispatchers.Default) {
                driver.events.collect { if (it is DriverEvent.Uploaded) uploaded += it }
            }
            TestEnv.await("watching") { driver.watcherCount() == 1u }
            moveTo(driver, 45.0)
            TestEnv.await("Uploaded") { uploaded.isNotEmpty() }
            job.cancelAndJoin()
            assertEquals(0u, driver.watcherCount(), "cancelling the collection ends the core subscription")
        } finally {
            driver.shutdown()
            driver.close()
        }
    }

    @Test
    fun `events raised before the first collection are replayed to it, later collections start fresh`(): Unit = runBlocking {
        val d = TestEnv.uniqueId("d")
        val driver = openDriver(d)
        try {
            // The upload finishes before anything collects the events.
            moveTo(driver, 44.0)
            assertEquals(0u, driver.watcherCount())
            val first = CopyOnWriteArrayList<DriverEvent>()
            val job = launch(Dispatchers.Default) { driver.events.collect { first += it } }
            TestEnv.await("the early Uploaded event is replayed") { first.any { it is DriverEvent.Uploaded } }
            val second = CopyOnWriteArrayList<DriverEvent>()
            val job2 = launch(Dispatchers.Default) { driver.events.collect { second += it } }
            TestEnv.await("both collecting") { driver.watcherCount() == 2u }
            assertTrue(second.none { it is DriverEvent.Uploaded }, "no replay for a later collection: $second")
            moveTo(driver, 44.001)
            TestEnv.await("both hear the next upload") {
                first.count { it is DriverEvent.Uploaded } == 2 && second.count { it is DriverEvent.Uploaded } == 1
            }
            job.cancelAndJoin()
            job2.cancelAndJoin()
        } finally {
            driver.shutdown()
            driver.close()
        }
    }

    @Test
    fun `a main-thread stand-in is never blocked while the store is busy`(): Unit = runBlocking {
        val d = TestEnv.uniqueId("d")
        val executor = Executors.newSingleThreadExecutor { Thread(it, "main-stand-in") }
        val main = executor.asCoroutineDispatcher()
        try {
            val driver = withContext(main) { openDriver(d) }
            try {
                var maxGapMs = 0L
                var longestCallMs = 0L
                var recorded = 0
                withContext(main) {
                    // The "UI" ticks every 5 ms on the same single thread.
                    val ticker = launch {
                        var last = System.nanoTime()
                        while (isActive) {
                            delay(5)
                            val now = System.nanoTime()
                            maxGapMs = maxOf(maxGapMs, (now - last) / 1_000_000)
                            last = now
                        }
                    }
                    // Fixes 6 s and ~110 m apart (none throttled, none a jump), all in the past.
                    val base = System.currentTimeMillis() - 7L * 24 * 3_600_000
                    // Ever larger single recordMany calls (one SQLite transaction each) until one
                    // takes 800 ms: had it run on this thread, the ticker would stall that long.
                    var n = 0
                    for (size in listOf(2_500, 5_000, 10_000, 20_000, 40_000)) {
                        val from = n
                        // Building the list is the test's own work: not on the "main" thread.
                        val fixes = withContext(Dispatchers.Default) {
                            (0 until size).map { i ->
                                val k = from + i
                                Fixes.location(base + k * 6_000L, 40.0 + k * 0.001, 13.405, 5f, 18f)
                            }
                        }
                        n += size
                        val t0 = System.nanoTime()
                        recorded += driver.recordMany(fixes).count { it is RecordOutcome.Recorded }
                        longestCallMs = maxOf(longestCallMs, (System.nanoTime() - t0) / 1_000_000)
                        if (longestCallMs >= 800) break
                    }
                    ticker.cancelAndJoin()
                }
                println("main stand-in: $recorded fixes recorded; longest recordMany $longestCallMs ms; longest gap between 5 ms ticks $maxGapMs ms")
                assertTrue(recorded > 0)
                assertTrue(longestCallMs >= 100, "a recordMany long enough to matter ($longestCallMs ms)")
                assertTrue(
                    maxGapMs < longestCallMs / 2,
                    "the main thread stalled for $maxGapMs ms while a recordMany took $longestCallMs ms",
                )
            } finally {
                driver.shutdown()
                driver.close()
            }
        } finally {
            main.close()
        }
    }

    private fun near(a: Double, b: Double) = kotlin.math.abs(a - b) < 1e-9

    private fun gcUntilCleared(ref: WeakReference<*>, timeoutMs: Long): Boolean {
        val deadline = System.nanoTime() + timeoutMs * 1_000_000
        while (System.nanoTime() < deadline) {
            System.gc()
            if (ref.get() == null) return true
            Thread.sleep(50)
        }
        return false
    }

    /**
     * Opens a client whose listener references it (with [flows], also reads its StateFlow and
     * collects and cancels a Flow on it) and returns only a weak reference.
     */
    private suspend fun openOwnedClient(flows: Boolean): WeakReference<BuyerClient> {
        val listener = OwningListener()
        val client = openBuyer(TestEnv.uniqueId("b"), listOf("tracking:d-leak"), listener)
        listener.client = client
        TestEnv.await("connected") { client.connectionState() is ConnectionState.Connected }
        if (flows) {
            withTimeout(10.seconds) { client.connectionState.first { it is ConnectionState.Connected } }
            coroutineScope {
                val job = launch(Dispatchers.Default) { client.driverLocations("d-leak").collect {} }
                TestEnv.await("subscribed") { client.subscriptionCount() == 2u }
                job.cancelAndJoin()
            }
        }
        return WeakReference(client)
    }

    // The client is opened (and its Flows used) in a runBlocking of its own that has returned
    // before close() and the GC checks: a coroutine resumed by the SDK runs the rest of its
    // caller's body in the same resumeWith loop, whose frames may still hold the resumed value
    // (the client), which no app keeps around but which would make this check meaningless.

    @Test
    fun `a client whose listener references it is freed after close`() {
        val closed = runBlocking { openOwnedClient(flows = false) }
        println("before close: ${handleMaps()}")
        close(closed)
        val freed = gcUntilCleared(closed, 10_000)
        println("after close: ${handleMaps()} freed=$freed")
        assertTrue(freed, "the client was not collected within 10 s of close()")
    }

    @Test
    fun `a client whose StateFlow and Flows were used is freed after close`() {
        val closed = runBlocking { openOwnedClient(flows = true) }
        close(closed)
        assertTrue(gcUntilCleared(closed, 10_000), "the client was not collected within 10 s of close()")
    }

    @Test
    fun `a forgotten close keeps a client whose listener references it alive (documented)`() {
        val forgotten = runBlocking { openOwnedClient(flows = false) }
        assertFalse(gcUntilCleared(forgotten, 1_000), "a forgotten client is kept alive")
        close(forgotten)
        assertTrue(gcUntilCleared(forgotten, 10_000), "and freed once closed")
        // shutdown() alone also breaks the cycle: the stopped client releases its listener,
        // and the Cleaner frees the client with its last reference (no close()).
        val shutDown = runBlocking { openOwnedClient(flows = false) }
        assertFalse(gcUntilCleared(shutDown, 1_000), "kept alive while running")
        runBlocking { shutDown.get()?.shutdown() }
        assertTrue(gcUntilCleared(shutDown, 10_000), "freed after shutdown() without close()")
    }

    @Test
    fun `a client released without shutdown is reported in the SDK's logs`() {
        val logs = TestEnv.logs
        val buyerId = TestEnv.uniqueId("b")
        // A listener that does not reference the client: the Cleaner frees it with its last reference.
        val forgotten = runBlocking {
            val client = openBuyer(buyerId, listOf("tracking:d-leak"))
            TestEnv.await("connected") { client.connectionState() is ConnectionState.Connected }
            WeakReference(client)
        }
        assertTrue(gcUntilCleared(forgotten, 10_000), "a client without a cycle is collected even without close()")
        TestEnv.await("the warning reaches the app's LogSink") {
            logs.any { it.level == LogLevel.WARN && it.message.contains("user $buyerId was released without shutdown()") }
        }
        // A client shut down and closed as documented is not reported.
        val tidyId = TestEnv.uniqueId("b")
        runBlocking {
            val client = openBuyer(tidyId, listOf("tracking:d-leak"))
            client.shutdown()
            client.close()
        }
        Thread.sleep(300)
        assertTrue(logs.none { it.message.contains(tidyId) }, "${logs.filter { it.message.contains(tidyId) }}")
    }

    /** Foreign objects the native side still holds, per callback interface (reflection on the generated handle maps). */
    private fun handleMaps(): Map<String, Int> =
        listOf("BuyerListener", "TokenProvider", "ConnectionStateListener", "LocationListener").associateWith { name ->
            runCatching {
                val cls = Class.forName("io.waypost.sdk.FfiConverterType$name")
                val instance = cls.getField("INSTANCE").get(null)
                val field = cls.getDeclaredField("handleMap").apply { isAccessible = true }
                val map = field.get(instance)
                map.javaClass.getMethod("getSize").invoke(map) as Int
            }.getOrElse { -1 }
        }

    /** Closes the client in a frame of its own (an interpreted frame keeps dead locals reachable). */
    private fun close(ref: WeakReference<BuyerClient>) {
        ref.get()?.close()
    }
}

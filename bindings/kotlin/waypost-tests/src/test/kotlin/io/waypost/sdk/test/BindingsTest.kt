package io.waypost.sdk.test

import io.waypost.sample.core.BuyerSession
import io.waypost.sample.core.CallbackTokenProvider
import io.waypost.sample.core.DriverSession
import io.waypost.sample.core.Fixes
import io.waypost.sdk.BuyerClient
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.BuyerListener
import io.waypost.sdk.types.ChatEntry
import io.waypost.sdk.types.CloseReason
import io.waypost.sdk.types.ConnectionState
import io.waypost.sdk.Driver
import io.waypost.sdk.DriverConfig
import io.waypost.sdk.types.DriverEvent
import io.waypost.sdk.DriverListener
import io.waypost.sdk.OrderListener
import io.waypost.sdk.PlatformState
import io.waypost.sdk.types.OrderEntry
import io.waypost.sdk.types.OrderEntryKind
import io.waypost.sdk.types.ErrorInfo
import io.waypost.sdk.types.LocationUpdate
import io.waypost.sdk.types.MessageStatus
import io.waypost.sdk.types.PresenceUpdate
import io.waypost.sdk.types.RecordOutcome
import io.waypost.sdk.staticToken
import io.waypost.sdk.types.TypingUpdate
import io.waypost.sdk.types.TrailUpdate
import io.waypost.sdk.types.DriverStatusUpdate
import io.waypost.sdk.types.ReceiptUpdate
import io.waypost.sdk.types.WaypostException
import io.waypost.sdk.nativeThreadName
import io.waypost.sdk.sdkVersion
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.util.concurrent.CopyOnWriteArrayList

/**
 * The Kotlin bindings on the JVM against the real native library and a
 * real server, driven through the Android sample's platform-free classes
 * where the sample has them.
 */
class BindingsTest {
    private fun driverConfig(driverId: String, buffer: String, baseUrl: String = TestEnv.url) = DriverConfig(
        baseUrl = baseUrl,
        driverId = driverId,
        deviceId = "jvm-1",
        bufferPath = buffer,
    )

    /** Fixes 6 s and ~110 m apart, ending a few seconds ago: none is throttled or a jump. */
    private fun route(n: Int, lat0: Double = 52.52) = (0 until n).map { i ->
        Fixes.location(
            timeMs = System.currentTimeMillis() - 5_000 - (n - 1 - i) * 6_000L,
            lat = lat0 + i * 0.001,
            lon = 13.405,
            accuracyM = 8f,
            speedMps = 18f,
        )
    }

    @Test
    fun `a driver records fixes and they arrive on the server`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val token = TestEnv.token(driverId, "driver")
        val session = DriverSession.open(
            driverConfig(driverId, TestEnv.tempDir().resolve("buffer.db").toString()),
            CallbackTokenProvider { token },
            PlatformState(),
        )
        try {
            val outcomes = session.record(route(5))
            val seqs = outcomes.map { (it as? RecordOutcome.Recorded)?.seq?.toLong() ?: error("not recorded: $it") }
            assertEquals(5, seqs.size)
            assertEquals(seqs.sorted(), seqs, "seqs increase")

            val result = runBlocking { session.driver.uploadNow() }
            assertEquals(0uL, result.pending, "everything uploaded: $result")

            val trail = TestEnv.trail(driverId)
            assertEquals(seqs, trail.map { it.first }, "the server's trail holds exactly the recorded seqs")
            assertEquals(52.524, trail.last().second, 1e-9)
            val stats = session.stats()
            assertEquals(5uL, stats.ackedTotal)
            // The session's events Flow subscribes after open, possibly after the
            // upload finished: the SDK replays what was raised before the first
            // watcher, so the Uploaded event is never missed.
            TestEnv.await("the Uploaded event") { session.recentEvents().any { it.startsWith("uploaded") } }
            assertTrue(session.statusText().contains("uploaded 5"), session.statusText())
        } finally {
            runBlocking { session.stop() }
            session.close()
        }
    }

    /** Records every callback with the thread it arrived on. */
    private class RecordingListener : BuyerListener {
        val threads = CopyOnWriteArrayList<Pair<Thread, String?>>()
        val messages = CopyOnWriteArrayList<ChatEntry>()
        val states = CopyOnWriteArrayList<ConnectionState>()
        val receipts = CopyOnWriteArrayList<ReceiptUpdate>()

        private fun seen() {
            threads += Thread.currentThread() to nativeThreadName()
        }

        override fun onConnectionState(state: ConnectionState) { seen(); states += state }
        override fun onLocation(update: LocationUpdate) { seen() }
        override fun onMessage(message: ChatEntry) { seen(); messages += message }
        override fun onOutgoing(message: ChatEntry) { seen() }
        override fun onPresence(update: PresenceUpdate) { seen() }
        override fun onTyping(update: TypingUpdate) { seen() }
        override fun onError(reference: String, code: String, message: String) { seen() }
        override fun onTrail(trail: TrailUpdate) { seen() }
        override fun onDriverStatus(status: DriverStatusUpdate) { seen() }
        override fun onReceipt(update: ReceiptUpdate) { seen(); receipts += update }
    }

    @Test
    fun `a buyer receives the courier's location and chat messages, on SDK threads`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val room = TestEnv.uniqueId("order")
        val buyerId = TestEnv.uniqueId("b")
        val vendorId = TestEnv.uniqueId("v")
        val buyerToken = TestEnv.token(buyerId, "buyer", listOf("tracking:$driverId", "chat:$room"))
        val vendorToken = TestEnv.token(vendorId, "buyer", listOf("chat:$room"))
        val driverToken = TestEnv.token(driverId, "driver")
        val testThread = Thread.currentThread()

        val platform = PlatformState()
        val buyer = BuyerSession.open(
            BuyerConfig(baseUrl = TestEnv.url, userId = buyerId),
            CallbackTokenProvider { buyerToken },
            platform,
            driverId,
            room,
        )
        val vendorListener = RecordingListener()
        val vendor = BuyerClient.open(
            BuyerConfig(baseUrl = TestEnv.url, userId = vendorId),
            vendorListener,
            staticToken(vendorToken),
            null,
        )
        val vendorChat = vendor.joinChat(room)
        val driver = Driver.open(
            driverConfig(driverId, TestEnv.tempDir().resolve("b.db").toString()),
            staticToken(driverToken),
            null,
            platform,
        )
        try {
            TestEnv.await("buyer connected") { buyer.state().connection == "live" }
            TestEnv.await("vendor connected") { vendor.connectionState() is ConnectionState.Connected }

            // Location: driver → server → buyer.
            val outcome = driver.record(route(1, lat0 = 48.137)[0])
            assertTrue(outcome is RecordOutcome.Recorded, "$outcome")
            runBlocking { driver.uploadNow() }
            TestEnv.await("the buyer sees the courier") { buyer.state().latest != null }
            val seen = buyer.state().latest!!
            assertEquals(driverId, seen.driverId)
            assertEquals(48.137, seen.lat, 1e-9)
            assertTrue(buyer.state().tracking.startsWith("Courier at 48.13700, 13.40500"), buyer.state().tracking)
            assertEquals(seen, buyer.client.latestLocation(driverId))

            // Chat: vendor → buyer, and buyer → vendor.
            val pending = vendor.sendMessage(room, "Your order is on its way")
            assertEquals(MessageStatus.PENDING, pending.status)
            TestEnv.await("the buyer receives the vendor's message") {
                buyer.state().messages.any { it.body == "Your order is on its way" && it.status == MessageStatus.RECEIVED }
            }
            val received = buyer.state().messages.first { it.body == "Your order is on its way" }
            assertEquals(vendorId, received.sender)
            assertNotNull(received.seq)

            buyer.send("Thanks!")
            TestEnv.await("the vendor receives the buyer's reply") { vendorListener.messages.any { it.body == "Thanks!" } }
            TestEnv.await("the buyer's own message is acknowledged") {
                buyer.state().messages.any { it.body == "Thanks!" && it.status == MessageStatus.SENT && it.seq != null }
            }

            // The platform reports the network gone, then back (what the broadcast receivers do);
            // the buyer follows the PlatformState by itself.
            platform.setNetwork(io.waypost.sdk.types.NetworkType.OFFLINE)
            TestEnv.await("the buyer goes offline") { buyer.state().connection == "offline: waiting for the network" }
            buyer.send("written offline")
            assertEquals(MessageStatus.PENDING, buyer.state().messages.last().status)
            platform.setNetwork(io.waypost.sdk.types.NetworkType.WIFI)
            TestEnv.await("back live") { buyer.state().connection == "live" }
            TestEnv.await("the offline message is delivered") { vendorListener.messages.any { it.body == "written offline" } }

            val timeline = vendor.messages(room, 10u).map { it.body }
            assertEquals(listOf("Your order is on its way", "Thanks!", "written offline"), timeline)

            // Threads: every callback ran on the SDK's runtime, never on the caller's thread.
            assertTrue(vendorListener.threads.isNotEmpty())
            for ((thread, nativeName) in vendorListener.threads) {
                assertNotEquals(testThread, thread)
                assertEquals("waypost-rt", nativeName, "callback on native thread $nativeName (JVM ${thread.name})")
            }
            assertEquals(null, nativeThreadName(), "the test thread has no native name")
        } finally {
            runBlocking {
                driver.shutdown()
                buyer.stop()
                vendor.shutdown()
            }
            vendorChat.close()
            vendor.close()
            driver.close()
            buyer.close()
        }
    }

    @Test
    fun `receipts, unread counts, edits and deletes`(): Unit = runBlocking {
        val room = TestEnv.uniqueId("order")
        val buyerId = TestEnv.uniqueId("b")
        val vendorId = TestEnv.uniqueId("v")
        suspend fun open(user: String) = BuyerClient.open(
            BuyerConfig(baseUrl = TestEnv.url, userId = user, dbPath = TestEnv.tempDir().resolve("$user.db").toString()),
            RecordingListener(),
            staticToken(TestEnv.token(user, "buyer", listOf("chat:$room"))),
            null,
        )
        val buyer = open(buyerId)
        val vendor = open(vendorId)
        val chats = listOf(buyer.joinChat(room), vendor.joinChat(room))
        try {
            TestEnv.await("both connected") {
                buyer.connectionState() is ConnectionState.Connected && vendor.connectionState() is ConnectionState.Connected
            }
            vendor.sendMessage(room, "Your order is ready")
            vendor.sendMessage(room, "Rider on the way")
            TestEnv.await("the buyer stores both") { runBlocking { buyer.messages(room, 10u) }.size == 2 }
            assertEquals(2uL, buyer.unreadCount(room))
            val first = buyer.messages(room, 10u)[0]
            buyer.markRead(room, first.seq!!)
            assertEquals(1uL, buyer.unreadCount(room))
            TestEnv.await("the vendor sees the read receipt") {
                runBlocking { vendor.receipts(room) }.any { it.user == buyerId && it.read == first.seq && it.delivered >= first.seq!! }
            }

            val mine = vendor.messages(room, 10u).first { it.body == "Rider on the way" }
            vendor.editMessage(room, mine.seq!!, "Rider arriving in 2 min")
            TestEnv.await("the buyer sees the edit") {
                runBlocking { buyer.messages(room, 10u) }.any { it.seq == mine.seq && it.edited && it.body == "Rider arriving in 2 min" }
            }
            vendor.deleteMessage(room, first.seq!!)
            TestEnv.await("the buyer sees the delete") {
                runBlocking { buyer.messages(room, 10u) }.any { it.seq == first.seq && it.deleted && it.body.isEmpty() }
            }
            assertEquals(listOf(first.seq, mine.seq), buyer.messages(room, 10u).map { it.seq })
        } finally {
            runBlocking {
                buyer.shutdown()
                vendor.shutdown()
            }
            chats.forEach { it.close() }
            buyer.close()
            vendor.close()
        }
    }

    @Test
    fun `errors surface as typed exceptions`(): Unit = runBlocking {
        val dir = TestEnv.tempDir()
        val e = assertThrows<WaypostException.InvalidArgument> {
            runBlocking { Driver.open(driverConfig("d-1", dir.resolve("x.db").toString(), baseUrl = "ftp://nope"), staticToken("t"), null, PlatformState()) }
        }
        assertTrue(e.details.contains("base_url"), e.details)
        assertEquals(ErrorInfo(code = "invalid_argument", httpStatus = null, retryable = false, retryAfterMs = null), e.info())
        assertThrows<WaypostException.InvalidArgument> {
            runBlocking { Driver.open(driverConfig("not a valid id", dir.resolve("y.db").toString()), staticToken("t"), null, PlatformState()) }
        }

        // A corrupt or foreign buffer file is a storage error, not a crash.
        val foreign = dir.resolve("foreign.db")
        java.nio.file.Files.writeString(foreign, "this is not a database ".repeat(100))
        val storage = assertThrows<WaypostException.Storage> {
            runBlocking { Driver.open(driverConfig("d-1", foreign.toString()), staticToken("t"), null, PlatformState()) }
        }
        assertTrue(storage.code.startsWith("storage_"), storage.code)
        assertEquals(storage.code, storage.info().code)
        assertFalse(storage.info().retryable)

        // The app recovers: the damaged file is moved aside, an empty buffer
        // replaces it and the listener hears BufferRecreated.
        val events = java.util.concurrent.CopyOnWriteArrayList<DriverEvent>()
        val recovered = Driver.open(
            driverConfig("d-1", foreign.toString()).copy(recreateIfCorrupt = true),
            staticToken("t"),
            object : DriverListener {
                override fun onEvent(event: DriverEvent) { events += event }
            },
            PlatformState(),
        )
        assertTrue(events.any { it is DriverEvent.BufferRecreated }, events.toString())
        assertEquals(0uL, recovered.stats().pending)
        runBlocking { recovered.shutdown() }
        recovered.close()

        // Shutdown is idempotent; starting afterwards is refused.
        val driver = Driver.open(driverConfig("d-1", dir.resolve("z.db").toString()), staticToken("t"), null, PlatformState())
        runBlocking {
            driver.shutdown()
            driver.shutdown()
        }
        assertThrows<WaypostException.ShutDown> { driver.start() }
        driver.close()

        val buyer = BuyerClient.open(BuyerConfig(baseUrl = TestEnv.url, userId = "b-1"), RecordingListener(), staticToken("t"), null)
        assertThrows<WaypostException.InvalidArgument> { buyer.trackDriver("spaces are not allowed") }
        runBlocking { buyer.shutdown() }
        assertThrows<WaypostException.ShutDown> { runBlocking { buyer.sendMessage("room-1", "hi") } }
        buyer.close()
        assertTrue(sdkVersion().isNotEmpty())
    }

    @Test
    fun `a buyer sees the courier's path through a dead zone`(): Unit = runBlocking {
        // The phone buffered 10 fixes spanning 54 s and uploads them at once:
        // the sample's buyer session gets the 9 it missed as the dead-zone
        // path, in order, then the newest as the courier's position.
        val driverId = TestEnv.uniqueId("d")
        val buyerId = TestEnv.uniqueId("b")
        val buyerToken = TestEnv.token(buyerId, "buyer", listOf("tracking:$driverId"))
        val platform = PlatformState()
        val buyer = BuyerSession.open(
            BuyerConfig(baseUrl = TestEnv.url, userId = buyerId),
            CallbackTokenProvider { buyerToken },
            platform,
            driverId,
            TestEnv.uniqueId("order"),
        )
        val driver = Driver.open(
            driverConfig(driverId, TestEnv.tempDir().resolve("dz.db").toString()),
            staticToken(TestEnv.token(driverId, "driver")),
            null,
            platform,
        )
        try {
            TestEnv.await("buyer connected") { buyer.state().connection == "live" }
            Thread.sleep(500) // the subscription is in place
            val fixes = route(10, lat0 = 45.07)
            for (f in fixes) assertTrue(driver.record(f) is RecordOutcome.Recorded)
            runBlocking { driver.uploadNow() }
            TestEnv.await("the newest position") { buyer.state().latest != null }
            val state = buyer.state()
            assertEquals(fixes.dropLast(1).map { it.tsMs }, state.deadZonePath.map { it.tsMs })
            assertEquals(fixes.last().tsMs, state.latest!!.tsMs)
            assertEquals(null, state.courierStatus, "a first appearance is no comeback")
        } finally {
            runBlocking {
                driver.shutdown()
                buyer.stop()
            }
            driver.close()
            buyer.close()
        }
    }

    @Test
    fun `track_order delivers every order entry once and in order`(): Unit = runBlocking {
        val orderId = TestEnv.uniqueId("o")
        val buyerId = TestEnv.uniqueId("b")
        val statuses = listOf("placed", "accepted", "picked_up", "delivered")
        assertEquals(202, TestEnv.post("/v1/orders/$orderId/events", """{"event_id":"e0","status":"placed"}""").first)
        val entries = CopyOnWriteArrayList<OrderEntry>()
        val buyer = BuyerClient.open(
            BuyerConfig(baseUrl = TestEnv.url, userId = buyerId),
            RecordingListener(),
            staticToken(TestEnv.token(buyerId, "buyer", listOf("order:$orderId"))),
            null,
        )
        try {
            val sub = buyer.trackOrder(orderId, object : OrderListener {
                override fun onEntry(entry: OrderEntry) { entries += entry }
                override fun onLocation(update: LocationUpdate) {}
                override fun onTrail(trail: TrailUpdate) {}
                override fun onDriverStatus(status: DriverStatusUpdate) {}
            })
            TestEnv.await("placed (replayed)") { entries.isNotEmpty() }
            val driverId = TestEnv.uniqueId("d")
            for ((i, st) in statuses.withIndex().drop(1)) {
                val driver = if (st == "accepted") ""","driver_id":"$driverId"""" else ""
                val (status, body) = TestEnv.post("/v1/orders/$orderId/events", """{"event_id":"e$i","status":"$st"$driver}""")
                assertEquals(202, status, body)
            }
            TestEnv.await("delivered") { entries.any { it.status == "delivered" } }
            assertEquals(listOf(1uL, 2uL, 3uL, 4uL), entries.map { it.seq })
            assertEquals(statuses, entries.map { it.status })
            assertTrue(entries.all { it.kind == OrderEntryKind.STATUS && it.orderId == orderId })
            assertEquals(false, entries.last().active)
            sub.cancel()
            assertTrue(sub.isCancelled())
        } finally {
            runBlocking { buyer.shutdown() }
            buyer.close()
        }
    }

    @Test
    fun `a refused token closes the connection with a reason`(): Unit = runBlocking {
        val listener = RecordingListener()
        val buyer = BuyerClient.open(
            BuyerConfig(baseUrl = TestEnv.url, userId = "b-bad"),
            listener,
            staticToken("not-a-jwt"),
            null,
        )
        try {
            TestEnv.await("Closed(Unauthorized)") {
                val s = buyer.connectionState()
                s is ConnectionState.Closed && s.reason is CloseReason.Unauthorized
            }
            // The snapshot changes before the listener hears it.
            TestEnv.await("the listener hears Closed") { listener.states.any { it is ConnectionState.Closed } }
        } finally {
            runBlocking { buyer.shutdown() }
            buyer.close()
        }
    }

    @Test
    fun `calls from many threads at once are safe`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val token = TestEnv.token(driverId, "driver")
        val driver = Driver.open(
            driverConfig(driverId, TestEnv.tempDir().resolve("mt.db").toString()),
            staticToken(token),
            null,
            PlatformState(),
        )
        try {
            driver.start()
            val threads = 8
            val perThread = 25
            val base = System.currentTimeMillis() - 600_000
            val seqs = java.util.concurrent.ConcurrentLinkedQueue<Long>()
            val workers = (0 until threads).map { t ->
                Thread {
                    repeat(perThread) { i ->
                        // Distinct timestamps; same position, so the policy may throttle some.
                        val loc = Fixes.location(base + (i * threads + t) * 1_000L, 52.52, 13.405, 5f)
                        (runBlocking { driver.record(loc) } as? RecordOutcome.Recorded)?.let { seqs += it.seq.toLong() }
                        driver.flush()
                        runBlocking { driver.stats() }
                    }
                }.also { it.start() }
            }
            workers.forEach { it.join(30_000) }
            assertTrue(seqs.isNotEmpty())
            assertEquals(seqs.size, seqs.toSet().size, "every recorded fix got its own seq")
            runBlocking { driver.uploadNow() }
            TestEnv.await("everything uploaded") { runBlocking { driver.stats() }.pending == 0uL }
            assertEquals(seqs.sorted(), TestEnv.trail(driverId).map { it.first })
        } finally {
            runBlocking { driver.shutdown() }
            driver.close()
        }
    }

    @Test
    fun `driver events from the uploader arrive on an SDK thread`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val token = TestEnv.token(driverId, "driver")
        val events = CopyOnWriteArrayList<Pair<DriverEvent, String?>>()
        val driver = Driver.open(
            driverConfig(driverId, TestEnv.tempDir().resolve("e.db").toString()),
            staticToken(token),
            object : DriverListener {
                override fun onEvent(event: DriverEvent) {
                    events += event to nativeThreadName()
                }
            },
            PlatformState(),
        )
        try {
            driver.start()
            driver.recordMany(route(3))
            driver.flush()
            TestEnv.await("an Uploaded event from the background uploader") { events.any { it.first is DriverEvent.Uploaded } }
            val (uploaded, thread) = events.first { it.first is DriverEvent.Uploaded }
            assertEquals("waypost-rt", thread)
            assertEquals(3uL, (uploaded as DriverEvent.Uploaded).fixes)
        } finally {
            runBlocking { driver.shutdown() }
            driver.close()
        }
    }
}

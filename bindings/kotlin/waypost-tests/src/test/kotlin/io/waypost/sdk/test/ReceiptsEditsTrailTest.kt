package io.waypost.sdk.test

import io.waypost.sample.core.Fixes
import io.waypost.sdk.BuyerClient
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.Driver
import io.waypost.sdk.DriverConfig
import io.waypost.sdk.PlatformState
import io.waypost.sdk.ktx.BuyerListenerAdapter
import io.waypost.sdk.ktx.DriverUpdate
import io.waypost.sdk.ktx.chatMessages
import io.waypost.sdk.ktx.chatReceipts
import io.waypost.sdk.ktx.driverUpdates
import io.waypost.sdk.staticToken
import io.waypost.sdk.types.ChatEntry
import io.waypost.sdk.types.ConnectionState
import io.waypost.sdk.types.NetworkType
import io.waypost.sdk.types.ReceiptUpdate
import io.waypost.sdk.types.RecordOutcome
import java.util.concurrent.CopyOnWriteArrayList
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

/**
 * Issue 22's chat and dead-zone features through the Kotlin bindings and
 * the -ktx Flows, against the real library and a real server: receipts
 * (`chatReceipts`, `BuyerListener.onReceipt`, across two devices of one
 * user), edits and deletes as they reach a room's Flow, and a courier's
 * dead zone (`driverUpdates`: offline and online `driver_status`, then the
 * missed segment as a trail before the newest position).
 */
class ReceiptsEditsTrailTest {
    /** Keeps the receipts and refusals the client-wide listener hears. */
    private class Heard : BuyerListenerAdapter() {
        val receipts = CopyOnWriteArrayList<ReceiptUpdate>()
        val errors = CopyOnWriteArrayList<Triple<String, String, String>>()
        override fun onReceipt(update: ReceiptUpdate) { receipts += update }
        override fun onError(reference: String, code: String, message: String) { errors += Triple(reference, code, message) }
    }

    private fun subscribers(channel: String, base: String = TestEnv.url): Long {
        val (status, body) = TestEnv.get("/v1/admin/channels/$channel", base)
        check(status == 200) { "admin: HTTP $status $body" }
        return Regex("\"subscribers\":(\\d+)").find(body)!!.groupValues[1].toLong()
    }

    @Test
    fun `receipts reach the Flow and the listener on every device, edits and deletes reach the room's Flow in order`(): Unit = runBlocking {
        val room = TestEnv.uniqueId("order")
        val buyerId = TestEnv.uniqueId("b")
        val vendorId = TestEnv.uniqueId("v")
        suspend fun open(user: String, listener: Heard) = BuyerClient.open(
            BuyerConfig(baseUrl = TestEnv.url, userId = user, dbPath = TestEnv.tempDir().resolve("$user.db").toString()),
            listener,
            staticToken(TestEnv.token(user, "buyer", listOf("chat:$room"))),
            null,
        )
        val buyerHeard = Heard()
        val vendorHeard = Heard()
        val buyer = open(buyerId, buyerHeard)
        // The same buyer on a second device (its own store).
        val buyerTablet = open(buyerId, Heard())
        val vendor = open(vendorId, vendorHeard)
        val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
        try {
            val timeline = CopyOnWriteArrayList<ChatEntry>()
            val vendorReceipts = CopyOnWriteArrayList<ReceiptUpdate>()
            val tabletReceipts = CopyOnWriteArrayList<ReceiptUpdate>()
            scope.launch { buyer.chatMessages(room).collect { timeline += it } }
            scope.launch { vendor.chatReceipts(room).collect { vendorReceipts += it } }
            scope.launch { buyerTablet.chatReceipts(room).collect { tabletReceipts += it } }
            TestEnv.await("all three in the room") {
                subscribers("chat:$room") == 3L &&
                    listOf(buyer, buyerTablet, vendor).all { it.connectionState() is ConnectionState.Connected }
            }

            vendor.sendMessage(room, "Your order is ready")
            vendor.sendMessage(room, "Rider on the way")
            TestEnv.await("the buyer's Flow has both") { timeline.size >= 2 }
            val (ready, onTheWay) = timeline.take(2)
            assertEquals(listOf("Your order is ready", "Rider on the way"), listOf(ready.body, onTheWay.body))
            assertTrue(onTheWay.seq!! > ready.seq!!)

            // Delivered is sent by the SDK as the messages are stored; read when the app says so.
            TestEnv.await("the vendor's Flow hears the buyer's delivered receipt") {
                vendorReceipts.any { it.user == buyerId && !it.read && it.seq == onTheWay.seq && it.room == room }
            }
            buyer.markRead(room, ready.seq!!)
            val read = ReceiptUpdate(room = room, user = buyerId, read = true, seq = ready.seq!!)
            TestEnv.await("the vendor's Flow hears the read receipt") { read in vendorReceipts }
            TestEnv.await("the vendor's onReceipt hears it") { read in vendorHeard.receipts }
            TestEnv.await("the buyer's other device hears it") { read in tabletReceipts }
            TestEnv.await("the vendor's store has the markers") {
                runBlocking { vendor.receipts(room) }.any { it.user == buyerId && it.read == ready.seq && it.delivered >= onTheWay.seq!! }
            }
            assertTrue(vendorReceipts.all { it.room == room }, "$vendorReceipts")

            // The vendor edits its second message, then deletes its first: each change comes
            // through the room's Flow once, after the originals, in the order made.
            vendor.editMessage(room, onTheWay.seq!!, "Rider arriving in 2 min")
            TestEnv.await("the edit reaches the Flow") { timeline.any { it.seq == onTheWay.seq && it.edited } }
            vendor.deleteMessage(room, ready.seq!!)
            TestEnv.await("the delete reaches the Flow") { timeline.any { it.seq == ready.seq && it.deleted } }
            Thread.sleep(200) // nothing else (no duplicate) may follow
            assertEquals(
                listOf(
                    Triple(ready.seq, "Your order is ready", "plain"),
                    Triple(onTheWay.seq, "Rider on the way", "plain"),
                    Triple(onTheWay.seq, "Rider arriving in 2 min", "edited"),
                    Triple(ready.seq, "", "deleted"),
                ),
                timeline.map { Triple(it.seq, it.body, if (it.deleted) "deleted" else if (it.edited) "edited" else "plain") },
            )
            assertEquals(
                listOf(ready.seq to true, onTheWay.seq to false),
                buyer.messages(room, 10u).map { it.seq to it.deleted },
                "the store shows the result, still in seq order",
            )

            // Someone else's message cannot be edited: the server refuses, the room is the reference.
            buyer.editMessage(room, onTheWay.seq!!, "not mine")
            TestEnv.await("the refusal reaches the buyer") { buyerHeard.errors.any { it.first == room && it.second == "forbidden" } }
            assertEquals("Rider arriving in 2 min", buyer.messages(room, 10u).single { it.seq == onTheWay.seq }.body)
        } finally {
            scope.cancel()
            for (c in listOf(buyer, buyerTablet, vendor)) c.shutdown()
            for (c in listOf(buyer, buyerTablet, vendor)) c.close()
        }
    }

    @Test
    fun `driverUpdates yields the offline and online status and the dead-zone trail before the newest position`(): Unit = runBlocking {
        // A server of our own with a 2 s online TTL: "offline" comes within ~2.5 s.
        TestEnv.startServer("--online-ttl", "2s").use { server ->
            val d = TestEnv.uniqueId("d")
            val b = TestEnv.uniqueId("b")
            val buyer = BuyerClient.open(
                BuyerConfig(baseUrl = server.url, userId = b),
                BuyerListenerAdapter(),
                staticToken(TestEnv.token(b, "buyer", listOf("tracking:$d"))),
                null,
            )
            val platform = PlatformState()
            val driver = Driver.open(
                DriverConfig(
                    baseUrl = server.url,
                    driverId = d,
                    deviceId = "jvm-dz",
                    bufferPath = TestEnv.tempDir().resolve("buffer.db").toString(),
                ),
                staticToken(TestEnv.token(d, "driver")),
                null,
                platform,
            )
            val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
            try {
                val got = CopyOnWriteArrayList<DriverUpdate>()
                scope.launch { buyer.driverUpdates(d).collect { got += it } }
                TestEnv.await("subscribed") { subscribers("tracking:$d", server.url) == 1L }

                // Fixes 6 s and ~110 m apart, two minutes ago.
                val base = System.currentTimeMillis() - 120_000
                fun fix(i: Int) = Fixes.location(base + i * 6_000L, 48.85 + i * 0.001, 2.35, 8f, 18f)
                assertTrue(driver.record(fix(0)) is RecordOutcome.Recorded)
                assertEquals(0uL, driver.uploadNow().pending)
                TestEnv.await("the first position") { got.any { it is DriverUpdate.Location } }

                // A garage: no network; the phone keeps recording 30 s of path.
                assertTrue(platform.setNetwork(NetworkType.OFFLINE))
                val dark = (1..6).map(::fix)
                assertTrue(driver.recordMany(dark).all { it is RecordOutcome.Recorded })
                assertEquals(6uL, driver.uploadNow().pending, "nothing leaves while offline")
                TestEnv.await("watchers are told the courier went dark") {
                    got.any { it is DriverUpdate.Status && !it.status.online }
                }

                // Out of the garage: the backlog goes up in one upload.
                assertTrue(platform.setNetwork(NetworkType.WIFI))
                assertEquals(0uL, driver.uploadNow().pending)
                TestEnv.await("the newest position") {
                    got.any { it is DriverUpdate.Location && it.update.tsMs == dark.last().tsMs }
                }
                Thread.sleep(200) // nothing else may follow
                val kinds = got.map {
                    when (it) {
                        is DriverUpdate.Location -> "location"
                        is DriverUpdate.Trail -> "trail"
                        is DriverUpdate.Status -> if (it.status.online) "online" else "offline"
                    }
                }
                assertEquals(listOf("location", "offline", "online", "trail", "location"), kinds)
                val (offline, online) = got.filterIsInstance<DriverUpdate.Status>().map { it.status }
                assertEquals(d, offline.driverId)
                assertTrue(offline.lastSeenMs > 0)
                assertEquals(offline.lastSeenMs, online.lastSeenMs, "$offline / $online")
                assertTrue((online.darkMs ?: 0uL) >= 1_000uL, "dark for more than the TTL: $online")
                val trail = got.filterIsInstance<DriverUpdate.Trail>().single().trail
                assertEquals(d, trail.driverId)
                assertEquals(null, trail.orderId)
                assertEquals(
                    dark.dropLast(1).map { it.tsMs },
                    trail.fixes.map { it.tsMs },
                    "the missed segment, oldest first, before the newest position",
                )
            } finally {
                scope.cancel()
                driver.shutdown(); buyer.shutdown()
                driver.close(); buyer.close()
            }
        }
    }
}

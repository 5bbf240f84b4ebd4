package io.waypost.sdk.test

import io.waypost.sample.core.PushGlue
import io.waypost.sdk.BuyerClient
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.ktx.BuyerListenerAdapter
import io.waypost.sdk.staticToken
import io.waypost.sdk.types.ChatEntry
import io.waypost.sdk.types.MessageStatus
import io.waypost.sdk.types.PushPlatform
import io.waypost.sdk.types.WaypostException
import java.util.concurrent.CopyOnWriteArrayList
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows

/**
 * Push (issue 19) through the Kotlin bindings and the Android sample's
 * [PushGlue] (what its FirebaseMessagingService calls), against the real
 * server. The server runs without a provider: the tests build the
 * `RemoteMessage.data` map a push would carry.
 */
class PushTest {
    private class Recorder : BuyerListenerAdapter() {
        val messages = CopyOnWriteArrayList<ChatEntry>()
        val outgoing = CopyOnWriteArrayList<ChatEntry>()
        override fun onMessage(message: ChatEntry) {
            messages += message
        }
        override fun onOutgoing(message: ChatEntry) {
            outgoing += message
        }
    }

    private suspend fun open(user: String, channels: List<String>, listener: Recorder = Recorder(), role: String = "buyer") =
        BuyerClient.open(
            BuyerConfig(baseUrl = TestEnv.url, userId = user, dbPath = TestEnv.tempDir().resolve("$user.db").toString()),
            listener,
            staticToken(TestEnv.token(user, role, channels)),
            null,
        )

    /** The push devices `GET /v1/admin/users/{user}` lists: (device id, platform, channels). */
    private fun devices(user: String): List<Triple<String, String, String>> {
        val (status, body) = TestEnv.get("/v1/admin/users/$user")
        assertEquals(200, status, body)
        val list = body.substringAfter("\"devices\":[", "").substringBeforeLast("]")
        val device = Regex("\\{\"device_id\":\"([^\"]+)\",\"platform\":\"([a-z]+)\",\"registered_ms\":\\d+,\"channels\":\\[([^]]*)]")
        return device.findAll(list).map { Triple(it.groupValues[1], it.groupValues[2], it.groupValues[3]) }.toList()
    }

    @Test
    fun `registration and unregistration are visible on the server`(): Unit = runBlocking {
        val room = TestEnv.uniqueId("order")
        val buyerId = TestEnv.uniqueId("b")
        val buyer = open(buyerId, listOf("chat:$room"))
        try {
            assertTrue(devices(buyerId).isEmpty())
            // What onNewToken does.
            assertEquals(listOf("chat:$room"), PushGlue.register(buyer, "fcm-kt:APA91b_first"))
            val first = devices(buyerId)
            assertEquals(1, first.size, "$first")
            assertEquals("fcm", first[0].second)
            assertEquals("\"chat:$room\"", first[0].third)
            // A new token replaces this installation's device, it does not add one.
            PushGlue.register(buyer, "fcm-kt:APA91b_second")
            val second = devices(buyerId)
            assertEquals(listOf(first[0].first), second.map { it.first })
            // An APNs token must be hex: refused by the server, reported as an exception.
            assertThrows<WaypostException> { runBlocking { buyer.registerPushToken(PushPlatform.APNS, "not hex") } }
            // Logout.
            PushGlue.unregister(buyer)
            assertTrue(devices(buyerId).isEmpty(), "still registered after unregister")
            PushGlue.unregister(buyer) // idempotent
        } finally {
            buyer.shutdown()
            buyer.close()
        }
    }

    @Test
    fun `handlePush of a chat push syncs exactly the missed messages`(): Unit = runBlocking {
        val room = TestEnv.uniqueId("order")
        val buyerId = TestEnv.uniqueId("b")
        val vendorId = TestEnv.uniqueId("v")
        val buyerRec = Recorder()
        val buyer = open(buyerId, listOf("chat:$room"), buyerRec)
        val vendorRec = Recorder()
        val vendor = open(vendorId, listOf("chat:$room"), vendorRec)
        val buyerChat = buyer.joinChat(room)
        val vendorChat = vendor.joinChat(room)
        try {
            PushGlue.register(buyer, "fcm-kt:APA91b_chat")
            vendor.sendMessage(room, "m0")
            TestEnv.await("the buyer receives m0 live") { buyerRec.messages.any { it.body == "m0" } }
            // The app goes to the background: its socket closes.
            buyer.shutdown()
            for (i in 1..3) vendor.sendMessage(room, "m$i")
            TestEnv.await("three more acknowledged") {
                runBlocking { vendor.messages(room, 10u) }.count { it.seq != null && it.status == MessageStatus.SENT } >= 4
            }
            // RemoteMessage.data as FCM delivers it (every value a string).
            val data = mapOf("kind" to "message", "channel" to "chat:$room", "seq" to "4", "count" to "3")
            val synced = PushGlue.sync(buyer, data) ?: error("sync did not finish")
            assertEquals(listOf(2uL, 3uL, 4uL), synced.messages.map { it.seq })
            assertEquals(listOf("m1", "m2", "m3"), synced.messages.map { it.body })
            assertTrue(synced.complete)
            assertEquals("message", synced.kind)
            assertEquals(3u, synced.count)
            // Stored like live messages; the same push again finds nothing missing.
            assertEquals(listOf("m0", "m1", "m2", "m3"), buyer.messages(room, 10u).map { it.body })
            assertTrue(PushGlue.sync(buyer, data)!!.messages.isEmpty())
            assertEquals("nothing new in chat:$room", PushGlue.describe(PushGlue.sync(buyer, data)!!))
            // Not a Waypost push: left alone.
            assertNull(PushGlue.sync(buyer, mapOf("campaign" to "spring")))
            assertThrows<WaypostException> { runBlocking { buyer.handlePush("not json") } }
        } finally {
            vendor.shutdown()
            buyerChat.close()
            vendorChat.close()
            vendor.close()
            buyer.close()
        }
    }

    @Test
    fun `handlePush of a vendor notification push reads the notifications`(): Unit = runBlocking {
        val vendorId = TestEnv.uniqueId("v")
        val vendor = open(vendorId, emptyList(), role = "vendor")
        try {
            assertEquals(listOf("vendor:$vendorId"), PushGlue.register(vendor, "fcm-kt:APA91b_vendor"))
            for (i in 1..3) {
                val (status, body) = TestEnv.post("/v1/vendors/$vendorId/notifications", """{"event":"new-order","data":{"n":$i}}""")
                assertEquals(202, status, body)
            }
            val data = mapOf("kind" to "notification", "channel" to "vendor:$vendorId", "seq" to "2", "count" to "2")
            val synced = PushGlue.sync(vendor, data) ?: error("sync did not finish")
            // Exactly up to the pushed seq; the third comes with the next push.
            assertEquals(listOf(1uL, 2uL), synced.notifications.map { it.seq })
            assertEquals("""{"n":2}""", synced.notifications[1].dataJson)
            val next = PushGlue.sync(vendor, data + ("seq" to "3"))!!
            assertEquals(listOf(3uL), next.notifications.map { it.seq })
            assertEquals("1 notification(s): new-order", PushGlue.describe(next))
        } finally {
            vendor.shutdown()
            vendor.close()
        }
    }

    @Test
    fun `push data maps become handlePush payloads`() {
        val data = mapOf("kind" to "message", "channel" to "chat:o-1", "seq" to "7", "count" to "2", "preview" to "say \"hi\"\n", "other" to "x")
        assertTrue(PushGlue.isWaypostPush(data))
        assertFalse(PushGlue.isWaypostPush(mapOf("channel" to "chat:o-1")))
        assertEquals(
            """{"kind":"message","channel":"chat:o-1","seq":"7","count":"2","preview":"say \"hi\"\u000a"}""",
            PushGlue.payload(data),
        )
    }
}

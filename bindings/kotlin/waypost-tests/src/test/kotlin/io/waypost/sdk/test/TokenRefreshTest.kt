package io.waypost.sdk.test

import io.waypost.sdk.BuyerClient
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.BuyerListener
import io.waypost.sdk.TokenProvider
import io.waypost.sdk.types.ChatEntry
import io.waypost.sdk.types.ConnectionState
import io.waypost.sdk.types.LocationUpdate
import io.waypost.sdk.types.PresenceUpdate
import io.waypost.sdk.types.TypingUpdate
import io.waypost.sdk.types.TrailUpdate
import io.waypost.sdk.types.DriverStatusUpdate
import io.waypost.sdk.types.ReceiptUpdate
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.atomic.AtomicInteger

/**
 * The SDK's in-band token refresh against the real server: a provider
 * minting short-lived tokens (the server's development secret, through
 * `waypost token --dev`) keeps one connection alive across refreshes; a
 * provider handing out another user's token is refused and the SDK
 * reconnects with a fresh token when the old one expires.
 */
class TokenRefreshTest {
    private val ttlS = 6

    /** Mints a fresh token per call; call number [wrongOn] is another user's. */
    private inner class Minting(
        private val sub: String,
        private val channels: List<String>,
        private val wrongOn: Int = -1,
    ) : TokenProvider {
        val calls = AtomicInteger()

        private suspend fun mint(): String? {
            val n = calls.incrementAndGet()
            val user = if (n == wrongOn) "someone-else" else sub
            return withContext(Dispatchers.IO) { TestEnv.token(user, "buyer", channels, "${ttlS}s") }
        }

        override suspend fun token(): String? = mint()
        override suspend fun refreshToken(): String? = mint()
    }

    private class Listener : BuyerListener {
        val states = CopyOnWriteArrayList<ConnectionState>()
        val seqs = CopyOnWriteArrayList<Long>()
        val errors = CopyOnWriteArrayList<Pair<String, String>>()
        override fun onConnectionState(state: ConnectionState) { states += state }
        override fun onLocation(update: LocationUpdate) { seqs += update.seq.toLong() }
        override fun onMessage(message: ChatEntry) {}
        override fun onOutgoing(message: ChatEntry) {}
        override fun onPresence(update: PresenceUpdate) {}
        override fun onTyping(update: TypingUpdate) {}
        override fun onTrail(trail: TrailUpdate) {}
        override fun onDriverStatus(status: DriverStatusUpdate) {}
        override fun onReceipt(update: ReceiptUpdate) {}
        override fun onError(reference: String, code: String, message: String) { errors += reference to code }
    }

    @Test
    fun `the SDK refreshes in band on the same connection, losing no fix`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val buyerId = TestEnv.uniqueId("b")
        val driverToken = TestEnv.token(driverId, "driver")
        val tokens = Minting(buyerId, listOf("tracking:$driverId"))
        val listener = Listener()
        val buyer = BuyerClient.open(BuyerConfig(baseUrl = TestEnv.url, userId = buyerId), listener, tokens, null)
        val tracking = buyer.trackDriver(driverId)
        try {
            TestEnv.await("connected") { buyer.connectionState() is ConnectionState.Connected }
            // 15 s of fixes: the 6 s tokens are refreshed at ~3 s, ~6 s, ...
            var seq = 0L
            val started = System.nanoTime()
            while (System.nanoTime() - started < 15_000_000_000L) {
                seq += 1
                TestEnv.postFix(driverId, driverToken, seq)
                Thread.sleep(200)
            }
            val last = seq
            TestEnv.await("the last fix") { listener.seqs.lastOrNull() == last }
            assertEquals((1L..last).toList(), listener.seqs.toList(), "a fix was lost")
            assertTrue(tokens.calls.get() >= 3, "${tokens.calls.get()} tokens: fewer than two refreshes")
            // One connection all along: Connecting once, Connected once.
            assertEquals(2, listener.states.size, "${listener.states}")
            assertEquals(1, listener.states.count { it is ConnectionState.Connected }, "${listener.states}")
            assertTrue(listener.errors.isEmpty(), "${listener.errors}")
        } finally {
            tracking.cancel()
            runBlocking { buyer.shutdown() }
            buyer.close()
        }
    }

    @Test
    fun `a refused refresh is reported and the SDK reconnects at exp`(): Unit = runBlocking {
        val driverId = TestEnv.uniqueId("d")
        val buyerId = TestEnv.uniqueId("b")
        val driverToken = TestEnv.token(driverId, "driver")
        // Call 1 connects; call 2 (the first refresh) is another user's token.
        val tokens = Minting(buyerId, listOf("tracking:$driverId"), wrongOn = 2)
        val listener = Listener()
        val buyer = BuyerClient.open(BuyerConfig(baseUrl = TestEnv.url, userId = buyerId), listener, tokens, null)
        val tracking = buyer.trackDriver(driverId)
        try {
            TestEnv.await("the refusal reaches the app", 15_000) { ("token" to "forbidden") in listener.errors }
            // The old token ends at its exp (4001); the SDK reconnects with a
            // fresh token from the provider, without the app doing anything.
            TestEnv.await("a second connection", 15_000) {
                listener.states.count { it is ConnectionState.Connected } == 2
            }
            assertFalse(listener.states.any { it is ConnectionState.Closed }, "${listener.states}")
            assertTrue(tokens.calls.get() >= 3)
            TestEnv.postFix(driverId, driverToken, 1)
            TestEnv.await("a fix on the new connection") { listener.seqs.lastOrNull() == 1L }
        } finally {
            tracking.cancel()
            runBlocking { buyer.shutdown() }
            buyer.close()
        }
    }
}

package io.waypost.sample.core

import io.waypost.sdk.BuyerClient
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.BuyerListener
import io.waypost.sdk.PlatformState
import io.waypost.sdk.types.ChatEntry
import io.waypost.sdk.types.CloseReason
import io.waypost.sdk.types.ConnectionState
import io.waypost.sdk.types.DriverStatusUpdate
import io.waypost.sdk.types.LocationUpdate
import io.waypost.sdk.types.MessageStatus
import io.waypost.sdk.types.PresenceUpdate
import io.waypost.sdk.Subscription
import io.waypost.sdk.TokenProvider
import io.waypost.sdk.types.TrailUpdate
import io.waypost.sdk.types.TypingUpdate

/** What the buyer screen shows. Immutable; a new one after every change. */
data class BuyerUiState(
    val connection: String = "connecting…",
    val tracking: String = "waiting for the courier's position…",
    val latest: LocationUpdate? = null,
    /** The courier's path through the last dead zone (drawn as a line, not a jump), oldest first. */
    val deadZonePath: List<LocationUpdate> = emptyList(),
    /** "Courier offline since 12:04:05" / "Courier back after 45 s (offline)"; null while nothing to say. */
    val courierStatus: String? = null,
    /** The chat, oldest first: stored messages by seq, then own pending/failed ones. */
    val messages: List<ChatEntry> = emptyList(),
    val typing: String? = null,
    val lastError: String? = null,
)

/**
 * The buyer side of the sample, without Android: tracks one courier and
 * chats in one order room, and turns SDK callbacks into [BuyerUiState]s.
 *
 * The client follows the app's one [PlatformState] by itself (offline →
 * waits, network back → reconnects at once).
 *
 * [onChange] runs on an SDK thread (`waypost-rt`), in order; the activity
 * posts the state to the main thread.
 */
class BuyerSession private constructor(
    val platform: PlatformState,
    private val driverId: String,
    val room: String,
    private val onChange: (BuyerUiState) -> Unit = {},
) : BuyerListener, AutoCloseable {

    private val lock = Any()
    private var state = BuyerUiState()
    /** Chat by client id, so a pending entry is replaced by its acknowledged form. */
    private val chat = LinkedHashMap<String, ChatEntry>()

    lateinit var client: BuyerClient
        private set
    private lateinit var trackingSub: Subscription
    private lateinit var chatSub: Subscription

    private suspend fun start() {
        trackingSub = client.trackDriver(driverId)
        chatSub = client.joinChat(room)
        // Show what the local store already has (offline start).
        for (m in client.messages(room, 200u)) {
            chat[m.clientId] = m
        }
        update { it.copy(messages = sortedChat()) }
    }

    /** The current state (any thread). */
    fun state(): BuyerUiState = synchronized(lock) { state }

    /** Queues a message (works offline); the pending entry shows at once. */
    suspend fun send(body: String): ChatEntry {
        val entry = client.sendMessage(room, body)
        onOutgoing(entry)
        return entry
    }

    fun typing() = runCatching { client.sendTyping(room) }

    override fun onConnectionState(state: ConnectionState) {
        val text = when (state) {
            is ConnectionState.Connecting -> if (state.attempt <= 1u) "connecting…" else "connecting (attempt ${state.attempt})…"
            is ConnectionState.Connected -> "live"
            is ConnectionState.BackingOff -> "reconnecting in ${(state.retryInMs.toLong() + 999) / 1000} s"
            is ConnectionState.Offline -> "offline: waiting for the network"
            is ConnectionState.Closed -> when (val r = state.reason) {
                is CloseReason.Shutdown -> "closed"
                is CloseReason.Unauthorized -> "signed out: ${r.message}"
                is CloseReason.Refused -> "refused (${r.code}): ${r.message}"
            }
        }
        update { it.copy(connection = text) }
    }

    override fun onLocation(update: LocationUpdate) {
        if (update.driverId != driverId) return
        update { it.copy(latest = update, tracking = trackingText(update)) }
    }

    override fun onMessage(message: ChatEntry) {
        if (message.room != room) return
        synchronized(lock) { chat[message.clientId] = message }
        update { it.copy(messages = sortedChat()) }
    }

    override fun onOutgoing(message: ChatEntry) {
        if (message.room != room) return
        synchronized(lock) {
            // Never downgrade an acknowledged entry back to pending.
            val known = chat[message.clientId]
            if (known == null || known.seq == null) chat[message.clientId] = message
        }
        update { it.copy(messages = sortedChat()) }
    }

    override fun onTrail(trail: TrailUpdate) {
        if (trail.driverId != driverId) return
        update { it.copy(deadZonePath = trail.fixes) }
    }

    override fun onDriverStatus(status: DriverStatusUpdate) {
        if (status.driverId != driverId) return
        update { it.copy(courierStatus = statusText(status)) }
    }

    override fun onPresence(update: PresenceUpdate) {}

    override fun onTyping(update: TypingUpdate) {
        if (update.room == room) update { it.copy(typing = "${update.user} is typing…") }
    }

    override fun onError(reference: String, code: String, message: String) {
        update { it.copy(lastError = "$code: $message ($reference)") }
    }

    private fun sortedChat(): List<ChatEntry> = synchronized(lock) {
        chat.values.sortedWith(compareBy<ChatEntry>({ it.seq == null }, { it.seq ?: 0uL }, { it.tsMs }))
    }

    private fun update(change: (BuyerUiState) -> BuyerUiState) {
        val next = synchronized(lock) {
            state = change(state)
            state
        }
        onChange(next)
    }

    /** Stops tracking and chat and closes the connection. Idempotent. */
    suspend fun stop() {
        trackingSub.cancel()
        chatSub.cancel()
        client.shutdown()
    }

    override fun close() {
        trackingSub.close()
        chatSub.close()
        client.close()
    }

    companion object {
        /** Opens the client (its SQLite store, off the caller's thread), tracks [driverId] and joins [room]. */
        suspend fun open(
            config: BuyerConfig,
            tokens: TokenProvider,
            platform: PlatformState,
            driverId: String,
            room: String,
            onChange: (BuyerUiState) -> Unit = {},
        ): BuyerSession {
            val session = BuyerSession(platform, driverId, room, onChange)
            session.client = BuyerClient.open(config, session, tokens, platform)
            session.start()
            return session
        }

        /** "Courier at 52.52000, 13.40500 · ±8 m · 40 km/h" */
        fun trackingText(u: LocationUpdate): String {
            val parts = mutableListOf("Courier at %.5f, %.5f".format(java.util.Locale.ROOT, u.lat, u.lon))
            u.accuracyM?.let { parts += "±%.0f m".format(java.util.Locale.ROOT, it) }
            u.speedMps?.let { parts += "%.0f km/h".format(java.util.Locale.ROOT, it * 3.6) }
            return parts.joinToString(" · ")
        }

        /** "Courier offline since 12:04:05 UTC" / "Courier back after 45 s (offline)". */
        fun statusText(s: DriverStatusUpdate): String = if (s.online) {
            val why = s.reason?.let { " ($it)" } ?: ""
            "Courier back after ${(s.darkMs ?: 0uL) / 1000uL} s$why"
        } else {
            "Courier offline since " + java.time.Instant.ofEpochMilli(s.lastSeenMs).toString()
        }

        fun statusLabel(e: ChatEntry): String = when (e.status) {
            MessageStatus.PENDING -> "sending…"
            MessageStatus.SENT -> "sent"
            MessageStatus.FAILED -> "not sent: tap to retry"
            MessageStatus.RECEIVED -> ""
        }
    }
}

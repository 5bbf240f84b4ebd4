package io.waypost.sample.core

import io.waypost.sdk.BuyerClient
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.PlatformState
import io.waypost.sdk.types.ChatEntry
import io.waypost.sdk.types.CloseReason
import io.waypost.sdk.types.ConnectionState
import io.waypost.sdk.types.DriverStatusUpdate
import io.waypost.sdk.types.LocationUpdate
import io.waypost.sdk.types.MessageStatus
import io.waypost.sdk.TokenProvider
import io.waypost.sdk.types.TrailUpdate
import io.waypost.sdk.types.ChatEvent
import io.waypost.sdk.ktx.BuyerListenerAdapter
import io.waypost.sdk.ktx.chatEvents
import io.waypost.sdk.ktx.connectionState
import io.waypost.sdk.ktx.DriverUpdate
import io.waypost.sdk.ktx.driverUpdates
import java.lang.ref.WeakReference
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.flow.catch
import kotlinx.coroutines.launch

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
    /** Highest seq each other participant has read (read receipts). */
    val readBy: Map<String, ULong> = emptyMap(),
    val lastError: String? = null,
)

/**
 * The buyer side of the sample, without Android: tracks one courier and
 * chats in one order room by collecting the SDK's Flows (`waypost-ktx`),
 * and turns them into [BuyerUiState]s.
 *
 * The client follows the app's one [PlatformState] by itself (offline →
 * waits, network back → reconnects at once).
 *
 * The Flows are collected on [scope] (a background dispatcher): [onChange]
 * runs there; the activity posts the state to the main thread (or collects
 * its own StateFlow). Nothing here touches disk on the caller's thread.
 */
class BuyerSession private constructor(
    val platform: PlatformState,
    private val driverId: String,
    val room: String,
    private val onChange: (BuyerUiState) -> Unit = {},
) : AutoCloseable {

    private val lock = Any()
    private var state = BuyerUiState()
    /** Chat by client id, so a pending entry is replaced by its acknowledged form. */
    private val chat = LinkedHashMap<String, ChatEntry>()
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)

    lateinit var client: BuyerClient
        private set
    /** This user (its own devices' receipts are not shown as "read by"). */
    private var me = ""

    private suspend fun start() {
        // Show what the local store already has (offline start).
        for (m in client.messages(room, 200u)) {
            chat[m.clientId] = m
        }
        update { it.copy(messages = sortedChat()) }
        // Cold Flows: each collection is one core subscription, ended when
        // the scope is cancelled (stop/close).
        scope.launch { client.connectionState.collect { onConnectionState(it) } }
        scope.launch {
            // Not conflated: a dead zone's trail comes before the position after it.
            client.driverUpdates(driverId)
                .catch { e -> update { it.copy(lastError = "tracking: ${e.message}") } }
                .collect { u ->
                    when (u) {
                        is DriverUpdate.Location -> onLocation(u.update)
                        is DriverUpdate.Trail -> onTrail(u.trail)
                        is DriverUpdate.Status -> onDriverStatus(u.status)
                    }
                }
        }
        scope.launch {
            client.chatEvents(room)
                .catch { e -> update { it.copy(lastError = "chat: ${e.message}") } }
                .collect { ev ->
                    when (ev) {
                        is ChatEvent.Message -> onMessage(ev.entry)
                        is ChatEvent.Outgoing -> onOutgoing(ev.entry)
                        is ChatEvent.Typing -> update { it.copy(typing = "${ev.update.user} is typing…") }
                        is ChatEvent.Presence -> {}
                        is ChatEvent.Receipt -> if (ev.update.read && ev.update.user != me) {
                            update { it.copy(readBy = it.readBy + (ev.update.user to maxOf(ev.update.seq, it.readBy[ev.update.user] ?: 0uL))) }
                        }
                        is ChatEvent.Refused -> update { it.copy(lastError = "${ev.code}: ${ev.message} (${ev.reference})") }
                    }
                }
        }
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

    private fun onConnectionState(state: ConnectionState) {
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

    private fun onLocation(update: LocationUpdate) {
        update { it.copy(latest = update, tracking = trackingText(update)) }
    }

    private fun onTrail(trail: TrailUpdate) {
        update { it.copy(deadZonePath = trail.fixes) }
    }

    private fun onDriverStatus(status: DriverStatusUpdate) {
        update { it.copy(courierStatus = statusText(status)) }
    }

    private fun onMessage(message: ChatEntry) {
        synchronized(lock) { chat[message.clientId] = message }
        update { it.copy(messages = sortedChat()) }
    }

    private fun onOutgoing(message: ChatEntry) {
        synchronized(lock) {
            // Never downgrade an acknowledged entry back to pending.
            val known = chat[message.clientId]
            if (known == null || known.seq == null) chat[message.clientId] = message
        }
        update { it.copy(messages = sortedChat()) }
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

    /** Stops tracking and chat (ends the Flows' subscriptions) and closes the connection. Idempotent. */
    suspend fun stop() {
        scope.cancel()
        client.shutdown()
    }

    /**
     * Frees the native client. Always call it (the activity does in
     * onDestroy): a client is not garbage-collected while open.
     */
    override fun close() {
        scope.cancel()
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
            session.me = config.userId
            session.client = BuyerClient.open(config, ClientErrors(WeakReference(session)), tokens, platform)
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

        /**
         * The client-wide listener: everything else arrives through the
         * Flows; this one only reports refused messages. It holds the
         * session weakly so that it does not keep the client alive.
         */
        private class ClientErrors(private val session: WeakReference<BuyerSession>) : BuyerListenerAdapter() {
            override fun onError(reference: String, code: String, message: String) {
                session.get()?.update { it.copy(lastError = "$code: $message ($reference)") }
            }
        }

        fun statusLabel(e: ChatEntry): String = when (e.status) {
            MessageStatus.PENDING -> "sending…"
            MessageStatus.SENT -> "sent"
            MessageStatus.FAILED -> "not sent: tap to retry"
            MessageStatus.RECEIVED -> ""
        }
    }
}

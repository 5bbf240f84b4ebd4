package io.waypost.sample.core

import io.waypost.sdk.BuyerClient
import io.waypost.sdk.types.PushPlatform
import io.waypost.sdk.types.PushSync
import kotlinx.coroutines.withTimeoutOrNull

/**
 * Push for a sleeping app, without Android: what `WaypostMessagingService`
 * (a `FirebaseMessagingService`) and the launcher activity call. Compiled
 * and tested on the JVM with the other `core/` classes.
 *
 * - [register] from `onNewToken` (and after login): the FCM registration
 *   token goes to the server (`POST /v1/devices`) through the SDK's
 *   suspend API, which runs on the SDK's own threads.
 * - [sync] from `onMessageReceived` (a data message, or any message while
 *   the app is in the foreground) and from the activity a tapped
 *   notification opens (the same keys arrive as intent extras): the SDK
 *   reads exactly what the push covers (the missed chat messages, order
 *   entries or vendor notifications after what this device has, up to the
 *   pushed seq) and stores chat messages like live ones.
 */
object PushGlue {
    /**
     * Android gives `onMessageReceived` about 10 s before the process may
     * be frozen again; the sync stops well before (what it stored by then
     * stays stored, and the next push or the socket's resume reads the
     * rest).
     */
    const val SYNC_BUDGET_MS = 8_000L

    /** Keys of a Waypost push in `RemoteMessage.data` (all strings). */
    private val KEYS = listOf("kind", "channel", "seq", "count", "preview")

    /** Whether [data] is a Waypost push (other pushes the app gets are not). */
    fun isWaypostPush(data: Map<String, String?>): Boolean =
        !data["channel"].isNullOrEmpty() && !data["seq"].isNullOrEmpty() && !data["kind"].isNullOrEmpty()

    /** `RemoteMessage.data` (or intent extras with the same keys) as the JSON `handlePush` takes. */
    fun payload(data: Map<String, String?>): String =
        KEYS.mapNotNull { k -> data[k]?.let { "\"$k\":${quote(it)}" } }
            .joinToString(",", prefix = "{", postfix = "}")

    /** Registers this installation's FCM token; returns the channels pushes will come for. */
    suspend fun register(client: BuyerClient, fcmToken: String): List<String> =
        client.registerPushToken(PushPlatform.FCM, fcmToken)

    /** Stops pushes to this installation (at logout). */
    suspend fun unregister(client: BuyerClient) = client.unregisterPushToken()

    /**
     * Syncs what the push in [data] covers within [budgetMs]; null when it
     * is not a Waypost push or the budget ran out.
     */
    suspend fun sync(client: BuyerClient, data: Map<String, String?>, budgetMs: Long = SYNC_BUDGET_MS): PushSync? {
        if (!isWaypostPush(data)) return null
        return withTimeoutOrNull(budgetMs) { client.handlePush(payload(data)) }
    }

    /** A one-line summary for a log or a local notification. */
    fun describe(s: PushSync): String = when {
        s.messages.isNotEmpty() -> "${s.messages.size} new message(s) in ${s.channel}"
        s.orderEntries.isNotEmpty() -> "order ${s.channel.removePrefix("order:")}: " +
            s.orderEntries.mapNotNull { it.status }.lastOrNull().orEmpty()
        s.notifications.isNotEmpty() -> "${s.notifications.size} notification(s): " +
            s.notifications.joinToString(", ") { it.event }
        else -> "nothing new in ${s.channel}"
    }

    private fun quote(s: String): String {
        val b = StringBuilder("\"")
        for (c in s) {
            when {
                c == '"' -> b.append("\\\"")
                c == '\\' -> b.append("\\\\")
                c < ' ' -> b.append("\\u%04x".format(c.code))
                else -> b.append(c)
            }
        }
        return b.append('"').toString()
    }
}

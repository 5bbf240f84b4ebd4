package io.waypost.sample

import android.content.Context
import android.os.Bundle
import android.util.Log
import com.google.firebase.messaging.FirebaseMessaging
import com.google.firebase.messaging.FirebaseMessagingService
import com.google.firebase.messaging.RemoteMessage
import io.waypost.sample.core.CallbackTokenProvider
import io.waypost.sample.core.PushGlue
import io.waypost.sdk.BuyerClient
import io.waypost.sdk.BuyerConfig
import io.waypost.sdk.ktx.BuyerListenerAdapter
import io.waypost.sdk.types.PushSync
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.tasks.await
import kotlinx.coroutines.withContext

/**
 * FCM for the buyer (issue 19): the server pushes what a backgrounded buyer
 * missed (chat messages, order milestones, vendor notifications) and the
 * SDK reads exactly that gap when the push arrives.
 *
 * - [onNewToken] registers the token with the server through the SDK's
 *   suspend API, on the app's background scope (never the main thread).
 * - [onMessageReceived] runs on FCM's worker thread and may use about 10 s:
 *   it blocks that thread (not the main one) for at most
 *   [PushGlue.SYNC_BUDGET_MS] while the SDK syncs. It is called for data
 *   messages, and for notification messages while the app is in the
 *   foreground; in the background Android shows the notification itself
 *   (localised from the `WAYPOST_*` string resources) and the tap opens
 *   [MainActivity] with the same keys as extras, which syncs then
 *   ([syncFromExtras]).
 *
 * The SDK client is the open buyer screen's when there is one (one client
 * per SQLite store), else a short-lived one on the same store, opened with
 * the last buyer login ([BuyerLogin]) and shut down afterwards.
 */
class WaypostMessagingService : FirebaseMessagingService() {
    override fun onNewToken(token: String) {
        waypostApp.scope.launch { register(applicationContext, token) }
    }

    override fun onMessageReceived(message: RemoteMessage) {
        if (!PushGlue.isWaypostPush(message.data)) return
        // FCM's worker thread: blocking it (bounded) keeps the process up
        // until the sync is done.
        val synced = runBlocking { withClient(applicationContext) { PushGlue.sync(it, message.data) } }
        Log.i(TAG, synced?.let(PushGlue::describe) ?: "push sync did not finish in time")
    }

    companion object {
        private const val TAG = "WaypostPush"

        /** Registers [fcmToken] for the last buyer login (no login yet: done at the next one). */
        suspend fun register(context: Context, fcmToken: String) {
            try {
                val channels = withClient(context) { PushGlue.register(it, fcmToken) }
                Log.i(TAG, "push registered for ${channels ?: "nobody (no buyer login yet)"}")
            } catch (e: Exception) {
                // Retried at the next login (BuyerActivity registers again).
                Log.w(TAG, "push registration failed: ${e.message}")
            }
        }

        /** After a login: registers the current FCM token (if Firebase is set up). */
        suspend fun registerCurrentToken(context: Context) {
            val token = try {
                FirebaseMessaging.getInstance().token.await()
            } catch (e: Exception) {
                Log.i(TAG, "no FCM token (google-services.json missing?): ${e.message}")
                return
            }
            register(context, token)
        }

        /** A tapped notification opened the app: sync what it announced. */
        suspend fun syncFromExtras(context: Context, extras: Bundle?): PushSync? {
            extras ?: return null
            val data = listOf("kind", "channel", "seq", "count", "preview")
                .associateWith { extras.getString(it) }
            if (!PushGlue.isWaypostPush(data)) return null
            return withClient(context) { PushGlue.sync(it, data) }
        }

        /** Runs [block] with the open buyer client, or a short-lived one on the same store. */
        private suspend fun <T> withClient(context: Context, block: suspend (BuyerClient) -> T): T? {
            context.waypostApp.activeBuyer?.let { return block(it) }
            val login = BuyerLogin.load(context) ?: return null
            val client = BuyerClient.open(
                BuyerConfig(baseUrl = login.url, userId = login.userId, dbPath = login.dbPath),
                BuyerListenerAdapter(),
                CallbackTokenProvider { login.token },
                context.waypostApp.platform,
            )
            return try {
                block(client)
            } finally {
                client.shutdown()
                client.close()
            }
        }
    }
}

/** The last buyer login, so a push that wakes the app can open the SDK (SharedPreferences, on IO). */
data class BuyerLogin(val url: String, val userId: String, val token: String, val dbPath: String) {
    companion object {
        private const val PREFS = "waypost-buyer"

        suspend fun save(context: Context, login: BuyerLogin) = withContext(Dispatchers.IO) {
            context.getSharedPreferences(PREFS, Context.MODE_PRIVATE).edit()
                .putString("url", login.url).putString("user", login.userId)
                .putString("token", login.token).putString("db", login.dbPath)
                .commit()
        }

        suspend fun load(context: Context): BuyerLogin? = withContext(Dispatchers.IO) {
            val p = context.getSharedPreferences(PREFS, Context.MODE_PRIVATE)
            val url = p.getString("url", null) ?: return@withContext null
            val user = p.getString("user", null) ?: return@withContext null
            BuyerLogin(url, user, p.getString("token", null).orEmpty(), p.getString("db", null) ?: return@withContext null)
        }
    }
}

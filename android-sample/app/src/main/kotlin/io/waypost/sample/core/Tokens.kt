package io.waypost.sample.core

import io.waypost.sdk.TokenProvider
import kotlin.coroutines.cancellation.CancellationException

/**
 * A [TokenProvider] over the app's own login code: [fetch] gets a JWT from
 * the app's backend (`refresh = true` after the server refused the last
 * one or when it expires within a minute). It suspends, so it may call an
 * async auth library directly; any exception reads as "no token" (the SDK
 * then reports the auth failure and retries later).
 */
class CallbackTokenProvider(private val fetch: suspend (refresh: Boolean) -> String?) : TokenProvider {
    override suspend fun token(): String? = fetchOrNull(false)

    override suspend fun refreshToken(): String? = fetchOrNull(true)

    private suspend fun fetchOrNull(refresh: Boolean): String? =
        try {
            fetch(refresh)
        } catch (e: CancellationException) {
            throw e
        } catch (e: Exception) {
            null
        }
}

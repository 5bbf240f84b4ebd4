package io.waypost.sample.core

import io.waypost.sdk.TokenProvider

/**
 * A [TokenProvider] over the app's own login code: [fetch] gets a JWT from
 * the app's backend (`refresh = true` after the server refused the last
 * one). The SDK calls it on its own blocking-capable thread, so [fetch] may
 * do network I/O; any exception reads as "no token" (the SDK then reports
 * the auth failure and retries later).
 */
class CallbackTokenProvider(private val fetch: (refresh: Boolean) -> String?) : TokenProvider {
    override fun token(): String? = runCatching { fetch(false) }.getOrNull()

    override fun refreshToken(): String? = runCatching { fetch(true) }.getOrNull()
}

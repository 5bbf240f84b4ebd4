package io.waypost.sample.core

import io.waypost.sdk.Driver
import io.waypost.sdk.DriverConfig
import io.waypost.sdk.PlatformState
import io.waypost.sdk.types.DriverHealth
import io.waypost.sdk.types.DriverEvent
import io.waypost.sdk.types.DriverStats
import io.waypost.sdk.types.Location
import io.waypost.sdk.types.RecordOutcome
import io.waypost.sdk.TokenProvider
import io.waypost.sdk.ktx.events
import io.waypost.sdk.ktx.health
import java.util.ArrayDeque
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch

/**
 * The driver side of the sample, without Android: owns the SDK [Driver],
 * feeds it the fixes the foreground service receives, tells the service
 * how to configure the location provider, and keeps a short log for the
 * status screen.
 *
 * The driver follows the app's one [PlatformState] by itself (network back
 * → upload, permission/accuracy → sampling and health): the session does
 * not forward anything. [health] is the report for the status screen and
 * for support ("why don't I see the courier?").
 *
 * Threads: everything that touches the buffer suspends ([open], [record],
 * [stats]) and runs on the SDK's threads; the driver's events and health
 * are collected as Flows (`waypost-ktx` `Driver.events`, `Driver.health`)
 * on a background scope, where [onSamplingChanged] and [onHealth] run.
 * Post to the main thread for UI work.
 */
class DriverSession private constructor(
    val platform: PlatformState,
    /** Reconfigure the fused location provider with this. */
    private val onSamplingChanged: (LocationRequestSpec) -> Unit = {},
    /** The health report changed (a reason appeared or cleared). */
    private val onHealth: (DriverHealth) -> Unit = {},
) : AutoCloseable {
    companion object {
        /** Opens the SDK driver (its SQLite buffer, off the caller's thread) and starts uploading. */
        suspend fun open(
            config: DriverConfig,
            tokens: TokenProvider,
            platform: PlatformState,
            onHealth: (DriverHealth) -> Unit = {},
            onSamplingChanged: (LocationRequestSpec) -> Unit = {},
        ): DriverSession {
            val session = DriverSession(platform, onSamplingChanged, onHealth)
            session.driver = Driver.open(config, tokens, null, platform)
            session.scope.launch { session.driver.events.collect { session.onEvent(it) } }
            session.scope.launch { session.driver.health.collect { session.onHealthReport(it) } }
            session.driver.start()
            return session
        }
    }

    private val log = ArrayDeque<String>()
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)

    @Volatile var lastHealth: DriverHealth? = null
        private set

    @Volatile var recorded = 0L
        private set

    @Volatile var dropped = 0L
        private set

    lateinit var driver: Driver
        private set

    /** The request to start location updates with. */
    fun initialRequest(): LocationRequestSpec = LocationRequestSpec.from(driver.desiredSampling())

    /** Records what the OS delivered (one `LocationResult` may hold several fixes). */
    suspend fun record(locations: List<Location>): List<RecordOutcome> {
        val outcomes = driver.recordMany(locations)
        for (o in outcomes) {
            when (o) {
                is RecordOutcome.Recorded -> recorded++
                is RecordOutcome.Dropped -> dropped++
            }
        }
        return outcomes
    }

    suspend fun stats(): DriverStats = driver.stats()

    /** The health report now (in memory, cheap). */
    fun health(): DriverHealth = driver.health()

    private fun onHealthReport(health: DriverHealth) {
        lastHealth = health
        synchronized(log) {
            log.addFirst("health: " + health.issues.joinToString { it.code }.ifEmpty { "ok" })
            while (log.size > 50) log.removeLast()
        }
        onHealth(health)
    }

    /** One line for the status screen. */
    suspend fun statusText(): String {
        val s = driver.stats()
        val watched = if (s.watched) "watched" else "not watched"
        val health = driver.health()
        val line = "recorded $recorded · dropped $dropped · pending ${s.pending} · uploaded ${s.ackedTotal} · $watched"
        return if (health.ok && health.issues.isEmpty()) line else line + "\n" + health.summary
    }

    /** The newest events, newest first (at most 50). */
    fun recentEvents(): List<String> = synchronized(log) { log.toList() }

    private fun onEvent(event: DriverEvent) {
        val line = when (event) {
            is DriverEvent.SamplingChanged -> {
                onSamplingChanged(LocationRequestSpec.from(event.sampling))
                "sampling: ${event.sampling.accuracy} every ${event.sampling.intervalMs} ms"
            }
            is DriverEvent.WatchedChanged -> if (event.watched) "a buyer is watching" else "nobody watches"
            is DriverEvent.Uploaded -> "uploaded ${event.fixes} fixes (up to #${event.highSeq})"
            is DriverEvent.UploadFailed -> "upload failed: ${event.message}; retry in ${event.retryInMs} ms"
            is DriverEvent.AuthFailed -> "sign-in needed: ${event.message}"
            is DriverEvent.Quarantined -> "server refused fix #${event.seq}: ${event.reason}"
            is DriverEvent.Evicted -> "buffer full: dropped ${event.count} old fixes"
            is DriverEvent.BufferRecreated -> "buffer was corrupt and was reset"
        }
        synchronized(log) {
            log.addFirst(line)
            while (log.size > 50) log.removeLast()
        }
    }

    /** Stops uploading (unsent fixes stay in the buffer for next time). Idempotent. */
    suspend fun stop() {
        scope.cancel()
        driver.shutdown()
    }

    /** Releases the native handle; call after [stop]. */
    override fun close() {
        scope.cancel()
        driver.close()
    }
}

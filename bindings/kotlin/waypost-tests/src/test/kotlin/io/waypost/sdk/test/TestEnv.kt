package io.waypost.sdk.test

import io.waypost.sdk.LogSink
import io.waypost.sdk.initLogging
import io.waypost.sdk.LogLevel
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.nio.file.Path
import java.util.UUID
import java.util.concurrent.TimeUnit

/**
 * The running server the tests talk to, started by
 * scripts/test.d/40-bindings.sh: `WAYPOST_URL` is its base URL,
 * `WAYPOST_BIN` the `waypost` binary (its `token --dev` subcommand mints
 * the JWTs).
 */
object TestEnv {
    val url: String = System.getenv("WAYPOST_URL")
        ?: error("WAYPOST_URL is not set: run scripts/test.d/40-bindings.sh (it starts a server)")
    private val bin: String = System.getenv("WAYPOST_BIN")
        ?: error("WAYPOST_BIN is not set: run scripts/test.d/40-bindings.sh")
    private val http: HttpClient = HttpClient.newHttpClient()

    /** One SDK log line the tests' [LogSink] kept. */
    data class LogLine(val level: LogLevel, val target: String, val message: String)

    private val logLines = java.util.concurrent.ConcurrentLinkedQueue<LogLine>()

    /**
     * SDK warnings and errors of this JVM (newest 1,000), through the one
     * `initLogging` a process may do; installed on first use.
     */
    val logs: List<LogLine> by lazy {
        val installed = initLogging("warn", object : LogSink {
            override fun log(level: LogLevel, target: String, message: String) {
                logLines += LogLine(level, target, message)
                while (logLines.size > 1_000) logLines.poll()
            }
        })
        check(installed) { "another logger was installed first" }
        object : AbstractList<LogLine>() {
            override val size: Int get() = logLines.size
            override fun get(index: Int): LogLine = logLines.toList()[index]
            override fun iterator(): Iterator<LogLine> = logLines.toList().iterator()
        }
    }

    /** An id no other test (nor an earlier run against the same server) uses. */
    fun uniqueId(prefix: String): String = "$prefix-kt-${UUID.randomUUID().toString().take(8)}"

    fun tempDir(): Path = Files.createTempDirectory("waypost-kt")

    /** Mints a development token (the server runs with --dev). */
    fun token(sub: String, role: String, channels: List<String> = emptyList(), ttl: String = "10m"): String {
        val cmd = mutableListOf(bin, "token", "--dev", "--sub", sub, "--role", role, "--ttl", ttl)
        if (channels.isNotEmpty()) cmd += listOf("--channels", channels.joinToString(","))
        val p = ProcessBuilder(cmd).redirectErrorStream(true).start()
        val out = p.inputStream.bufferedReader().readText().trim()
        check(p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0) { "token minting failed: $out" }
        return out.lines().last()
    }

    /** A server of the test's own (e.g. with a short `--online-ttl`); [close] stops it. */
    class OwnServer(val url: String, private val process: Process) : AutoCloseable {
        override fun close() {
            process.destroy()
            if (!process.waitFor(10, TimeUnit.SECONDS)) process.destroyForcibly()
        }
    }

    /** Starts `waypost serve --dev` on a free loopback port with [args] (same dev signing key as the shared one). */
    fun startServer(vararg args: String): OwnServer {
        val log = Files.createTempFile("waypost-server", ".log")
        val cmd = listOf(bin, "serve", "--dev", "--listen", "127.0.0.1:0") + args
        val p = ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile()).start()
        val deadline = System.nanoTime() + 20_000_000_000L
        while (System.nanoTime() < deadline) {
            val addr = Files.readAllLines(log).firstNotNullOfOrNull { Regex("^listening on (.+)$").find(it)?.groupValues?.get(1) }
            if (addr != null) return OwnServer("http://$addr", p)
            if (!p.isAlive) error("the server exited: ${Files.readString(log)}")
            Thread.sleep(50)
        }
        p.destroyForcibly()
        error("the server did not start within 20 s: ${Files.readString(log)}")
    }

    /** GET with a service token; returns (status, body). */
    fun get(path: String, base: String = url): Pair<Int, String> {
        val req = HttpRequest.newBuilder(URI.create(base + path))
            .header("Authorization", "Bearer ${token("kt-tests", "service")}")
            .GET().build()
        val resp = http.send(req, HttpResponse.BodyHandlers.ofString())
        return resp.statusCode() to resp.body()
    }

    /** POST of a JSON body with a service token; returns (status, body). */
    fun post(path: String, json: String): Pair<Int, String> {
        val req = HttpRequest.newBuilder(URI.create(url + path))
            .header("Authorization", "Bearer ${token("kt-tests", "service")}")
            .header("Content-Type", "application/json")
            .POST(HttpRequest.BodyPublishers.ofString(json)).build()
        val resp = http.send(req, HttpResponse.BodyHandlers.ofString())
        return resp.statusCode() to resp.body()
    }

    /** Posts one fix of [driverId] (seq [seq], now) with the driver's [token]. */
    fun postFix(driverId: String, token: String, seq: Long) {
        val body = """{"device_id":"kt","fixes":[{"seq":$seq,"ts":${System.currentTimeMillis()},"lat":52.5,"lon":13.4}]}"""
        val req = HttpRequest.newBuilder(URI.create("$url/v1/drivers/$driverId/locations"))
            .header("Authorization", "Bearer $token")
            .header("Content-Type", "application/json")
            .POST(HttpRequest.BodyPublishers.ofString(body)).build()
        val resp = http.send(req, HttpResponse.BodyHandlers.ofString())
        check(resp.statusCode() == 200) { "post fix $seq: HTTP ${resp.statusCode()} ${resp.body()}" }
    }

    /** (seq, lat) of every fix in a driver's trail on the server. */
    fun trail(driverId: String): List<Pair<Long, Double>> {
        val (status, body) = get("/v1/drivers/$driverId/trail?limit=1000")
        check(status == 200) { "trail: HTTP $status $body" }
        // Each fix object holds "seq" before "lat"; no JSON library needed.
        val fix = Regex("\"seq\":(\\d+)[^}]*?\"lat\":(-?[0-9.eE+-]+)")
        return fix.findAll(body).map { it.groupValues[1].toLong() to it.groupValues[2].toDouble() }.toList()
    }

    /** Polls [cond] every 20 ms until it holds or [timeoutMs] passes. */
    fun await(what: String, timeoutMs: Long = 10_000, cond: () -> Boolean) {
        val deadline = System.nanoTime() + timeoutMs * 1_000_000
        while (!cond()) {
            if (System.nanoTime() > deadline) throw AssertionError("timed out after $timeoutMs ms waiting for: $what")
            Thread.sleep(20)
        }
    }
}

package io.waypost.sample

import android.content.Context
import java.util.UUID
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

/** What a shift needs to (re)start after the process died: kept in SharedPreferences. */
data class Shift(val url: String, val driverId: String, val token: String, val deviceId: String)

/**
 * The current shift and the device id, persisted so that a service the
 * system restarts after process death (START_STICKY, null intent) and the
 * [DrainWorker] can reopen the driver. Every access reads or writes disk, so
 * every function is `suspend` and runs on [Dispatchers.IO]: never on the main
 * thread (SharedPreferences' first load is a disk read StrictMode flags).
 */
class ShiftStore(context: Context) {
    private val app = context.applicationContext

    private fun prefs() = app.getSharedPreferences("waypost-shift", Context.MODE_PRIVATE)

    /** The device id: one per installation, created on first use. */
    suspend fun deviceId(): String = withContext(Dispatchers.IO) {
        val p = prefs()
        p.getString(KEY_DEVICE, null) ?: "android-${UUID.randomUUID().toString().take(12)}"
            .also { p.edit().putString(KEY_DEVICE, it).commit() }
    }

    /** Marks a shift as running (the service restarts it after process death). */
    suspend fun begin(url: String, driverId: String, token: String): Shift {
        val shift = Shift(url, driverId, token, deviceId())
        withContext(Dispatchers.IO) {
            prefs().edit()
                .putString(KEY_URL, url).putString(KEY_DRIVER, driverId).putString(KEY_TOKEN, token)
                .putBoolean(KEY_ACTIVE, true)
                .commit()
        }
        return shift
    }

    /** The running shift, if any. */
    suspend fun active(): Shift? = withContext(Dispatchers.IO) {
        val p = prefs()
        if (!p.getBoolean(KEY_ACTIVE, false)) return@withContext null
        last()
    }

    /** The last shift's parameters, running or ended (the drain worker uploads its leftovers). */
    suspend fun last(): Shift? = withContext(Dispatchers.IO) {
        val p = prefs()
        val url = p.getString(KEY_URL, null) ?: return@withContext null
        val driver = p.getString(KEY_DRIVER, null) ?: return@withContext null
        Shift(url, driver, p.getString(KEY_TOKEN, null).orEmpty(), deviceId())
    }

    /** The shift ended: no restart after process death. */
    suspend fun end() = withContext(Dispatchers.IO) {
        prefs().edit().putBoolean(KEY_ACTIVE, false).commit()
    }

    private companion object {
        const val KEY_URL = "url"
        const val KEY_DRIVER = "driver_id"
        const val KEY_TOKEN = "token"
        const val KEY_DEVICE = "device_id"
        const val KEY_ACTIVE = "active"
    }
}

package io.waypost.sample

import android.content.Context
import android.util.Log
import androidx.work.BackoffPolicy
import androidx.work.Constraints
import androidx.work.CoroutineWorker
import androidx.work.ExistingWorkPolicy
import androidx.work.NetworkType
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.WorkManager
import androidx.work.WorkerParameters
import io.waypost.sample.core.CallbackTokenProvider
import io.waypost.sample.core.DriverSession
import io.waypost.sdk.DriverConfig
import io.waypost.sdk.types.WaypostException
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

/**
 * Uploads what a shift left in the SDK's buffer (the courier ended the shift
 * in a dead zone, or the process died before the last upload) once a network
 * is available, without the app being opened: WorkManager runs it with a
 * CONNECTED constraint and retries with exponential backoff.
 *
 * It does nothing while a shift runs (the foreground service uploads then and
 * owns the buffer file).
 */
class DrainWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result {
        val store = ShiftStore(applicationContext)
        if (store.active() != null) return Result.success()
        val shift = store.last() ?: return Result.success()
        val app = applicationContext as WaypostApp
        val path = withContext(Dispatchers.IO) { LocationService.bufferPath(applicationContext) }
        val session = try {
            DriverSession.open(
                DriverConfig(
                    baseUrl = shift.url,
                    driverId = shift.driverId,
                    deviceId = shift.deviceId,
                    bufferPath = path,
                ),
                // A real app refreshes from its backend here (the sample reuses the pasted token).
                CallbackTokenProvider { shift.token },
                app.platform,
            )
        } catch (e: WaypostException) {
            Log.e(TAG, "cannot open the buffer", e)
            return Result.retry()
        }
        return try {
            // Uploads everything pending now (Retry-After and backoff honoured).
            val left = session.driver.uploadNow().pending
            Log.i(TAG, "drained; $left fixes left")
            if (left == 0uL) Result.success() else Result.retry()
        } catch (e: WaypostException) {
            Log.w(TAG, "upload failed, retrying later", e)
            Result.retry()
        } finally {
            session.stop()
            session.close()
        }
    }

    companion object {
        private const val TAG = "WaypostDrain"
        private const val NAME = "waypost-drain"

        /** Schedules the drain (replacing a pending one): runs when a network is up. */
        fun enqueue(context: Context) {
            val request = OneTimeWorkRequestBuilder<DrainWorker>()
                .setConstraints(Constraints.Builder().setRequiredNetworkType(NetworkType.CONNECTED).build())
                .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 1, TimeUnit.MINUTES)
                .build()
            WorkManager.getInstance(context).enqueueUniqueWork(NAME, ExistingWorkPolicy.REPLACE, request)
        }
    }
}

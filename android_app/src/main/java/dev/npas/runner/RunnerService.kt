package dev.npas.runner

import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.PendingIntent
import android.app.Service
import android.content.Context
import android.content.Intent
import android.content.pm.ServiceInfo
import android.os.Build
import android.os.IBinder
import android.os.Process
import android.util.Log
import androidx.core.app.NotificationCompat
import org.json.JSONObject
import java.io.File
import java.util.Locale
import java.util.concurrent.Executors
import java.util.concurrent.ScheduledExecutorService
import java.util.concurrent.ScheduledFuture
import java.util.concurrent.TimeUnit

/**
 * The runner as a foreground service in its own process (":runner"): the gRPC server of
 * libnpas_runner_jni.so on 127.0.0.1, kernels stored in app-private storage (filesDir/store).
 *
 * The host starts it over adb, choosing the port, and reaches it through `adb forward`:
 *   adb shell am start-foreground-service -n dev.npas.runner/.RunnerService --es token T --ei port P
 *   adb forward tcp:LOCAL tcp:P
 * A new start replaces the running server (new token, new port). Stop with
 *   adb shell am stopservice -n dev.npas.runner/.RunnerService
 * or the notification's Stop action. The process is not restarted by the OS after a crash
 * (START_NOT_STICKY): the host notices a dead runner and starts it again itself.
 */
class RunnerService : Service() {
    // Every native call runs on this one thread, so start/stop/status never overlap and the main
    // thread never waits on a store scan or a server shutdown.
    private val worker: ScheduledExecutorService = Executors.newSingleThreadScheduledExecutor()
    private var statusTask: ScheduledFuture<*>? = null
    // Why the last start failed; kept in the status written when the service stops.
    private var lastError: String? = null

    override fun onBind(intent: Intent?): IBinder? = null

    override fun onCreate() {
        super.onCreate()
        createChannel()
    }

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        // After startForegroundService() the service must call startForeground() within a few
        // seconds whatever it does next, even when it is about to stop.
        goForeground(getString(R.string.status_starting))
        if (intent?.action == ACTION_STOP) {
            stopSelf()  // onDestroy stops the server
            return START_NOT_STICKY
        }
        val token = intent?.getStringExtra(EXTRA_TOKEN)
        val port = intent?.getIntExtra(EXTRA_PORT, 0) ?: 0
        worker.execute { startRunner(token, port) }
        return START_NOT_STICKY
    }

    override fun onDestroy() {
        statusTask?.cancel(false)
        // Bounded: the native shutdown gives calls in progress 5 s; services get 20 s before ANR.
        try {
            worker.submit { stopRunner() }.get(STOP_WAIT_S, TimeUnit.SECONDS)
        } catch (e: Exception) {
            Log.w(TAG, "stopping the runner: $e")
        }
        worker.shutdownNow()
        super.onDestroy()
    }

    // ---- on the worker thread ------------------------------------------------------------------

    private fun startRunner(token: String?, port: Int) {
        if (token.isNullOrBlank()) {
            fail("no session token: start with --es $EXTRA_TOKEN TOKEN")
            return
        }
        if (port !in 0..65535) {
            fail("port $port is not 0..65535")
            return
        }
        val store = File(filesDir, STORE_DIR)
        try {
            NativeRunner.stop()  // a second start replaces the session
            val bound = NativeRunner.start("127.0.0.1:$port", token, store.path, 0L, 0L)
            Log.i(TAG, "runner started on 127.0.0.1:$bound, store ${store.path}")
            lastError = null
        } catch (e: IllegalStateException) {
            fail(e.message ?: e.toString())
            return
        } catch (e: LinkageError) {
            // UnsatisfiedLinkError, or the object's initialiser failing on it.
            fail("cannot load libnpas_runner_jni.so: $e")
            return
        }
        publishStatus()
        statusTask?.cancel(false)
        statusTask = worker.scheduleWithFixedDelay(
            { publishStatus() }, STATUS_PERIOD_S, STATUS_PERIOD_S, TimeUnit.SECONDS,
        )
    }

    private fun stopRunner() {
        val status = JSONObject().put("running", false)
        try {
            NativeRunner.stop()
            // The native side keeps the last measurement past the stop: so does the file.
            JSONObject(NativeRunner.status()).optJSONObject(LAST_MEASUREMENT)?.let {
                status.put(LAST_MEASUREMENT, it)
            }
        } catch (e: LinkageError) {
            // Never loaded: nothing to stop.
        }
        lastError?.let { status.put("error", it) }
        RunnerStatus.write(filesDir, stamped(status).toString())
    }

    private fun publishStatus() {
        val status = stamped(JSONObject(NativeRunner.status()))
        RunnerStatus.write(filesDir, status.toString())
        if (status.optBoolean("running")) {
            var text = getString(
                R.string.status_listening,
                status.optString("address"),
                formatUptime(status.optDouble("uptime_s", 0.0)),
            )
            if (status.has("max_temp_c")) {
                text += " · %.1f °C".format(status.optDouble("max_temp_c"))
            }
            status.optJSONObject(LAST_MEASUREMENT)?.let { text += " · " + formatMeasurement(it) }
            notify(text)
        }
    }

    private fun fail(message: String) {
        // The host greps logcat for this line (adb logcat -s NpasRunner).
        Log.e(TAG, "NPAS-RUNNER FAILED $message")
        lastError = message
        val status = JSONObject().put("running", false).put("error", message)
        RunnerStatus.write(filesDir, stamped(status).toString())
        notify(getString(R.string.status_failed, message))
        stopSelf()
    }

    private fun stamped(status: JSONObject): JSONObject =
        status.put("updated_ms", System.currentTimeMillis()).put("pid", Process.myPid())

    // ---- notification --------------------------------------------------------------------------

    private fun createChannel() {
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O) {
            val channel = NotificationChannel(
                CHANNEL_ID, getString(R.string.channel_name), NotificationManager.IMPORTANCE_LOW,
            )
            channel.description = getString(R.string.channel_description)
            getSystemService(NotificationManager::class.java).createNotificationChannel(channel)
        }
    }

    private fun notification(text: String) =
        NotificationCompat.Builder(this, CHANNEL_ID)
            .setSmallIcon(android.R.drawable.stat_notify_sync)
            .setContentTitle(getString(R.string.notification_title))
            .setContentText(text)
            .setStyle(NotificationCompat.BigTextStyle().bigText(text))  // expanded: all of it
            .setOngoing(true)
            .setOnlyAlertOnce(true)
            .setForegroundServiceBehavior(NotificationCompat.FOREGROUND_SERVICE_IMMEDIATE)
            .setContentIntent(
                PendingIntent.getActivity(
                    this, 0, Intent(this, MainActivity::class.java),
                    PendingIntent.FLAG_IMMUTABLE,
                ),
            )
            .addAction(
                0, getString(R.string.action_stop),
                PendingIntent.getService(
                    this, 1, Intent(this, RunnerService::class.java).setAction(ACTION_STOP),
                    PendingIntent.FLAG_IMMUTABLE,
                ),
            )
            .build()

    private fun goForeground(text: String) {
        val n = notification(text)
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.UPSIDE_DOWN_CAKE) {
            startForeground(NOTIFICATION_ID, n, ServiceInfo.FOREGROUND_SERVICE_TYPE_SPECIAL_USE)
        } else {
            startForeground(NOTIFICATION_ID, n)
        }
    }

    private fun notify(text: String) {
        // Same id: replaces the foreground notification. Without POST_NOTIFICATIONS (13+) it is
        // not shown, and the service runs all the same.
        getSystemService(NotificationManager::class.java).notify(NOTIFICATION_ID, notification(text))
    }

    companion object {
        const val TAG = "NpasRunner"
        const val ACTION_STOP = "dev.npas.runner.action.STOP"
        const val EXTRA_TOKEN = "token"
        const val EXTRA_PORT = "port"
        const val STORE_DIR = "store"
        /** The status key of the last successful benchmark (runner_jni.cpp's status()). */
        const val LAST_MEASUREMENT = "last_measurement"
        private const val CHANNEL_ID = "runner"
        private const val NOTIFICATION_ID = 1
        private const val STATUS_PERIOD_S = 2L
        private const val STOP_WAIT_S = 8L

        fun formatUptime(seconds: Double): String {
            val s = seconds.toLong()
            return when {
                s < 60 -> "${s}s"
                s < 3600 -> "${s / 60}m ${s % 60}s"
                else -> "${s / 3600}h ${s / 60 % 60}m"
            }
        }

        /** A status's last_measurement in one line: "resnet18 CPU×4: median 20.6 ms (100 runs)". */
        fun formatMeasurement(m: JSONObject): String {
            val backend = m.optString("backend").uppercase(Locale.ROOT)
            val where = if (backend == "CPU") "CPU×${m.optInt("threads")}" else backend
            val medianMs = m.optLong("median_ns") / 1e6
            val median = if (medianMs >= 10.0) "%.1f".format(medianMs) else "%.2f".format(medianMs)
            return "${m.optString("model")} $where: median $median ms (${m.optLong("runs")} runs)"
        }

        /** The intent MainActivity uses; the host sends the same extras with `am`. */
        fun startIntent(context: Context, token: String, port: Int): Intent =
            Intent(context, RunnerService::class.java)
                .putExtra(EXTRA_TOKEN, token)
                .putExtra(EXTRA_PORT, port)
    }
}

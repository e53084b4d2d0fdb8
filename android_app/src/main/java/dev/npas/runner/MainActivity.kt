package dev.npas.runner

import android.Manifest
import android.content.Intent
import android.content.pm.PackageManager
import android.os.Build
import android.os.Bundle
import android.widget.Button
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import androidx.core.content.ContextCompat
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.lifecycleScope
import androidx.lifecycle.repeatOnLifecycle
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.json.JSONException
import org.json.JSONObject
import java.security.SecureRandom

/**
 * Shows whether the runner service runs, its address, uptime, the phone's temperature and the
 * last measurement, from the status file the service writes (it lives in another process).
 * Start/Stop are for using the phone by hand; the host drives the service over adb.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var statusView: TextView
    private lateinit var tokenView: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        statusView = findViewById(R.id.status)
        tokenView = findViewById(R.id.token)
        findViewById<Button>(R.id.start).setOnClickListener { startRunner() }
        findViewById<Button>(R.id.stop).setOnClickListener { stopRunner() }
        askForNotifications()

        lifecycleScope.launch {
            repeatOnLifecycle(Lifecycle.State.STARTED) {
                while (true) {
                    val text = withContext(Dispatchers.IO) { RunnerStatus.read(filesDir) }
                    statusView.text = describe(text, System.currentTimeMillis())
                    delay(POLL_MS)
                }
            }
        }
    }

    private fun startRunner() {
        // A fresh session token, shown so it can be given to npas-host by hand.
        val bytes = ByteArray(16).also { SecureRandom().nextBytes(it) }
        val token = bytes.joinToString("") { "%02x".format(it) }
        tokenView.text = getString(R.string.ui_token, token)
        ContextCompat.startForegroundService(this, RunnerService.startIntent(this, token, 0))
    }

    private fun stopRunner() {
        // Runs the service's stop path; starting it from a visible activity is always allowed.
        startService(
            Intent(this, RunnerService::class.java)
                .setAction(RunnerService.ACTION_STOP),
        )
    }

    private fun askForNotifications() {
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU &&
            ContextCompat.checkSelfPermission(this, Manifest.permission.POST_NOTIFICATIONS) !=
            PackageManager.PERMISSION_GRANTED
        ) {
            requestPermissions(arrayOf(Manifest.permission.POST_NOTIFICATIONS), 1)
        }
    }

    private fun describe(text: String?, nowMs: Long): String {
        if (text == null) return getString(R.string.ui_not_running)
        val status = try {
            JSONObject(text)
        } catch (e: JSONException) {
            return text
        }
        val ageS = ((nowMs - status.optLong("updated_ms", nowMs)) / 1000).toInt()
        val lines = mutableListOf<String>()
        if (status.optBoolean("running")) {
            if (ageS * 1000L > RunnerStatus.STALE_AFTER_MS) {
                lines += getString(R.string.ui_stale, ageS)
            }
            lines += getString(
                R.string.status_listening,
                status.optString("address"),
                RunnerService.formatUptime(status.optDouble("uptime_s", 0.0)),
            )
        } else {
            lines += getString(R.string.ui_not_running)
        }
        status.optJSONObject(RunnerService.LAST_MEASUREMENT)?.let {
            val agoS = (nowMs - it.optLong("finished_unix_ms", nowMs)) / 1000.0
            lines += getString(
                R.string.ui_last_measurement,
                RunnerService.formatMeasurement(it),
                RunnerService.formatUptime(maxOf(agoS, 0.0)),
            )
        }
        // Everything else the runner reported, as it reported it (never holds the token).
        lines += status.toString(2)
        return lines.joinToString("\n")
    }

    companion object {
        private const val POLL_MS = 1_000L
    }
}

package dev.npas.runner

import java.io.File

/**
 * The runner's status as a small JSON file in app-private storage: RunnerService (process
 * ":runner") writes it, MainActivity (the main process) reads it. A file rather than binding,
 * so a crashed runner process leaves its last word behind, and a debuggable build's status is
 * readable from the host: `adb shell run-as dev.npas.runner cat files/runner-status.json`.
 * It never holds the token.
 */
object RunnerStatus {
    const val FILE_NAME = "runner-status.json"
    /** After this long without an update the runner process is taken to be gone. */
    const val STALE_AFTER_MS = 6_000L

    fun file(filesDir: File): File = File(filesDir, FILE_NAME)

    /** Replaces the file atomically (write a temp file, rename), so readers never see half. */
    fun write(filesDir: File, json: String) {
        val target = file(filesDir)
        val temp = File(filesDir, "$FILE_NAME.tmp")
        temp.writeText(json)
        if (!temp.renameTo(target)) {
            temp.delete()
        }
    }

    fun read(filesDir: File): String? {
        val f = file(filesDir)
        return if (f.isFile) f.readText() else null
    }
}

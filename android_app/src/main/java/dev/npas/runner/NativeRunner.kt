package dev.npas.runner

/**
 * The native runner, libnpas_runner_jni.so (android_app/src/main/cpp/jni/runner_jni.cpp): one gRPC
 * server per process. Only RunnerService calls it, in the ":runner" process, from one thread.
 */
object NativeRunner {
    init {
        System.loadLibrary("npas_runner_jni")
    }

    /**
     * Starts the server on [listen] (a loopback HOST:PORT; port 0 picks a free one), storing
     * artifacts under [storeDir]; a limit <= 0 keeps the native default. Returns the bound port.
     * Throws IllegalStateException with the reason when already running or when it cannot start.
     */
    @JvmStatic
    external fun start(
        listen: String,
        token: String,
        storeDir: String,
        maxArtifactBytes: Long,
        maxStoreBytes: Long,
    ): Int

    /** Stops the server (calls in progress get a short grace period); no-op when stopped. */
    @JvmStatic
    external fun stop()

    /**
     * JSON: running, address, port, uptime_s, store_dir, cpu_freq_khz, max_temp_c, last_error,
     * last_measurement (the last successful benchmark in this process, or null: model, backend,
     * threads, runs, warmup, median_ns, min_ns, p90_ns, finished_unix_ms).
     */
    @JvmStatic
    external fun status(): String
}

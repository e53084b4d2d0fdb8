// Host stand-in for the app's Kotlin `object NativeRunner`: the same native methods, so a JVM on
// the development machine can load libnpas_runner_jni.so (built with -DNPAS_BUILD_JNI=ON) and
// exercise the JNI shell. Exits non-zero on the first unexpected result.
//   java -cp CLASSES dev.npas.runner.NativeRunner /abs/path/libnpas_runner_jni.so STORE_DIR
// With a third argument `serve` it starts the server for a client outside the JVM instead:
// prints `TOKEN t`, `STATUS json` and `PORT n`, waits for a line on stdin, prints
// `STATUS json`, stops, prints `STOPPED json` and exits.
package dev.npas.runner;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.security.SecureRandom;

public final class NativeRunner {
    public static native int start(String listen, String token, String storeDir,
                                   long maxArtifactBytes, long maxStoreBytes);
    public static native void stop();
    public static native String status();

    private static void check(boolean ok, String what) {
        if (!ok) {
            System.err.println("FAILED: " + what);
            System.exit(1);
        }
        System.out.println("ok: " + what);
    }

    private static String startError(String listen, String token, String store) {
        try {
            start(listen, token, store, 0, 0);
            return null;
        } catch (IllegalStateException e) {
            return e.getMessage();
        }
    }

    private static void serve(String store) throws IOException {
        byte[] bytes = new byte[16];
        new SecureRandom().nextBytes(bytes);
        StringBuilder token = new StringBuilder();
        for (byte b : bytes) token.append(String.format("%02x", b));
        int port = start("127.0.0.1:0", token.toString(), store, 0, 0);
        System.out.println("TOKEN " + token);
        System.out.println("STATUS " + status());
        System.out.println("PORT " + port);
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        in.readLine();  // the client is done (or gone: end of input)
        System.out.println("STATUS " + status());
        stop();
        System.out.println("STOPPED " + status());
        System.out.flush();
    }

    public static void main(String[] args) throws IOException {
        System.load(args[0]);
        String store = args[1];
        if (args.length > 2 && args[2].equals("serve")) {
            serve(store);
            return;
        }
        int port = start("127.0.0.1:0", "token", store, 0, 0);
        check(port > 0 && port < 65536, "start returns the bound port (" + port + ")");
        String s = status();
        check(s.contains("\"running\":true") && s.contains("\"port\":" + port)
              && s.contains("\"last_measurement\":null"), "status " + s);
        String again = startError("127.0.0.1:0", "token", store);
        check(again != null && again.contains("already listening"), "second start: " + again);
        stop();
        check(status().contains("\"running\":false"), "stopped: " + status());
        stop();  // a second stop does nothing
        String remote = startError("0.0.0.0:0", "token", store);
        check(remote != null && remote.contains("loopback"), "non-loopback refused: " + remote);
        String empty = startError("127.0.0.1:0", "", store);
        check(empty != null && empty.contains("token"), "empty token refused: " + empty);
        check(status().contains("\"last_error\""), "last error in status: " + status());
        int again2 = start("127.0.0.1:0", "token", store, 0, 0);
        check(again2 > 0, "restart after stop");
        stop();
        System.out.println("1 passed, 0 failed");
    }
}

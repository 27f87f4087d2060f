package io.cxcache.client;

import java.io.BufferedReader;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Processes a live test starts itself: a genesys-emulator and cxcache instances from
 * $CXCACHE_BIN_DIR (default &lt;repo&gt;/target/debug) on port 0, parsing their listening lines
 * as scripts/live-server.sh does, and a second JVM running {@link InvalidatorMain}.
 */
final class LiveProcesses {
  private LiveProcesses() {}

  static Path repoRoot() {
    return Path.of(System.getProperty("user.dir")).toAbsolutePath().resolve("../..").normalize();
  }

  static Path binDir() {
    String d = System.getenv("CXCACHE_BIN_DIR");
    return d != null && !d.isEmpty() ? Path.of(d) : repoRoot().resolve("target/debug");
  }

  /** A started process and the first line matching its pattern. */
  record Started(Process process, Matcher line) {
    void kill() throws InterruptedException {
      process.destroyForcibly(); // SIGKILL
      process.waitFor(10, TimeUnit.SECONDS);
    }

    void stop() throws InterruptedException {
      process.destroy(); // SIGTERM
      if (!process.waitFor(10, TimeUnit.SECONDS)) {
        kill();
      }
    }
  }

  static Started start(List<String> command, Pattern ready, Path log) throws IOException, InterruptedException {
    ProcessBuilder pb = new ProcessBuilder(command).redirectErrorStream(true);
    Process p = pb.start();
    CompletableFuture<Matcher> found = new CompletableFuture<>();
    Thread reader = new Thread(() -> {
      try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
        String l;
        while ((l = r.readLine()) != null) {
          Files.writeString(log, l + "\n", StandardCharsets.UTF_8, java.nio.file.StandardOpenOption.CREATE,
              java.nio.file.StandardOpenOption.APPEND);
          Matcher m = ready.matcher(l);
          if (!found.isDone() && m.find()) {
            found.complete(m);
          }
        }
      } catch (IOException e) {
        // process gone
      }
      found.completeExceptionally(new IOException(command.get(0) + " exited before its listening line; see " + log));
    }, "live-process-log");
    reader.setDaemon(true);
    reader.start();
    try {
      return new Started(p, found.get(30, TimeUnit.SECONDS));
    } catch (Exception e) {
      p.destroyForcibly();
      throw new IOException("could not start " + command + ": " + e.getMessage(), e);
    }
  }

  static Started emulator(Path logDir) throws IOException, InterruptedException {
    return start(List.of(binDir().resolve("genesys-emulator").toString(), "--addr", "127.0.0.1:0"),
        Pattern.compile("^genesys-emulator listening on (http://\\S+)"), logDir.resolve("emulator.log"));
  }

  /** A cxcache on port 0 in front of {@code emulatorUrl}; group 1 of the line is the gRPC address. */
  static Started cxcache(String emulatorUrl, Path log) throws IOException, InterruptedException {
    return start(List.of(binDir().resolve("cxcache").toString(), "--grpc-addr", "127.0.0.1:0", "--http-addr",
        "127.0.0.1:0", "--upstream-url", emulatorUrl, "--client-id", "cxcache-demo", "--client-secret",
        "demo-secret"), Pattern.compile("^cxcache listening grpc=(\\S+)"), log);
  }

  static int port(String addr) {
    return Integer.parseInt(addr.substring(addr.lastIndexOf(':') + 1));
  }

  /** A second JVM running {@link InvalidatorMain} against {@code addr}. */
  static Process invalidator(String addr) throws IOException {
    String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
    String cp = System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"));
    List<String> cmd = new ArrayList<>(List.of(java, "-cp", cp,
        InvalidatorMain.class.getName(), addr));
    return new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.INHERIT).start();
  }

  static Path tempDir(String name) throws IOException {
    Path d = Files.createTempDirectory("cxcache-java-" + name);
    d.toFile().deleteOnExit();
    return d;
  }

  static Duration since(long t0) {
    return Duration.ofNanos(System.nanoTime() - t0);
  }

  static File devNull() {
    return new File("/dev/null");
  }
}

package io.cxcache.client;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;

/**
 * The racing checker's other process: reads one cache key per line on stdin, invalidates it on
 * the cxcache at args[0], and answers "ok PURGED" (or "err MESSAGE") once the Invalidate returned.
 */
public final class InvalidatorMain {
  private InvalidatorMain() {}

  public static void main(String[] args) throws Exception {
    PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
    try (CacheClient c = CacheClient.builder().target(args[0]).defaultTimeout(Duration.ofSeconds(10)).build();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
      out.println("ready");
      String key;
      while ((key = in.readLine()) != null) {
        if (key.isEmpty()) {
          break;
        }
        try {
          out.println("ok " + c.invalidate(InvalidateQuery.create().keys(key).reason("java race checker")));
        } catch (CacheException e) {
          out.println("err " + e.getMessage().replace('\n', ' '));
        }
      }
    }
  }
}

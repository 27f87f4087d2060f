package io.cxcache.client;

import java.time.Duration;

final class Durations {
  private Durations() {}

  static Duration toJava(com.google.protobuf.Duration d) {
    return Duration.ofSeconds(d.getSeconds(), d.getNanos());
  }

  static com.google.protobuf.Duration toProto(Duration d) {
    if (d.isNegative()) {
      throw new IllegalArgumentException("durations must not be negative");
    }
    return com.google.protobuf.Duration.newBuilder()
        .setSeconds(d.getSeconds())
        .setNanos(d.getNano())
        .build();
  }
}

package io.cxcache.client;

import java.time.Instant;

/**
 * One Watch event.
 *
 * @param type what happened
 * @param key the key concerned; empty for a prefix/tag purge reported once, and for LAGGED
 * @param prefix the prefix purged, when the event is for one
 * @param tag the tag purged, when the event is for one
 * @param kind resource kind of the key, when known
 * @param reason the Invalidate reason, "webhook:&lt;event id&gt;", "stored", ...
 * @param time when it happened, or null when the server did not say
 * @param sequence per-stream sequence number starting at 1
 */
public record WatchEvent(
    EventType type, String key, String prefix, String tag, String kind, String reason,
    Instant time, long sequence) {

  static WatchEvent fromProto(io.cxcache.v1.WatchEvent e) {
    return new WatchEvent(
        EventType.fromProto(e.getType()),
        e.getKey(),
        e.getPrefix(),
        e.getTag(),
        e.getKind(),
        e.getReason(),
        e.hasTime() ? Instant.ofEpochSecond(e.getTime().getSeconds(), e.getTime().getNanos()) : null,
        e.getSequence());
  }
}

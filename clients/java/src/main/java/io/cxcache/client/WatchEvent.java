package io.cxcache.client;

import java.time.Instant;

/**
 * One Watch event.
 *
 * <p>When a watch reconnects after losing its stream (see {@link WatchQuery#reconnect(RetryPolicy)})
 * the client delivers one event it makes itself: type {@link EventType#LAGGED}, reason
 * {@link #RESUBSCRIBED}, sequence 0, empty key. Events may have been missed during the gap: treat
 * everything watched as changed and resync, exactly as for a server's LAGGED. Sequence numbers of
 * the new stream start again at 1.
 *
 * @param type what happened
 * @param key the key concerned; empty for a prefix/tag purge reported once, and for LAGGED
 * @param prefix the prefix purged, when the event is for one
 * @param tag the tag purged, when the event is for one
 * @param kind resource kind of the key, when known
 * @param reason the Invalidate reason, "webhook:&lt;event id&gt;", "stored", ...
 * @param time when it happened, or null when the server did not say
 * @param sequence per-stream sequence number starting at 1 (0 for the client's resubscribed event);
 *     for a watch that does not ask for heartbeats, the server's sequence less the heartbeats the
 *     client consumed on the stream, so the numbers stay gap-free as before heartbeats existed
 * @param position where the event stands in the server instance's event log (opaque; pass it to
 *     {@link WatchQuery#resumeAfter(String)} to resume after it); empty for the client's own event
 *     and from servers that do not send positions
 */
public record WatchEvent(
    EventType type, String key, String prefix, String tag, String kind, String reason,
    Instant time, long sequence, String position) {

  /** The event without a position (as before positions existed). */
  public WatchEvent(EventType type, String key, String prefix, String tag, String kind, String reason,
      Instant time, long sequence) {
    this(type, key, prefix, tag, kind, reason, time, sequence, "");
  }

  /** Reason of the LAGGED event the client delivers after it resubscribed. */
  public static final String RESUBSCRIBED = "cxcache-client:resubscribed";

  static WatchEvent resubscribed() {
    return new WatchEvent(EventType.LAGGED, "", "", "", "", RESUBSCRIBED, Instant.now(), 0);
  }

  /** True for LAGGED and RESET events, from the server or the client's resubscription: resync. */
  public boolean needsResync() {
    return type == EventType.LAGGED || type == EventType.RESET;
  }

  /** True for the event the client delivers after it reconnected a lost stream. */
  public boolean isResubscribed() {
    return type == EventType.LAGGED && RESUBSCRIBED.equals(reason) && sequence == 0;
  }

  static WatchEvent fromProto(io.cxcache.v1.WatchEvent e) {
    return new WatchEvent(
        EventType.fromProto(e.getType()),
        e.getKey(),
        e.getPrefix(),
        e.getTag(),
        e.getKind(),
        e.getReason(),
        e.hasTime() ? Instant.ofEpochSecond(e.getTime().getSeconds(), e.getTime().getNanos()) : null,
        e.getSequence(),
        e.getPosition());
  }
}

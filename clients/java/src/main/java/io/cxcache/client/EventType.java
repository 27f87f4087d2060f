package io.cxcache.client;

/** {@code cxcache.v1.WatchEvent.Type} without the prefix. */
public enum EventType {
  UNSPECIFIED,
  /** The entry was purged; the next Get fetches it again. */
  INVALIDATED,
  /** A new value was stored. */
  UPDATED,
  /** Events were dropped: treat everything watched as changed and resync. */
  LAGGED,
  /**
   * Nothing was missed up to the event's position (sent first on every stream, then at the
   * heartbeat interval, only while the server instance hears every purge). Delivered only to
   * watches that ask for them ({@link WatchQuery#heartbeats(java.time.Duration)}).
   */
  HEARTBEAT,
  /**
   * The stream could not resume after the position asked ({@link WatchQuery#resumeAfter(String)}):
   * treat everything watched as changed.
   */
  RESET;

  static EventType fromProto(io.cxcache.v1.WatchEvent.Type t) {
    switch (t) {
      case TYPE_INVALIDATED: return INVALIDATED;
      case TYPE_UPDATED: return UPDATED;
      case TYPE_LAGGED: return LAGGED;
      case TYPE_HEARTBEAT: return HEARTBEAT;
      case TYPE_RESET: return RESET;
      default: return UNSPECIFIED;
    }
  }
}

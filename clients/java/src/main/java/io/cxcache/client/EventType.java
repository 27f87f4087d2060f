package io.cxcache.client;

/** {@code cxcache.v1.WatchEvent.Type} without the prefix. */
public enum EventType {
  UNSPECIFIED,
  /** The entry was purged; the next Get fetches it again. */
  INVALIDATED,
  /** A new value was stored. */
  UPDATED,
  /** Events were dropped: treat everything watched as changed and resync. */
  LAGGED;

  static EventType fromProto(io.cxcache.v1.WatchEvent.Type t) {
    switch (t) {
      case TYPE_INVALIDATED: return INVALIDATED;
      case TYPE_UPDATED: return UPDATED;
      case TYPE_LAGGED: return LAGGED;
      default: return UNSPECIFIED;
    }
  }
}

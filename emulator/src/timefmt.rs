//! Timestamp formats the platform uses: RFC 3339 with millis (entities keep the
//! org's offset, per-response stamps are UTC) and HTTP dates for `Last-Modified`.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};

/// Offset every seeded entity is stamped with: deliberately not UTC, so a cache
/// that compares timestamps as strings or drops offsets is caught.
pub(crate) fn entity_offset() -> FixedOffset {
    FixedOffset::east_opt(2 * 3600).expect("+02:00 is a valid offset")
}

/// `2024-03-01T14:00:00.000+02:00`
pub(crate) fn rfc3339_offset(t: &DateTime<FixedOffset>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
}

/// `2024-03-01T12:00:00.000Z`
pub(crate) fn rfc3339_utc(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Now, in the entity offset.
pub(crate) fn now_entity() -> DateTime<FixedOffset> {
    Utc::now().with_timezone(&entity_offset())
}

const HTTP_DATE: &str = "%a, %d %b %Y %H:%M:%S GMT";

/// RFC 9110 IMF-fixdate, e.g. `Fri, 01 Mar 2024 12:00:00 GMT`.
pub(crate) fn http_date(t: &DateTime<FixedOffset>) -> String {
    t.with_timezone(&Utc).format(HTTP_DATE).to_string()
}

/// Parses an IMF-fixdate; `None` for anything else (such headers are ignored).
pub(crate) fn parse_http_date(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s.trim(), HTTP_DATE).ok().map(|n| Utc.from_utc_datetime(&n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_round_trips_to_the_second() {
        let t = DateTime::parse_from_rfc3339("2024-03-01T14:00:00.250+02:00").unwrap();
        let s = http_date(&t);
        assert_eq!(s, "Fri, 01 Mar 2024 12:00:00 GMT");
        assert_eq!(parse_http_date(&s).unwrap().timestamp(), t.timestamp());
        assert!(parse_http_date("yesterday").is_none());
    }

    #[test]
    fn offset_format_keeps_offset() {
        let t = DateTime::parse_from_rfc3339("2024-03-01T14:00:00+02:00").unwrap();
        assert_eq!(rfc3339_offset(&t), "2024-03-01T14:00:00.000+02:00");
    }
}

//! The caller's deadline, from the `grpc-timeout` header, so waits inside
//! the server (coalesced fetches, quota) end when the caller stops caring.

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::error::Error;

/// Parses `grpc-timeout` (`<digits><unit>`, unit one of H M S m u n). As
/// in tonic, a value outside the spec (more than 8 digits) is ignored, so
/// the largest deadline is about 11 000 years and never overflows an Instant.
pub fn from_metadata(metadata: &MetadataMap) -> Option<Duration> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// When to have answered by: a little before the caller's deadline, so the
/// caller gets our DEADLINE_EXCEEDED (or last error) rather than tonic's
/// CANCELLED. None: the caller set no deadline.
pub fn answer_by(metadata: &MetadataMap) -> Result<Option<Instant>, Error> {
    match from_metadata(metadata) {
        Some(limit) => {
            let limit = limit.saturating_sub((limit / 20).min(Duration::from_millis(20)));
            Instant::now()
                .checked_add(limit)
                .map(Some)
                .ok_or_else(|| Error::invalid("grpc-timeout", "deadline too far in the future"))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(from_metadata(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(from_metadata(&m), Some(Duration::from_secs(3)));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(from_metadata(&m), None);
        m.insert("grpc-timeout", "+5S".parse().unwrap());
        assert_eq!(from_metadata(&m), None);
    }

    #[test]
    fn out_of_spec_values_are_ignored_and_the_largest_fits_an_instant() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "999999999H".parse().unwrap());
        assert_eq!(from_metadata(&m), None, "9 digits");
        m.insert("grpc-timeout", "99999999H".parse().unwrap());
        let max = from_metadata(&m).unwrap();
        assert!(std::time::Instant::now().checked_add(max).is_some());
    }
}

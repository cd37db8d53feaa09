//! Conversions between `SystemTime`, unix seconds (what our JSON files and the manifest store) and the
//! `time` crate's dates (what rcgen writes into certificates), plus the one date format technicians read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// Whole seconds since 1970; a clock before 1970 reads as 0 rather than failing.
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The certificate date for `secs`. Certificates carry whole seconds, so working in seconds throughout
/// makes what we record equal to what the certificate says.
pub(crate) fn to_offset(secs: u64) -> OffsetDateTime {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// "2025-03-01 14:05 UTC": unambiguous for a technician reading a message, whatever the box's time zone.
pub(crate) fn format_utc(secs: u64) -> String {
    let t = to_offset(secs);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(1_740_837_900), "2025-03-01 14:05 UTC");
        assert_eq!(unix_secs(from_unix(42)), 42);
    }
}

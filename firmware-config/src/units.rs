//! Human units in the configuration file: sizes ("10GiB", "500MB", "none") and durations ("30s", "15m", "90d").
//!
//! Technicians write these by hand, so the parsers accept the usual spellings and say which ones they accept
//! when they refuse a value.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A number of bytes, written as `"10GiB"`, `"512 MiB"`, `"2GB"` or a plain integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A size limit that may be switched off with `"none"` (an admin's quota, for instance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit(pub Option<u64>);

/// A line rate in bits per second, written as `"2mbit"`, `"512kbit"`, `"10 Mbit/s"`; `"unlimited"` (or 0)
/// caps nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BitRate(pub u64);

/// A time-of-day window and the share of the line replication may use in it: `"07:30-18:00 30%"`. A window
/// whose end is before its start runs over midnight (`"18:00-07:30 100%"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight, local time.
    pub from: u16,
    pub to: u16,
    pub percent: u8,
}

/// A duration written as `"30s"`, `"15m"`, `"12h"`, `"90d"` or a plain number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1000),
    ("kb", 1000),
    ("kib", 1 << 10),
    ("m", 1000 * 1000),
    ("mb", 1000 * 1000),
    ("mib", 1 << 20),
    ("g", 1000 * 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("gib", 1 << 30),
    ("t", 1000 * 1000 * 1000 * 1000),
    ("tb", 1000 * 1000 * 1000 * 1000),
    ("tib", 1 << 40),
];

const SIZE_HELP: &str = "a size such as \"10GiB\", \"500MiB\", \"2GB\" or a number of bytes";
const SPAN_HELP: &str = "a duration such as \"30s\", \"15m\", \"12h\", \"90d\" or a number of seconds";

/// Splits "12.5 GiB" into (12.5, "gib").
fn split_number(text: &str) -> Option<(f64, String)> {
    let text = text.trim();
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let number: f64 = text[..end].parse().ok()?;
    Some((number, text[end..].trim().to_ascii_lowercase()))
}

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let bad = || format!("« {text} » is not {SIZE_HELP}");
        let (number, unit) = split_number(text).ok_or_else(bad)?;
        let factor = SIZE_UNITS.iter().find(|(name, _)| *name == unit).map(|(_, f)| *f).ok_or_else(bad)?;
        let bytes = number * factor as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, factor) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}", self.0)
    }
}

const RATE_HELP: &str = "a rate such as \"2mbit\", \"512kbit\", \"10 Mbit/s\" or \"unlimited\"";
const WINDOW_HELP: &str = "a window such as \"07:30-18:00 30%\"";

impl BitRate {
    pub fn parse(text: &str) -> Result<BitRate, String> {
        let bad = || format!("« {text} » is not {RATE_HELP}");
        let lower = text.trim().to_ascii_lowercase();
        if lower == "unlimited" || lower == "none" {
            return Ok(BitRate(0));
        }
        let (number, unit) = split_number(&lower).ok_or_else(bad)?;
        let unit = unit.trim_end_matches("/s").trim_end_matches("ps").trim();
        let factor = match unit {
            "" | "bit" | "b" => 1.0,
            "k" | "kbit" | "kb" => 1e3,
            "m" | "mbit" | "mb" => 1e6,
            "g" | "gbit" | "gb" => 1e9,
            _ => return Err(bad()),
        };
        let bits = number * factor;
        if !bits.is_finite() || !(0.0..=1e12).contains(&bits) {
            return Err(bad());
        }
        Ok(BitRate(bits as u64))
    }
}

impl fmt::Display for BitRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("unlimited"),
            b if b % 1_000_000 == 0 => write!(f, "{}mbit", b / 1_000_000),
            b if b % 1000 == 0 => write!(f, "{}kbit", b / 1000),
            b => write!(f, "{b}bit"),
        }
    }
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || format!("« {text} » is not {WINDOW_HELP}");
        let (times, share) = text.trim().split_once(' ').ok_or_else(bad)?;
        let (from, to) = times.split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let percent: u8 = share.trim().trim_end_matches('%').trim().parse().map_err(|_| bad())?;
        if percent > 100 {
            return Err(bad());
        }
        Ok(Window { from: minutes(from).ok_or_else(bad)?, to: minutes(to).ok_or_else(bad)?, percent })
    }

    /// Whether `minute` (after midnight) falls in the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.from <= self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02} {}%",
            self.from / 60,
            self.from % 60,
            self.to / 60,
            self.to % 60,
            self.percent
        )
    }
}

impl<'de> Deserialize<'de> for BitRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor { parse: BitRate::parse, expecting: RATE_HELP })
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor { parse: Window::parse, expecting: WINDOW_HELP })
    }
}

impl Serialize for BitRate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Span {
    pub fn parse(text: &str) -> Result<Span, String> {
        let bad = || format!("« {text} » is not {SPAN_HELP}");
        let (number, unit) = split_number(text).ok_or_else(bad)?;
        let factor = match unit.as_str() {
            "" | "s" | "sec" => 1.0,
            "ms" => 0.001,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        let secs = number * factor;
        if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
            return Err(bad());
        }
        Ok(Span(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let secs = self.0.as_secs();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if secs != 0 && secs.is_multiple_of(86400) {
            write!(f, "{}d", secs / 86400)
        } else if secs != 0 && secs.is_multiple_of(3600) {
            write!(f, "{}h", secs / 3600)
        } else if secs != 0 && secs.is_multiple_of(60) {
            write!(f, "{}m", secs / 60)
        } else {
            write!(f, "{secs}s")
        }
    }
}

/// Accepts a string or an integer and hands it to `parse`, so that both `quota = "1GiB"` and `quota = 1024` read.
struct UnitVisitor<T> {
    parse: fn(&str) -> Result<T, String>,
    expecting: &'static str,
}

impl<T> Visitor<'_> for UnitVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor { parse: ByteSize::parse, expecting: SIZE_HELP })
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor { parse: Span::parse, expecting: SPAN_HELP })
    }
}

impl Limit {
    fn parse(text: &str) -> Result<Limit, String> {
        if text.trim().eq_ignore_ascii_case("none") {
            Ok(Limit(None))
        } else {
            ByteSize::parse(text).map(|b| Limit(Some(b.0))).map_err(|e| format!("{e}, or \"none\""))
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor { parse: Limit::parse, expecting: "a size or \"none\"" })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            None => s.serialize_str("none"),
            Some(b) => ByteSize(b).serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_the_spellings_technicians_use() {
        assert_eq!(ByteSize::parse("10GiB").map(|b| b.0), Ok(10 << 30));
        assert_eq!(ByteSize::parse("512 MiB").map(|b| b.0), Ok(512 << 20));
        assert_eq!(ByteSize::parse("2GB").map(|b| b.0), Ok(2_000_000_000));
        assert_eq!(ByteSize::parse("1.5k").map(|b| b.0), Ok(1500));
        assert_eq!(ByteSize::parse("4096").map(|b| b.0), Ok(4096));
        assert!(ByteSize::parse("ten gigs").is_err());
        assert!(ByteSize::parse("10 GiBs").is_err());
        assert_eq!(Limit::parse("none"), Ok(Limit(None)));
        assert_eq!(ByteSize(10 << 30).to_string(), "10GiB");
    }

    #[test]
    fn rates_and_windows() {
        assert_eq!(BitRate::parse("2mbit"), Ok(BitRate(2_000_000)));
        assert_eq!(BitRate::parse("512 kbit"), Ok(BitRate(512_000)));
        assert_eq!(BitRate::parse("10 Mbit/s"), Ok(BitRate(10_000_000)));
        assert_eq!(BitRate::parse("unlimited"), Ok(BitRate(0)));
        assert!(BitRate::parse("fast").is_err());
        let day = Window::parse("07:30-18:00 30%").expect("window");
        assert!(day.contains(7 * 60 + 30) && day.contains(17 * 60 + 59) && !day.contains(18 * 60));
        let night = Window::parse("18:00-07:30 100%").expect("window");
        assert!(night.contains(23 * 60) && night.contains(60) && !night.contains(12 * 60));
        assert_eq!(night.to_string(), "18:00-07:30 100%");
        assert!(Window::parse("7h-18h 30%").is_err() && Window::parse("07:30-18:00 130%").is_err());
    }

    #[test]
    fn durations_round_trip() {
        assert_eq!(Span::parse("15m").map(|s| s.0), Ok(Duration::from_secs(900)));
        assert_eq!(Span::parse("90d").map(|s| s.0), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(Span::parse("250ms").map(|s| s.0), Ok(Duration::from_millis(250)));
        assert!(Span::parse("soon").is_err());
        for text in ["30s", "15m", "12h", "90d", "250ms"] {
            assert_eq!(Span::parse(text).map(|s| s.to_string()), Ok(text.to_string()));
        }
    }
}

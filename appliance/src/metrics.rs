//! Counters for `/metrics`, in Prometheus' text format.
//!
//! A handful of atomics rendered by hand: the format is a few lines of text and the box should not carry a
//! metrics framework for it.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Metrics {
    pub requests_2xx: Counter,
    pub requests_3xx: Counter,
    pub requests_4xx: Counter,
    pub requests_5xx: Counter,
    pub logins_ok: Counter,
    pub logins_failed: Counter,
    pub logins_throttled: Counter,
    pub upload_bytes: Counter,
    pub uploads: Counter,
    pub download_bytes: Counter,
}

/// Figures read from the store when /metrics is asked for.
pub struct Gauges {
    pub users: u64,
    pub sessions: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
}

impl Metrics {
    pub fn record_status(&self, status: u16) {
        match status {
            200..=299 => self.requests_2xx.inc(),
            300..=399 => self.requests_3xx.inc(),
            400..=499 => self.requests_4xx.inc(),
            _ => self.requests_5xx.inc(),
        }
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "relais_http_requests_total",
            "counter",
            "HTTP requests answered, by status class.",
            &[
                ("{class=\"2xx\"}", self.requests_2xx.get()),
                ("{class=\"3xx\"}", self.requests_3xx.get()),
                ("{class=\"4xx\"}", self.requests_4xx.get()),
                ("{class=\"5xx\"}", self.requests_5xx.get()),
            ],
        );
        metric(
            "relais_logins_total",
            "counter",
            "Login attempts, by outcome.",
            &[
                ("{outcome=\"ok\"}", self.logins_ok.get()),
                ("{outcome=\"failed\"}", self.logins_failed.get()),
                ("{outcome=\"throttled\"}", self.logins_throttled.get()),
            ],
        );
        metric("relais_uploads_total", "counter", "Files written.", &[("", self.uploads.get())]);
        metric(
            "relais_upload_bytes_total",
            "counter",
            "Bytes received in files written.",
            &[("", self.upload_bytes.get())],
        );
        metric("relais_download_bytes_total", "counter", "File bytes sent.", &[("", self.download_bytes.get())]);
        metric("relais_users", "gauge", "Accounts.", &[("", gauges.users)]);
        metric("relais_sessions", "gauge", "Open portal sessions.", &[("", gauges.sessions)]);
        metric("relais_blobs", "gauge", "Distinct file contents stored.", &[("", gauges.blobs)]);
        metric("relais_blob_bytes", "gauge", "Bytes of distinct file contents on disk.", &[("", gauges.blob_bytes)]);
        out
    }
}

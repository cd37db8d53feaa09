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
    /// Replication: chunks and their bytes received from / sent to the peer, changes applied each way.
    pub sync_chunks_in: Counter,
    pub sync_chunk_bytes_in: Counter,
    pub sync_chunks_out: Counter,
    pub sync_chunk_bytes_out: Counter,
    pub sync_changes_in: Counter,
    pub sync_changes_out: Counter,
    pub sync_conflicts: Counter,
    pub sync_sessions_ok: Counter,
    pub sync_sessions_failed: Counter,
}

/// Figures read from the store when /metrics is asked for.
pub struct Gauges {
    pub users: u64,
    pub sessions: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// The box's replication, when it has a gateway.
    pub replication: Option<ReplicationGauges>,
    /// The LAN cache, on a box.
    pub cache: Option<CacheGauges>,
}

pub struct CacheGauges {
    /// Requests by outcome (`hit`, `miss`, …), in `cache::Outcome::ALL` order.
    pub requests: Vec<(&'static str, u64)>,
    pub served_bytes: u64,
    pub upstream_bytes: u64,
    pub entries: u64,
    pub bytes: u64,
    pub budget: u64,
}

pub struct ReplicationGauges {
    pub last_success: u64,
    pub up_changes: u64,
    pub up_bytes: u64,
    pub down_changes: u64,
    pub down_bytes: u64,
    /// Bytes the uplink scheduler let through, each way, since start.
    pub line_up_bytes: u64,
    pub line_down_bytes: u64,
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
        let dirs = |a: u64, b: u64| [("{direction=\"in\"}", a), ("{direction=\"out\"}", b)];
        metric(
            "relais_sync_chunks_total",
            "counter",
            "Content chunks received from and sent to the replication peer.",
            &dirs(self.sync_chunks_in.get(), self.sync_chunks_out.get()),
        );
        metric(
            "relais_sync_chunk_bytes_total",
            "counter",
            "Bytes of content chunks received from and sent to the replication peer.",
            &dirs(self.sync_chunk_bytes_in.get(), self.sync_chunk_bytes_out.get()),
        );
        metric(
            "relais_sync_changes_total",
            "counter",
            "Changes applied from the peer (in) and accepted by it (out).",
            &dirs(self.sync_changes_in.get(), self.sync_changes_out.get()),
        );
        metric("relais_sync_conflicts_total", "counter", "Conflicts resolved.", &[("", self.sync_conflicts.get())]);
        metric(
            "relais_sync_sessions_total",
            "counter",
            "Replication sessions, by outcome.",
            &[
                ("{outcome=\"ok\"}", self.sync_sessions_ok.get()),
                ("{outcome=\"failed\"}", self.sync_sessions_failed.get()),
            ],
        );
        if let Some(c) = &gauges.cache {
            let labels: Vec<String> = c.requests.iter().map(|(name, _)| format!("{{result=\"{name}\"}}")).collect();
            let samples: Vec<(&str, u64)> =
                labels.iter().zip(&c.requests).map(|(label, (_, n))| (label.as_str(), *n)).collect();
            metric("relais_cache_requests_total", "counter", "Cache requests, by how they were answered.", &samples);
            metric(
                "relais_cache_served_bytes_total",
                "counter",
                "Body bytes the cache sent to clients.",
                &[("", c.served_bytes)],
            );
            metric(
                "relais_cache_upstream_bytes_total",
                "counter",
                "Body bytes the cache received from upstreams.",
                &[("", c.upstream_bytes)],
            );
            metric(
                "relais_cache_saved_bytes_total",
                "counter",
                "Bytes clients got from the cache that did not cross the uplink.",
                &[("", c.served_bytes.saturating_sub(c.upstream_bytes))],
            );
            metric("relais_cache_entries", "gauge", "Objects in the cache.", &[("", c.entries)]);
            metric("relais_cache_bytes", "gauge", "Bytes the cache holds on disk.", &[("", c.bytes)]);
            metric("relais_cache_budget_bytes", "gauge", "The cache's disk budget.", &[("", c.budget)]);
        }
        if let Some(r) = &gauges.replication {
            metric(
                "relais_sync_last_success_seconds",
                "gauge",
                "Unix time of the last successful session.",
                &[("", r.last_success)],
            );
            metric(
                "relais_sync_backlog_changes",
                "gauge",
                "Changes waiting to cross, each way.",
                &[("{direction=\"up\"}", r.up_changes), ("{direction=\"down\"}", r.down_changes)],
            );
            metric(
                "relais_sync_backlog_bytes",
                "gauge",
                "Content bytes waiting to cross, each way.",
                &[("{direction=\"up\"}", r.up_bytes), ("{direction=\"down\"}", r.down_bytes)],
            );
            metric(
                "relais_uplink_bytes_total",
                "counter",
                "Bytes the uplink scheduler let through, each way.",
                &[("{direction=\"up\"}", r.line_up_bytes), ("{direction=\"down\"}", r.line_down_bytes)],
            );
        }
        out
    }
}

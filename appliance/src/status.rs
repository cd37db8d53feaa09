//! What a technician (and `GET /api/admin/status`) needs to know about a box or a gateway, in one place:
//! the same facts whether the daemon answers through its control socket or the folder is read while stopped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::enroll::{identity, EnrollStatus, Identity};
use crate::store::Store;

/// The status document; field names as in DESIGN.md's `GET /api/admin/status`, with a few more for the
/// technician's screen. Times are "YYYY-MM-DD HH:MM UTC".
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// "box" or "region".
    pub role: String,
    pub uai: Option<String>,
    /// The school's name (or the region's), from the configuration.
    pub name: String,
    pub version: String,
    pub enrolled: bool,
    pub certificate: Certificate,
    /// "online" when the last exchange with the gateway worked, else "offline" (a gateway is always online).
    pub uplink: String,
    /// The gateway the box talks to; empty on a standalone box or a gateway.
    pub gateway: String,
    /// Last successful exchange with the gateway.
    pub last_contact: Option<String>,
    /// The last failure talking to the gateway, cleared by a success.
    pub last_error: Option<String>,
    pub replication: Replication,
    pub disk: Disk,
    pub replica_id: String,
    pub accounts: u64,
    /// Whether the daemon answered (false: read from the stopped data folder).
    pub running: bool,
    /// The LAN cache's figures, when the daemon runs one.
    #[serde(default)]
    pub cache: Option<crate::cache::Summary>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Certificate {
    /// The box's client certificate (a box) or the gateway's server certificate (a gateway).
    pub not_after: Option<String>,
    /// Seconds left before `not_after` (negative once expired).
    pub seconds_left: Option<i64>,
    /// The LAN HTTPS certificate of a box.
    pub lan_not_after: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Replication {
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub backlog: Backlog,
    /// Bytes per second each way during the last session that moved contents.
    pub rate: Rate,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rate {
    pub up: u64,
    pub down: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Backlog {
    pub up_changes: u64,
    pub up_bytes: u64,
    pub down_changes: u64,
    pub down_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Disk {
    /// Bytes of file contents stored (each distinct content once).
    pub used: u64,
    /// Bytes free for the daemon on the data folder's filesystem.
    pub free: u64,
}

/// Where the facts come from.
pub struct Sources<'a> {
    pub config: &'a firmware_config::Config,
    pub store: &'a Store,
    /// The gateway's certificate authority, when this is the gateway.
    pub region: Option<&'a crate::region::Gateway>,
    /// The enrollment worker's view, when the daemon runs one.
    pub enroll: Option<EnrollStatus>,
    /// The replication worker's view, when the daemon runs one.
    pub sync: Option<crate::sync::worker::SyncStatus>,
    /// The LAN cache's figures, when the daemon runs one.
    pub cache: Option<crate::cache::Summary>,
    pub running: bool,
}

/// Gathers the status. Reads a few small files and lists the blob folders: cheap enough for an admin page.
pub fn gather(sources: &Sources<'_>) -> Status {
    let config = sources.config;
    let data = &config.storage.data;
    let now = identity::unix_now();
    let time = |secs: u64| identity::format_utc(secs);
    let left = |not_after: u64| i64::try_from(not_after).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(0);
    let mut status = Status {
        role: if sources.region.is_some() { "region" } else { "box" }.into(),
        uai: None,
        name: config.identity.name.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        enrolled: false,
        certificate: Certificate::default(),
        uplink: "offline".into(),
        gateway: config.uplink.gateway.trim().to_owned(),
        last_contact: None,
        last_error: None,
        replication: Replication::default(),
        disk: disk(sources.store, data),
        replica_id: sources.store.replica_id().unwrap_or_default(),
        accounts: sources.store.user_count() as u64,
        running: sources.running,
        cache: sources.cache.clone(),
    };
    if let Some(region) = sources.region {
        status.uplink = "online".into();
        status.enrolled = true;
        let gateway_cert = region.ca.gateway_cert_chain_pem().ok();
        if let Some(info) = gateway_cert.and_then(|pem| identity::CertInfo::from_chain_pem(pem.as_bytes()).ok()) {
            status.certificate.not_after = Some(time(info.not_after));
            status.certificate.seconds_left = Some(left(info.not_after));
        }
        return status;
    }
    match Identity::load(data) {
        Ok(Some(id)) => {
            status.uai = Some(id.uai.clone());
            status.enrolled = id.is_enrolled();
            if let Some(not_after) = id.not_after() {
                status.certificate.not_after = Some(time(not_after));
                status.certificate.seconds_left = Some(left(not_after));
            }
            status.certificate.lan_not_after = id.lan_cert.as_ref().map(|c| time(c.not_after));
        }
        Ok(None) => status.uai = Some(config.identity.uai.clone()).filter(|u| !u.is_empty()),
        Err(e) => status.last_error = Some(e.to_string()),
    }
    if let Some(enroll) = &sources.enroll {
        status.last_contact = enroll.last_success.map(time);
        if enroll.last_error.is_some() {
            status.last_error.clone_from(&enroll.last_error);
        } else if enroll.last_success.is_some() {
            status.uplink = "online".into();
        }
    }
    if let Some(sync) = &sources.sync {
        let r = &mut status.replication;
        r.last_success = sync.last_success.map(time);
        r.last_error.clone_from(&sync.last_error);
        // What the region has not yet seen of this box, counted now (bounded: a figure, not an inventory).
        if let Ok(up) = sources.store.changes_since("", &[], &sync.region_seen, 100_000) {
            r.backlog.up_changes = up.len() as u64;
            r.backlog.up_bytes = up.iter().filter_map(|c| c.record.content()).map(|(_, size)| size).sum();
        }
        r.backlog.down_changes = sync.down_changes;
        r.backlog.down_bytes = sync.down_bytes;
        r.rate = Rate { up: sync.rate_up, down: sync.rate_down };
        // The last exchange decides: replication talks to the gateway far more often than enrollment.
        let last_sync = sync.last_success.max(sources.enroll.as_ref().and_then(|e| e.last_success));
        if let Some(at) = last_sync {
            status.last_contact = Some(time(at));
        }
        status.uplink =
            if sync.last_error.is_none() && sync.last_success.is_some() { "online" } else { "offline" }.into();
        if sync.last_error.is_some() {
            status.last_error.clone_from(&sync.last_error);
        }
    }
    // The cache talks to the outside on its own: when its upstreams stopped answering, so did the uplink.
    if sources.cache.as_ref().is_some_and(|c| c.upstream_down) {
        status.uplink = "offline".into();
        if status.last_error.is_none() {
            status.last_error = Some("the cache's upstreams do not answer".into());
        }
    }
    status
}

fn disk(store: &Store, data: &Path) -> Disk {
    let (_, used) = store.blob_disk_usage();
    let free = crate::backup::free_bytes(data).unwrap_or(0);
    Disk { used, free }
}

/// The technician's screen: one fact per line, in the order they look for them.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let who = match (&s.uai, s.name.is_empty()) {
        (Some(uai), false) => format!("{uai} ({})", s.name),
        (Some(uai), true) => uai.clone(),
        (None, _) if s.role == "region" => "regional gateway".into(),
        (None, _) => "not provisioned (standalone box)".into(),
    };
    let _ = writeln!(out, "relais {} — {} {who}", s.version, s.role);
    let _ = writeln!(out, "  daemon        {}", if s.running { "running" } else { "stopped" });
    let cert = match (&s.certificate.not_after, s.certificate.seconds_left) {
        (Some(at), Some(left)) if left > 0 => format!("valid until {at} ({} days left)", left / 86_400),
        (Some(at), _) => format!("EXPIRED on {at}: the box enrolls again at its next contact, or apply a new bundle"),
        (None, _) => "none".into(),
    };
    if s.role == "region" {
        let _ = writeln!(out, "  certificate   {cert}");
    } else {
        let enrolled = if s.enrolled {
            "enrolled".to_owned()
        } else if s.uai.is_some() && !s.gateway.is_empty() {
            "not yet enrolled (waiting for the gateway)".to_owned()
        } else {
            "not enrolled".to_owned()
        };
        let _ = writeln!(out, "  enrollment    {enrolled}");
        let _ = writeln!(out, "  certificate   {cert}");
        if let Some(lan) = &s.certificate.lan_not_after {
            let _ = writeln!(out, "  LAN HTTPS     certificate valid until {lan}");
        }
        let gateway = if s.gateway.is_empty() { "none" } else { s.gateway.as_str() };
        let contact = s.last_contact.as_deref().unwrap_or("never");
        let _ = writeln!(out, "  uplink        {} — gateway {gateway}, last contact {contact}", s.uplink);
        if let Some(error) = &s.last_error {
            let _ = writeln!(out, "  last error    {error}");
        }
        let b = &s.replication.backlog;
        let _ = writeln!(
            out,
            "  replication   backlog {} changes / {} up, {} changes / {} down; last success {}; rate {}/s up, {}/s down",
            b.up_changes,
            bytes(b.up_bytes),
            b.down_changes,
            bytes(b.down_bytes),
            s.replication.last_success.as_deref().unwrap_or("never"),
            bytes(s.replication.rate.up),
            bytes(s.replication.rate.down),
        );
        if let Some(error) = &s.replication.last_error {
            let _ = writeln!(out, "  sync error    {error}");
        }
    }
    if let Some(c) = &s.cache {
        let _ = writeln!(
            out,
            "  cache         {} objects, {} of {}; hits {:.0} % of requests, {:.0} % of bytes; {} saved on the uplink",
            c.entries,
            bytes(c.bytes),
            bytes(c.budget),
            c.request_hit_ratio * 100.0,
            c.byte_hit_ratio * 100.0,
            bytes(c.saved_bytes),
        );
    }
    let _ = writeln!(out, "  disk          {} of contents, {} free", bytes(s.disk.used), bytes(s.disk.free));
    let _ = writeln!(out, "  accounts      {}", s.accounts);
    let _ = writeln!(out, "  replica id    {}", s.replica_id);
    out
}

/// 1536 → "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_file_manager() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}

//! The box's replication worker: a session soon after every local change (a couple of seconds, to batch a
//! class's uploads), at least every `[uplink] sync_interval` otherwise, and with a growing pause while the
//! gateway cannot be reached. Nothing on the LAN waits for it: uploads are acknowledged once durable on the
//! box, whatever the link does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::enroll::{identity, Identity};
use crate::sync::client::{Client, SyncError};
use crate::sync::session;
use crate::uplink::Scheduler;

/// Pause after a local change before the session starts, so that 30 hand-ins go in one session.
const SETTLE: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Longest life of a client across sessions: the gateway checks revocation when a connection is made, so a
/// revoked box busy enough never to idle is still turned away within this.
const REUSE_AGE: Duration = Duration::from_secs(600);

/// What the admin page, `relais status` and `/metrics` show of replication. Times are Unix seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncStatus {
    pub last_success: Option<u64>,
    pub last_error: Option<String>,
    pub last_attempt: Option<u64>,
    pub sessions: u64,
    pub failures: u32,
    /// Changes (and content bytes) waiting at the region for the box, as of the last session's start.
    pub down_changes: u64,
    pub down_bytes: u64,
    /// The region's high-water marks after the last push: what it has of this box.
    #[serde(skip)]
    pub region_seen: BTreeMap<String, u64>,
    pub changes_up: u64,
    pub changes_down: u64,
    pub conflicts: u64,
    pub chunks_up: u64,
    pub chunks_down: u64,
    /// Bytes per second through the uplink during the last session that moved data, each way.
    pub rate_up: u64,
    pub rate_down: u64,
}

#[derive(Clone)]
pub struct SyncHandle {
    status: Arc<Mutex<SyncStatus>>,
    pub scheduler: Arc<Scheduler>,
}

impl SyncHandle {
    pub fn status(&self) -> SyncStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Starts the worker on a box that has a gateway; `None` on a standalone box.
pub fn spawn(app: &Arc<App>, mut stop: watch::Receiver<bool>) -> Option<(SyncHandle, JoinHandle<()>)> {
    let gateway = app.config.uplink.gateway.trim().to_owned();
    if gateway.is_empty() {
        return None;
    }
    let scheduler = app.uplink.clone();
    let handle = SyncHandle { status: Arc::new(Mutex::new(SyncStatus::default())), scheduler: scheduler.clone() };
    let status = handle.status.clone();
    let app = app.clone();
    let task = tokio::spawn(async move {
        let interval = app.config.uplink.sync_interval.0;
        let connections = app.config.uplink.connections as usize;
        let mut pause = Duration::ZERO;
        let mut cached = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = app.store.changed().notified() => {
                    tokio::select! {
                        _ = tokio::time::sleep(SETTLE) => {}
                        _ = stop.changed() => return,
                    }
                }
                _ = stop.changed() => return,
            }
            let client = match client(&app, &gateway, connections, &scheduler, &mut cached) {
                Ok(client) => client,
                Err(SyncError::NotEnrolled) => {
                    pause = interval;
                    continue;
                }
                Err(e) => {
                    record_failure(&status, &e, &app);
                    pause = interval;
                    continue;
                }
            };
            set(&status, |s| s.last_attempt = Some(identity::unix_now()));
            let (started, before) = (std::time::Instant::now(), scheduler.granted());
            let outcome = tokio::select! {
                outcome = session::run(&app, client, connections) => outcome,
                _ = stop.changed() => return,
            };
            match outcome {
                Ok(report) => {
                    app.metrics.sync_sessions_ok.inc();
                    if report.pushed + report.pulled > 0 {
                        log::info!(
                            "{} replication: {} changes up, {} down, {} conflicts, {} chunks up, {} down",
                            app.config.identity.uai,
                            report.pushed,
                            report.pulled,
                            report.conflicts,
                            report.chunks_up,
                            report.chunks_down
                        );
                    }
                    let after = scheduler.granted();
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    let moved = (after.0 - before.0, after.1 - before.1);
                    set(&status, |s| {
                        // Hello and empty batches alone say nothing of the line: keep the last real figure.
                        if report.chunks_up + report.chunks_down > 0 {
                            s.rate_up = (moved.0 as f64 / secs) as u64;
                            s.rate_down = (moved.1 as f64 / secs) as u64;
                        }
                        s.last_success = Some(identity::unix_now());
                        s.last_error = None;
                        s.failures = 0;
                        s.sessions += 1;
                        s.down_changes = report.backlog_changes.saturating_sub(report.pulled as u64);
                        s.down_bytes = if s.down_changes == 0 { 0 } else { report.backlog_bytes };
                        s.region_seen = report.region_seen;
                        s.changes_up += report.pushed as u64;
                        s.changes_down += report.pulled as u64;
                        s.conflicts += report.conflicts as u64;
                        s.chunks_up += report.chunks_up as u64;
                        s.chunks_down += report.chunks_down as u64;
                    });
                    pause = interval;
                }
                Err(e) => {
                    // Connections that lived through the failure may be dead (a cut line): start afresh.
                    cached = None;
                    app.metrics.sync_sessions_failed.inc();
                    let failures = record_failure(&status, &e, &app);
                    pause = backoff(failures).min(interval.max(FIRST_BACKOFF));
                    if e.is_refusal() {
                        pause = interval;
                    }
                }
            }
        }
    });
    Some((handle, task))
}

fn set(status: &Mutex<SyncStatus>, f: impl FnOnce(&mut SyncStatus)) {
    f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

fn record_failure(status: &Mutex<SyncStatus>, e: &SyncError, app: &App) -> u32 {
    log::warn!("{} replication failed: {e}", app.config.identity.uai);
    let mut failures = 0;
    set(status, |s| {
        s.failures += 1;
        failures = s.failures;
        s.last_error = Some(e.to_string());
    });
    failures
}

/// 5 s doubling to 5 min.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(10)).min(MAX_BACKOFF)
}

/// The client of the last session, while the box's certificate and the regional root are the same ones
/// (checked at every session, so a renewal is picked up at the next) and it is younger than [`REUSE_AGE`]:
/// its recently used connections and its TLS sessions carry over, so sessions in quick succession (a class
/// handing in) do not each begin with new handshakes, two round trips and a few kilobytes on a 200 ms line.
fn client(
    app: &App,
    gateway: &str,
    connections: usize,
    scheduler: &Arc<Scheduler>,
    cached: &mut Option<Cached>,
) -> Result<Arc<Client>, SyncError> {
    let data = &app.config.storage.data;
    let id = Identity::load(data).map_err(|e| SyncError::Identity(e.to_string()))?.ok_or(SyncError::NotEnrolled)?;
    if !id.is_enrolled() {
        return Err(SyncError::NotEnrolled);
    }
    let chain = id.box_chain_pem().map_err(|e| SyncError::Identity(e.to_string()))?.ok_or(SyncError::NotEnrolled)?;
    let key_of = format!("{chain}{}", id.region_ca_pem);
    if let Some(c) = cached.as_ref() {
        if c.key == key_of && c.made.elapsed() < REUSE_AGE {
            return Ok(c.client.clone());
        }
    }
    let key = id.box_key().map_err(|e| SyncError::Identity(e.to_string()))?;
    let tls = crate::enroll::client::tls_config(&id.region_ca_pem, Some((&chain, key.pkcs8_der())))
        .map_err(|e| SyncError::Identity(e.to_string()))?;
    let client = Arc::new(Client::new(gateway, tls, connections, scheduler.clone()));
    *cached = Some(Cached { key: key_of, client: client.clone(), made: std::time::Instant::now() });
    Ok(client)
}

/// The last session's client, see [`client`].
struct Cached {
    /// The certificate chain and regional root it was made with.
    key: String,
    client: Arc<Client>,
    made: std::time::Instant,
}

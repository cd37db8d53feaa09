//! The `enroll` background worker of `relais serve`: enrolls the box at its first contact with the gateway,
//! then renews both certificates at half-life, retrying with a jittered exponential backoff. It runs beside
//! the LAN portal and never holds it up; its status is for the admin page and `relais status`.
//!
//! It also keeps the box's copy of the LAN revocation list (`enroll::crl`) fresh: with each enrollment and
//! renewal, at start, and daily in between, so the list the school's PCs fetch from the box stays within its
//! week of validity whenever the uplink allows.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use firmware_config::Config;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::{self, ClientError, EnrollRequest, Gateway, ReenrollRequest};
use super::identity::{unix_now, CertInfo, Identity, IdentityError};

/// First retry after a failure; doubled at each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Longest pause between attempts: a box offline for the holidays tries again within the hour of its return.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Shortest pause after a success: a gateway that signs very short certificates must not make us spin.
const MIN_RENEWAL_WAIT: Duration = Duration::from_secs(10);
/// How often the LAN revocation list is fetched between renewals: well inside its week of validity, so a
/// few days without uplink never leave the school's PCs with an expired list.
const CRL_REFRESH: Duration = Duration::from_secs(86_400);
/// After a failed fetch of the list, the next try (the list in hand stays good for days).
const CRL_RETRY: Duration = Duration::from_secs(3600);

/// Why one enrollment attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the box is not provisioned (no identity/uai): run `relais provision apply` first")]
    NotProvisioned,
    #[error("no enrollment token and no certificate: apply a new provisioning bundle")]
    NoToken,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot make the certificate requests: {0}")]
    Csr(#[from] provisioning::BoxKeyError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Crl(#[from] super::crl::CrlCopyError),
    #[error("the enrollment attempt stopped unexpectedly: {0}")]
    Join(String),
}

/// What the worker last did, for the admin page. Times are unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EnrollStatus {
    pub uai: String,
    pub gateway: String,
    pub enrolled: bool,
    /// Expiry of the box certificate in force.
    pub not_after: Option<u64>,
    /// Last successful enrollment or renewal.
    pub last_success: Option<u64>,
    /// The last failure's cause, cleared by a success.
    pub last_error: Option<String>,
    /// Failures in a row.
    pub failures: u32,
    /// When the worker will try next.
    pub next_attempt: Option<u64>,
}

/// A handle on the running worker: its status, and a counter bumped each time new certificates are on disk
/// (the LAN HTTPS listener watches it to load the renewed LAN certificate).
#[derive(Clone, Debug)]
pub struct EnrollHandle {
    status: Arc<Mutex<EnrollStatus>>,
    renewed: watch::Receiver<u64>,
}

impl EnrollHandle {
    pub fn status(&self) -> EnrollStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes each time the worker stored new certificates.
    pub fn renewed(&self) -> watch::Receiver<u64> {
        self.renewed.clone()
    }
}

/// The spawned worker: its handle, and its task to await at shutdown.
#[derive(Debug)]
pub struct EnrollWorker {
    pub handle: EnrollHandle,
    pub task: JoinHandle<()>,
}

/// Starts the worker when the box has a gateway (`[uplink] gateway`) and is provisioned; `None` otherwise (a
/// standalone box). It stops when `stop` turns true or its sender is dropped. Must be called inside a tokio
/// runtime.
pub fn spawn(config: &Config, stop: watch::Receiver<bool>) -> Option<EnrollWorker> {
    let gateway = config.uplink.gateway.trim().to_owned();
    if gateway.is_empty() {
        return None;
    }
    let data = config.storage.data.clone();
    let identity = match Identity::load(&data) {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            log::warn!("uplink {gateway} configured but the box is not provisioned: no enrollment");
            return None;
        }
        Err(e) => {
            log::error!("cannot read the box identity, no enrollment: {e}");
            return None;
        }
    };
    let status = Arc::new(Mutex::new(EnrollStatus {
        uai: identity.uai.clone(),
        gateway: gateway.clone(),
        enrolled: identity.is_enrolled(),
        not_after: identity.not_after(),
        ..EnrollStatus::default()
    }));
    let (renewed_tx, renewed) = watch::channel(0u64);
    let job = Job { data, gateway, lan_names: config.lan.names.clone(), uai: identity.uai.clone() };
    let task = tokio::spawn(run(job, identity.box_cert, status.clone(), renewed_tx, stop));
    Some(EnrollWorker { handle: EnrollHandle { status, renewed }, task })
}

/// What one attempt needs, cloned into the blocking thread.
#[derive(Clone, Debug)]
struct Job {
    data: PathBuf,
    gateway: String,
    lan_names: Vec<String>,
    uai: String,
}

async fn run(
    job: Job,
    mut cert: Option<CertInfo>,
    status: Arc<Mutex<EnrollStatus>>,
    renewed: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let uai = job.uai.clone();
    match &cert {
        None => log::info!("{uai} box not enrolled yet: first contact with {}", job.gateway),
        Some(c) => {
            log::info!("{uai} box enrolled, certificate valid until {}", super::identity::format_utc(c.not_after))
        }
    }
    let mut failures: u32 = 0;
    // When the LAN revocation list is fetched next: at once for a box already enrolled (its copy may be days
    // old, or missing after an upgrade), then daily; never while enrollment itself is failing.
    let mut crl_due = cert.as_ref().map(|_| tokio::time::Instant::now());
    loop {
        let wait = match (&cert, failures) {
            (_, 1..) => backoff(failures),
            (None, 0) => Duration::ZERO,
            (Some(c), 0) => renewal_wait(c, unix_now()),
        };
        set(&status, |s| s.next_attempt = Some(unix_now().saturating_add(wait.as_secs())));
        if !wait.is_zero() {
            log::debug!("{uai} next enrollment attempt in {}", humantime::format_duration(wait));
        }
        let renew_at = tokio::time::Instant::now() + wait;
        let refresh_at = crl_due.filter(|due| failures == 0 && *due < renew_at);
        tokio::select! {
            () = tokio::time::sleep_until(refresh_at.unwrap_or(renew_at)) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if refresh_at.is_some() {
            let refresh = tokio::task::spawn_blocking({
                let job = job.clone();
                move || refresh_lan_crl(&job)
            });
            let result = tokio::select! {
                joined = refresh => joined.unwrap_or_else(|e| Err(WorkerError::Join(e.to_string()))),
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let next = match result {
                Ok(stored) => {
                    log_crl(&uai, &stored);
                    CRL_REFRESH
                }
                Err(e) => {
                    log::warn!("{uai} cannot fetch the LAN revocation list from {}: {e}", job.gateway);
                    CRL_RETRY
                }
            };
            crl_due = Some(tokio::time::Instant::now() + next);
            // The renewal's wait is worked out again from the certificate: the time spent here counts.
            continue;
        }
        let attempt = tokio::task::spawn_blocking({
            let job = job.clone();
            move || attempt(&job)
        });
        // An attempt is bounded by the client's timeouts; the daemon need not wait for it to stop.
        let result = tokio::select! {
            joined = attempt => joined.unwrap_or_else(|e| Err(WorkerError::Join(e.to_string()))),
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match result {
            Ok((info, first)) => {
                failures = 0;
                let when = super::identity::format_utc(info.not_after);
                if first {
                    log::info!("{uai} box enrolled with {}: certificate valid until {when}", job.gateway);
                } else {
                    log::info!("{uai} box certificates renewed: valid until {when}");
                }
                set(&status, |s| {
                    s.enrolled = true;
                    s.not_after = Some(info.not_after);
                    s.last_success = Some(unix_now());
                    s.last_error = None;
                    s.failures = 0;
                });
                renewed.send_modify(|n| *n = n.wrapping_add(1));
                cert = Some(info);
                crl_due = Some(tokio::time::Instant::now() + CRL_REFRESH);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let hint = hint(&e, cert.as_ref());
                log::warn!("{uai} enrollment with {} failed ({} in a row): {e}{hint}", job.gateway, failures);
                set(&status, |s| {
                    s.last_error = Some(format!("{e}{hint}"));
                    s.failures = failures;
                });
            }
        }
    }
}

fn set(status: &Mutex<EnrollStatus>, change: impl FnOnce(&mut EnrollStatus)) {
    change(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
}

/// What a technician should do about a failure, when it is not just the link.
fn hint(error: &WorkerError, cert: Option<&CertInfo>) -> &'static str {
    match (error, cert) {
        (WorkerError::Client(ClientError::Refused { .. }), None) => {
            " — the gateway refused the enrollment token (spent, expired or for another school): ask the region \
             for a new bundle"
        }
        (WorkerError::NoToken, _) => " — ask the region for a new bundle",
        (WorkerError::Client(ClientError::Transport { .. }), Some(c)) if c.not_after <= unix_now() => {
            " — the box certificate has expired: ask the region for a new bundle"
        }
        (WorkerError::Client(ClientError::Transport { message, .. }), Some(_)) if message.contains("Revoked") => {
            " — the gateway revoked this box's certificate: ask the region for a new bundle and apply it with \
             `relais provision apply --force-reset`"
        }
        (WorkerError::Client(ClientError::Transport { .. }), Some(_)) => {
            " (if the link is up, the gateway may have revoked this box)"
        }
        _ => "",
    }
}

/// How long until the renewal of `cert`: at half its life, counted from its issuance rather than its
/// `not_before` (the region backdates certificates by [`provisioning::BACKDATE`] for clock skew). Counting from
/// the certificate and not from now makes a box restarted every night still renew on time.
pub fn renewal_wait(cert: &CertInfo, now: u64) -> Duration {
    let backdate = provisioning::BACKDATE.as_secs();
    let issued = if cert.not_after.saturating_sub(cert.not_before) > backdate {
        cert.not_before + backdate
    } else {
        cert.not_before
    };
    let half_life = issued + cert.not_after.saturating_sub(issued) / 2;
    Duration::from_secs(half_life.saturating_sub(now)).max(MIN_RENEWAL_WAIT)
}

/// The pause after the `failures`-th failure in a row: 5 s doubling to an hour, ±20 % so that a region's boxes
/// coming back after an outage do not all knock at once.
pub fn backoff(failures: u32) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let base = exp.min(MAX_BACKOFF);
    base.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

/// One enrollment (first contact, with the token) or renewal (mutual TLS with the current certificate).
/// Blocking. Returns the new box certificate and whether this was the first enrollment.
pub fn attempt_once(data: &Path, gateway: &str, lan_names: &[String]) -> Result<(CertInfo, bool), WorkerError> {
    let job =
        Job { data: data.to_owned(), gateway: gateway.to_owned(), lan_names: lan_names.to_vec(), uai: String::new() };
    attempt(&job)
}

fn attempt(job: &Job) -> Result<(CertInfo, bool), WorkerError> {
    let mut identity = Identity::load(&job.data)?.ok_or(WorkerError::NotProvisioned)?;
    let uai = identity.uai.clone();
    let box_key = identity.box_key()?;
    let lan_key = identity.lan_key()?;
    let names = lan_names(&uai, &job.lan_names);
    let csr = box_key.csr_pem(&uai, provisioning::CertKind::Box, &[])?;
    let lan_csr = lan_key.csr_pem(&uai, provisioning::CertKind::Lan, &names)?;
    let root = identity.region_ca_pem.clone();

    let (gateway, issued, first) = match identity.box_chain_pem()?.filter(|_| identity.is_enrolled()) {
        Some(chain) => {
            // Enrolled: a token still on disk is a leftover of a crash after enrollment; it is spent anyway.
            if identity.token()?.is_some() {
                identity.forget_token()?;
            }
            let tls = client::tls_config(&root, Some((&chain, box_key.pkcs8_der())))?;
            let gateway = Gateway::new(&job.gateway, tls);
            let issued = gateway.reenroll(&ReenrollRequest { csr: &csr, lan_csr: &lan_csr, lan_names: &names })?;
            (gateway, issued, false)
        }
        None => {
            let token = identity.token()?.ok_or(WorkerError::NoToken)?;
            let gateway = Gateway::new(&job.gateway, client::tls_config(&root, None)?);
            let request = EnrollRequest { uai: &uai, token: &token, csr: &csr, lan_csr: &lan_csr, lan_names: &names };
            let issued = gateway.enroll(&request)?;
            (gateway, issued, true)
        }
    };
    let url = format!("{}/.well-known/est/", job.gateway.trim_end_matches('/'));
    client::check_issued(&root, &uai, box_key.pkcs8_der(), lan_key.pkcs8_der(), &issued, &url)?;
    let announced = super::identity::pem_certificates(issued.ca.as_bytes()).unwrap_or_default();
    if announced.first().is_some_and(|der| provisioning::fingerprint(der) != identity.root_fingerprint) {
        // The pin never moves from the wire: a new regional root comes with a new bundle.
        log::warn!("{uai} the gateway announces another regional root than the pinned one; keeping the pinned root");
    }
    identity.store_certificates(&issued.chain, &issued.lan_chain)?;
    // The list comes with the certificates; from a gateway that sent none, ask for it. Either way a list that
    // cannot be had or kept costs the school's PCs a fresh answer, not the box its new certificates.
    let crl = match provisioning::crl_der_of(issued.lan_crl.as_bytes()) {
        Ok(der) if !issued.lan_crl.trim().is_empty() => Ok(der),
        _ => gateway.crl(provisioning::CrlIssuer::Lan).map_err(WorkerError::from),
    };
    match crl.and_then(|der| super::crl::store(identity.dir(), &der, &issued.lan_chain).map_err(WorkerError::from)) {
        Ok(stored) => log_crl(&uai, &stored),
        Err(e) => log::warn!("{uai} LAN revocation list not updated with the certificates: {e}"),
    }
    let info = identity.box_cert.clone().ok_or(WorkerError::NotProvisioned)?;
    Ok((info, first))
}

/// Fetches the LAN revocation list from the gateway and keeps it if it is good and not older than the copy.
/// Blocking.
fn refresh_lan_crl(job: &Job) -> Result<super::crl::Stored, WorkerError> {
    let identity = Identity::load(&job.data)?.ok_or(WorkerError::NotProvisioned)?;
    let gateway = Gateway::new(&job.gateway, client::tls_config(&identity.region_ca_pem, None)?);
    let der = gateway.crl(provisioning::CrlIssuer::Lan)?;
    Ok(super::crl::store_with_chain_on_disk(identity.dir(), &der)?)
}

fn log_crl(uai: &str, stored: &super::crl::Stored) {
    match stored {
        super::crl::Stored::New(info) => log::info!(
            "{uai} LAN revocation list updated ({} revoked, next update {})",
            info.revoked.len(),
            info.next_update.map_or_else(|| "-".into(), super::identity::format_utc)
        ),
        super::crl::Stored::Kept(_) => log::debug!("{uai} LAN revocation list unchanged"),
    }
}

/// The names of the LAN certificate: `ent.<uai>.lan` first, then the configured `[lan] names`, once each.
pub fn lan_names(uai: &str, configured: &[String]) -> Vec<String> {
    let mut names = vec![format!("ent.{}.lan", uai.to_lowercase())];
    for name in configured.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_life_from_issuance() {
        let backdate = provisioning::BACKDATE.as_secs();
        let issued = 1_000_000;
        let cert = CertInfo {
            not_before: issued - backdate,
            not_after: issued + 90 * 86_400,
            uai: None,
            fingerprint: String::new(),
        };
        assert_eq!(renewal_wait(&cert, issued), Duration::from_secs(45 * 86_400));
        assert_eq!(renewal_wait(&cert, issued + 44 * 86_400), Duration::from_secs(86_400));
        assert_eq!(renewal_wait(&cert, issued + 80 * 86_400), MIN_RENEWAL_WAIT);
        // A one-minute certificate (tests) renews after 30 s, not immediately.
        let short = CertInfo { not_before: issued - backdate, not_after: issued + 60, ..cert };
        assert_eq!(renewal_wait(&short, issued), Duration::from_secs(30));
    }

    #[test]
    fn backoff_grows_to_an_hour() {
        for (failures, base) in [(1u32, 5u64), (2, 10), (3, 20), (10, 2560), (11, 3600), (40, 3600)] {
            let wait = backoff(failures).as_secs_f64();
            let base = base as f64;
            assert!(wait >= base * 0.8 - 0.001 && wait <= base * 1.2 + 0.001, "{failures}: {wait} vs {base}");
        }
    }

    #[test]
    fn lan_names_start_with_the_school_name() {
        let names = lan_names("0123456A", &["ent.0123456a.lan".into(), " relais.local ".into(), "10.0.0.2".into()]);
        assert_eq!(names, vec!["ent.0123456a.lan", "relais.local", "10.0.0.2"]);
    }
}

//! HTTPS on the school LAN: which certificate the portal listener presents, and when it serves TLS at all.
//!
//! - Enrolled: the LAN certificate the region signed (`identity/lan.key` + `identity/lan.crt`), which school PCs
//!   trust once the regional root is installed on them (by hand from `/ca.crt`, or by the region's GPO).
//! - Before enrollment, standalone, or when the LAN certificate is missing or unusable: a self-signed
//!   certificate made once and kept in `<data>/tls/`, so that a browser's exception (or a technician's
//!   install of `/ca.crt`) stays good across restarts. It is made anew only when it nears its end or no longer
//!   covers the box's names (the UAI arrived with provisioning, `[lan] names` changed).
//!
//! The enrollment worker renews `lan.crt` at half-life while the daemon runs; the configuration is rebuilt
//! when the files change (checked at each new connection, a `stat` of two files), so a renewed certificate is
//! served from the next connection without a restart. A rebuild that fails keeps the last good configuration
//! and is logged once. TLS 1.2 and 1.3 only, with rustls' modern suites (AEAD, forward secrecy); ALPN
//! `http/1.1`, the only protocol the server speaks.
//!
//! No `Strict-Transport-Security`: the box's first certificate is self-signed, and a browser that once saw HSTS
//! for the box makes every later certificate problem unbypassable. A school whose LAN certificate expired during
//! a long uplink outage, or a box reset to its self-signed certificate, would lock every pupil out of the
//! portal until a technician comes, which is worse for an offline-first box than the downgrade HSTS prevents on
//! a school LAN. The `http_redirect` listener sends browsers to HTTPS instead.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use firmware_config::{Config, TlsMode};
use provisioning::BoxKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::enroll::identity::{self, format_utc, pem_certificates, unix_now, write_atomic, CertInfo, Identity};
use crate::server::{TlsSource, Transport};

/// The self-signed certificate's folder inside the data folder (0700: it holds a key).
pub const DIR: &str = "tls";
pub const SELF_SIGNED_KEY: &str = "selfsigned.key";
pub const SELF_SIGNED_CERT: &str = "selfsigned.crt";
/// How long a self-signed certificate lasts: the longest browsers accept for a server certificate, so that a
/// browser exception lasts as long as it can.
pub const SELF_SIGNED_VALIDITY: Duration = provisioning::MAX_LEAF_VALIDITY;
/// A self-signed certificate is made anew this long before its end, while browsers still accept the old one.
const SELF_SIGNED_MARGIN: Duration = Duration::from_secs(30 * 86_400);
/// After a rebuild that failed with no file change to wait for, try again this much later.
const RETRY: Duration = Duration::from_secs(60);

/// Why the LAN listener's TLS configuration could not be built. Messages name the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LanTlsError {
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Key(#[from] provisioning::BoxKeyError),
    #[error("{path}: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("{path}: expired or not yet valid (valid {} to {})", format_utc(*not_before), format_utc(*not_after))]
    OutOfValidity { path: PathBuf, not_before: u64, not_after: u64 },
    #[error(transparent)]
    SelfSigned(#[from] provisioning::SelfSignedError),
    #[error("TLS configuration with {path}: {message}")]
    Config { path: PathBuf, message: String },
}

/// Whether the portal listener serves HTTPS: `auto` does on any address but loopback (a box on the LAN), and
/// not on loopback, where the embedded default and most tests listen and nobody else can listen in.
pub fn serves_tls(mode: TlsMode, listen: SocketAddr) -> bool {
    match mode {
        TlsMode::On => true,
        TlsMode::Off => false,
        TlsMode::Auto => !listen.ip().is_loopback(),
    }
}

/// The portal listener's transport: TLS with a [`LanTls`] when [`serves_tls`] says so (the certificate is
/// chosen, or made, now: before the first connection), plain HTTP otherwise.
pub fn transport(config: &Config, data: &Path) -> Result<Transport, LanTlsError> {
    if !serves_tls(config.lan.tls, config.lan.listen) {
        return Ok(Transport::Plain);
    }
    Ok(Transport::Tls(Arc::new(LanTls::open(data, names(config))?)))
}

/// The names the box answers to on the LAN, best first: `ent.<uai>.lan` once the UAI is known, the configured
/// `[lan] names`, the listen address when it is a specific one, then `localhost`. The self-signed certificate
/// covers them all; the first is where the redirect listener sends a request that named no host.
pub fn names(config: &Config) -> Vec<String> {
    let uai = Some(config.identity.uai.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| Identity::load(&config.storage.data).ok().flatten().map(|id| id.uai));
    let mut names = match uai {
        Some(uai) => crate::enroll::worker::lan_names(&uai, &config.lan.names),
        None => config.lan.names.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect(),
    };
    let ip = config.lan.listen.ip();
    let extra = (!ip.is_unspecified()).then(|| ip.to_string()).into_iter().chain(["localhost".to_owned()]);
    for name in extra {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The certificate a technician installs on school PCs as a trusted root: the regional root once the box is
/// provisioned (it vouches for every LAN certificate of the region), else the box's self-signed certificate;
/// `None` when there is neither (a plain-HTTP box never made one). PEM.
pub async fn ca_certificate(data: &Path) -> io::Result<Option<Vec<u8>>> {
    let candidates = [Identity::dir_of(data).join(identity::REGION_CA), data.join(DIR).join(SELF_SIGNED_CERT)];
    for path in candidates {
        match tokio::fs::read(&path).await {
            Ok(pem) => return Ok(Some(pem)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
    Ok(None)
}

/// Which certificate a configuration presents.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Serving {
    Lan { fingerprint: String },
    SelfSigned { fingerprint: String },
}

/// What identifies one version of a file: a renewal renames a new file into place (new inode), and mtime and
/// size catch an edit in place.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamps(identity: &Path) -> [Stamp; 2] {
    [identity::LAN_KEY, identity::LAN_CERT].map(|file| {
        let meta = std::fs::metadata(identity.join(file)).ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    })
}

/// The configuration in force and what it was built from.
struct State {
    stamps: [Stamp; 2],
    /// Unix seconds after which the configuration must be rebuilt even if no file changed: the end of the LAN
    /// certificate, or when the self-signed one is due to be made anew.
    refresh_at: u64,
    serving: Serving,
    config: Arc<ServerConfig>,
    /// The last failure logged, so that a broken file is reported once, not at every connection.
    last_error: Option<String>,
}

/// The LAN listener's [`TlsSource`].
pub struct LanTls {
    data: PathBuf,
    names: Vec<String>,
    state: Mutex<State>,
}

impl LanTls {
    /// Builds the first configuration: the LAN certificate if it is there and valid, else the self-signed one
    /// (made now if needed). Fails only when neither can be used (e.g. a self-signed key readable by others).
    pub fn open(data: &Path, names: Vec<String>) -> Result<LanTls, LanTlsError> {
        let identity = Identity::dir_of(data);
        let stamps = stamps(&identity);
        let now = unix_now();
        let mut last_error = None;
        let built = match lan_config(&identity, now) {
            Ok(Some(built)) => built,
            Ok(None) => self_signed_config(data, &names, now)?,
            Err(e) => {
                log::warn!("LAN HTTPS: the LAN certificate cannot be used, serving the self-signed one: {e}");
                last_error = Some(e.to_string());
                self_signed_config(data, &names, now)?
            }
        };
        log::info!("LAN HTTPS: {}", built.describe());
        let state = State {
            stamps,
            refresh_at: built.refresh_at,
            serving: built.serving,
            config: Arc::new(built.config),
            last_error,
        };
        Ok(LanTls { data: data.to_owned(), names, state: Mutex::new(state) })
    }

    /// Rebuilds after a file change or when the configuration in force is due; never fails: on error the last
    /// good configuration stays, unless it is past its end and the self-signed one can replace it.
    fn refresh(&self, state: &mut State, stamps: [Stamp; 2], now: u64) {
        state.stamps = stamps;
        let identity = Identity::dir_of(&self.data);
        let failure = match lan_config(&identity, now) {
            Ok(Some(built)) => return self.switch(state, built),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        };
        if let Some(message) = &failure {
            if state.last_error.as_ref() != Some(message) {
                log::warn!("LAN HTTPS: the LAN certificate cannot be used: {message}");
            }
        }
        let keep_lan = matches!(state.serving, Serving::Lan { .. }) && now < state.refresh_at && failure.is_some();
        if keep_lan {
            // A damaged renewal must not take down a certificate that is still good: keep it until its end.
            state.last_error = failure;
            return;
        }
        match self_signed_config(&self.data, &self.names, now) {
            Ok(built) => {
                self.switch(state, built);
                state.last_error = failure;
            }
            Err(e) => {
                let message = e.to_string();
                if state.last_error.as_ref() != Some(&message) {
                    log::error!("LAN HTTPS: keeping the current certificate, no other can be used: {message}");
                }
                state.last_error = Some(message);
                state.refresh_at = now.saturating_add(RETRY.as_secs());
            }
        }
    }

    fn switch(&self, state: &mut State, built: Built) {
        if built.serving != state.serving {
            log::info!("LAN HTTPS: now {}", built.describe());
        }
        state.refresh_at = built.refresh_at;
        state.serving = built.serving;
        state.config = Arc::new(built.config);
        state.last_error = None;
    }
}

impl TlsSource for LanTls {
    fn config(&self) -> Arc<ServerConfig> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = unix_now();
        let stamps = stamps(&Identity::dir_of(&self.data));
        if stamps != state.stamps || now >= state.refresh_at {
            self.refresh(&mut state, stamps, now);
        }
        state.config.clone()
    }
}

/// A configuration just built, with what it presents and when it is due.
struct Built {
    config: ServerConfig,
    serving: Serving,
    refresh_at: u64,
    not_after: u64,
}

impl Built {
    fn describe(&self) -> String {
        let until = format_utc(self.not_after);
        match &self.serving {
            Serving::Lan { fingerprint } => format!("serving the LAN certificate {fingerprint} (until {until})"),
            Serving::SelfSigned { fingerprint } => {
                format!("serving the self-signed certificate {fingerprint} (until {until}) until the box is enrolled")
            }
        }
    }
}

/// The LAN certificate's configuration: `None` when the box has no LAN certificate (not enrolled), an error
/// when it has one that cannot be used (damaged, expired, a key that is not its key, a key readable by others).
fn lan_config(identity: &Path, now: u64) -> Result<Option<Built>, LanTlsError> {
    let (key_path, cert_path) = (identity.join(identity::LAN_KEY), identity.join(identity::LAN_CERT));
    let pem = match std::fs::read(&cert_path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(identity::IdentityError::Io { path: cert_path, source }.into()),
    };
    if !key_path.exists() {
        return Ok(None);
    }
    let key = BoxKey::load(&key_path)?;
    let built = build(&cert_path, &pem, key.pkcs8_der(), now)?;
    let fingerprint = built.1.fingerprint.clone();
    Ok(Some(Built {
        config: built.0,
        serving: Serving::Lan { fingerprint },
        refresh_at: built.1.not_after,
        not_after: built.1.not_after,
    }))
}

/// The self-signed configuration, from `<data>/tls/`; the certificate is made (or made anew) when missing,
/// damaged, due, or not covering `names`.
fn self_signed_config(data: &Path, names: &[String], now: u64) -> Result<Built, LanTlsError> {
    let dir = data.join(DIR);
    let (key_path, cert_path) = (dir.join(SELF_SIGNED_KEY), dir.join(SELF_SIGNED_CERT));
    let margin = SELF_SIGNED_MARGIN.as_secs();
    let existing = match (std::fs::read(&cert_path), key_path.exists()) {
        (Ok(pem), true) => {
            // A key readable by others is refused, not replaced: the admin must look at what happened.
            let key = BoxKey::load(&key_path)?;
            match build(&cert_path, &pem, key.pkcs8_der(), now) {
                Ok((config, info)) if info.not_after.saturating_sub(margin) > now && covers(&pem, names) => {
                    Some((config, info))
                }
                Ok(_) => {
                    log::info!("LAN HTTPS: making a new self-signed certificate (the old one is due or misses a name)");
                    None
                }
                Err(e) => {
                    log::warn!("LAN HTTPS: making a new self-signed certificate: {e}");
                    None
                }
            }
        }
        (Err(e), _) if e.kind() != io::ErrorKind::NotFound => {
            return Err(identity::IdentityError::Io { path: cert_path, source: e }.into())
        }
        _ => None,
    };
    let (config, info) = match existing {
        Some(found) => found,
        None => {
            let made = provisioning::self_signed(names, SELF_SIGNED_VALIDITY)?;
            identity::create_private_dir(&dir)?;
            // The key first: a certificate on disk always has its key beside it.
            write_atomic(&key_path, made.key_pem.as_bytes(), identity::SECRET_MODE)?;
            write_atomic(&cert_path, made.cert_pem.as_bytes(), identity::PUBLIC_MODE)?;
            let key = BoxKey::load(&key_path)?;
            let built = build(&cert_path, made.cert_pem.as_bytes(), key.pkcs8_der(), now)?;
            log::info!("LAN HTTPS: made a self-signed certificate for {}", names.join(", "));
            built
        }
    };
    Ok(Built {
        config,
        serving: Serving::SelfSigned { fingerprint: info.fingerprint.clone() },
        refresh_at: info.not_after.saturating_sub(margin),
        not_after: info.not_after,
    })
}

/// A rustls server configuration presenting the chain `pem` (leaf first) with `pkcs8` as its key, once the
/// leaf is in force at `now`. rustls checks that the key is the leaf's.
fn build(cert_path: &Path, pem: &[u8], pkcs8: &[u8], now: u64) -> Result<(ServerConfig, CertInfo), LanTlsError> {
    let bad = |message: String| LanTlsError::BadCertificate { path: cert_path.to_owned(), message };
    let chain = pem_certificates(pem).map_err(bad)?;
    let leaf = chain.first().ok_or_else(|| bad("no certificate in it".into()))?;
    let info = CertInfo::from_der(leaf).map_err(bad)?;
    if !info.valid_at(now) {
        return Err(LanTlsError::OutOfValidity {
            path: cert_path.to_owned(),
            not_before: info.not_before,
            not_after: info.not_after,
        });
    }
    let config_err = |e: rustls::Error| LanTlsError::Config { path: cert_path.to_owned(), message: e.to_string() };
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let config = crate::server::tls_builder()
        .map_err(config_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(config_err)?;
    Ok((crate::server::tls_finish(config), info))
}

/// Whether the leaf of `pem` names every one of `names` (DNS names case-insensitively, IP addresses as such).
fn covers(pem: &[u8], names: &[String]) -> bool {
    let Some(der) = pem_certificates(pem).ok().and_then(|c| c.into_iter().next()) else {
        return false;
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => ips.extend(<[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from)),
                16 => ips.extend(<[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from)),
                _ => {}
            },
            _ => {}
        }
    }
    names.iter().all(|name| match name.parse::<IpAddr>() {
        Ok(ip) => ips.contains(&ip),
        Err(_) => dns.contains(&name.to_ascii_lowercase()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    #[test]
    fn auto_serves_tls_off_loopback_only() {
        assert!(!serves_tls(TlsMode::Auto, addr("127.0.0.1:8080")));
        assert!(!serves_tls(TlsMode::Auto, addr("[::1]:8080")));
        assert!(serves_tls(TlsMode::Auto, addr("192.168.1.10:443")));
        assert!(serves_tls(TlsMode::Auto, addr("0.0.0.0:443")));
        assert!(serves_tls(TlsMode::On, addr("127.0.0.1:0")));
        assert!(!serves_tls(TlsMode::Off, addr("192.168.1.10:443")));
    }

    #[test]
    fn names_put_the_school_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.storage.data = dir.path().to_owned();
        config.lan.listen = addr("192.168.1.10:443");
        config.lan.names = vec!["relais.local".into()];
        assert_eq!(names(&config), vec!["relais.local", "192.168.1.10", "localhost"]);
        config.identity.uai = "0123456A".into();
        config.lan.listen = addr("0.0.0.0:443");
        assert_eq!(names(&config), vec!["ent.0123456a.lan", "relais.local", "localhost"]);
    }

    #[test]
    fn the_self_signed_certificate_is_kept_and_made_anew_for_new_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec!["relais.local".to_string(), "127.0.0.1".into(), "localhost".into()];
        let first = LanTls::open(dir.path(), names.clone()).expect("open");
        let cert = dir.path().join(DIR).join(SELF_SIGNED_CERT);
        let pem = std::fs::read(&cert).expect("certificate written");
        assert!(covers(&pem, &names));
        let key = dir.path().join(DIR).join(SELF_SIGNED_KEY);
        assert_eq!(std::fs::metadata(&key).expect("key").mode() & 0o777, 0o600);
        drop(first);
        LanTls::open(dir.path(), names.clone()).expect("reopen");
        assert_eq!(std::fs::read(&cert).expect("certificate"), pem, "the same certificate after a restart");
        let more = [names.clone(), vec!["ent.0123456a.lan".into()]].concat();
        LanTls::open(dir.path(), more.clone()).expect("new names");
        let renewed = std::fs::read(&cert).expect("certificate");
        assert_ne!(renewed, pem, "a new name needs a new certificate");
        assert!(covers(&renewed, &more));
    }

    /// Writes a key and a certificate for it as the box's LAN pair (a self-signed one stands in for the region's).
    fn write_lan_pair(data: &Path) {
        let made = provisioning::self_signed(&["ent.0123456a.lan".into()], Duration::from_secs(86_400)).expect("pair");
        let dir = Identity::dir_of(data);
        identity::create_private_dir(&dir).expect("identity dir");
        write_atomic(&dir.join(identity::LAN_KEY), made.key_pem.as_bytes(), identity::SECRET_MODE).expect("key");
        write_atomic(&dir.join(identity::LAN_CERT), made.cert_pem.as_bytes(), identity::PUBLIC_MODE).expect("cert");
    }

    fn serving(tls: &LanTls) -> Serving {
        tls.state.lock().expect("state").serving.clone()
    }

    #[test]
    fn a_new_lan_certificate_is_picked_up_and_a_broken_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = LanTls::open(dir.path(), vec!["localhost".into()]).expect("open");
        assert!(matches!(serving(&tls), Serving::SelfSigned { .. }), "not enrolled yet");

        write_lan_pair(dir.path());
        let first = tls.config();
        let lan = serving(&tls);
        assert!(matches!(lan, Serving::Lan { .. }), "the LAN certificate from the next connection");
        assert!(Arc::ptr_eq(&first, &tls.config()), "no rebuild while nothing changes");

        let cert = Identity::dir_of(dir.path()).join(identity::LAN_CERT);
        write_atomic(&cert, b"-----BEGIN CERTIFICATE-----\nbroken\n", identity::PUBLIC_MODE).expect("damage");
        assert!(Arc::ptr_eq(&first, &tls.config()), "a damaged renewal keeps the last good configuration");
        assert_eq!(serving(&tls), lan);
        assert!(tls.state.lock().expect("state").last_error.is_some(), "and says why");

        write_lan_pair(dir.path());
        assert!(!Arc::ptr_eq(&first, &tls.config()), "a good renewal is served");
        assert!(matches!(serving(&tls), Serving::Lan { .. }) && serving(&tls) != lan, "the new certificate");

        std::fs::remove_file(&cert).expect("remove");
        tls.config();
        assert!(matches!(serving(&tls), Serving::SelfSigned { .. }), "back to the self-signed one");
    }

    #[test]
    fn a_loose_self_signed_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec!["localhost".to_string()];
        LanTls::open(dir.path(), names.clone()).expect("open");
        let key = dir.path().join(DIR).join(SELF_SIGNED_KEY);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = LanTls::open(dir.path(), names).err().expect("refused").to_string();
        assert!(err.contains("0644") && err.contains(SELF_SIGNED_KEY), "{err}");
    }
}

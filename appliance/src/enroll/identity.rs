//! The box's identity on disk, `<data>/identity/` (0700): the pinned regional root, the UAI, the one-time
//! enrollment token, the box's two private keys and the certificates the region signed for them.
//!
//! | file | mode | what |
//! |---|---|---|
//! | `region-ca.crt` | 0644 | the regional root, the only trust anchor of every uplink connection |
//! | `uai` | 0644 | the school's UAI; written last by `provision apply`, so its presence means "provisioned" |
//! | `token` | 0600 | the one-time enrollment token; deleted once the box is enrolled |
//! | `box.key` / `box.crt` | 0600 / 0644 | the TLS client key (made on the box) and its chain, leaf first |
//! | `lan.key` / `lan.crt` | 0600 / 0644 | the LAN HTTPS server key (made on the box) and its chain |
//! | `lan-ca.crl` | 0644 | the region's LAN revocation list, served to the school's PCs (see `enroll::crl`) |
//!
//! Every write is atomic (temporary file created with its final mode, fsync, rename, fsync of the folder), so
//! a power cut leaves the old file or the new one, and a key is never readable by others, not even briefly.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use provisioning::disk::DiskError;
use provisioning::{BoxKey, BoxKeyError};
use rand::RngCore;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity folder inside the data folder.
pub const DIR: &str = "identity";
pub const REGION_CA: &str = "region-ca.crt";
pub const UAI: &str = "uai";
pub const TOKEN: &str = "token";
pub const BOX_KEY: &str = "box.key";
pub const BOX_CERT: &str = "box.crt";
pub const LAN_KEY: &str = "lan.key";
pub const LAN_CERT: &str = "lan.crt";

/// Keys and the token: owner only; certificates, the root and the UAI: nothing secret in them.
pub use provisioning::disk::{PUBLIC_MODE, SECRET_MODE};

/// Why the identity could not be read or written. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A secret readable by others may have leaked: the admin must look (and probably re-provision), not have
    /// us silently tighten the mode.
    #[error("{path}: mode {mode:04o} is too open for a secret; it must be 0600 or stricter (chmod 600 {path})")]
    LooseMode { path: PathBuf, mode: u32 },
    #[error("{path} is damaged: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Key(#[from] BoxKeyError),
}

impl From<DiskError> for IdentityError {
    fn from(e: DiskError) -> Self {
        match e {
            DiskError::Io { path, source } => IdentityError::Io { path, source },
            DiskError::LooseMode { path, mode } => IdentityError::LooseMode { path, mode },
            DiskError::Corrupt { path, message } => IdentityError::Corrupt { path, message },
            DiskError::Exists { path } => IdentityError::Corrupt { path, message: "already exists".into() },
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.to_owned(), source }
}

/// What the box knows of one of its certificates (the leaf of a chain file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
    /// The UAI the certificate is bound to (URI SAN), if any.
    pub uai: Option<String>,
    /// SHA-256 of the leaf, hex: what the region's index and a technician's `openssl x509` show.
    pub fingerprint: String,
}

impl CertInfo {
    /// Reads the leaf (first certificate) of a PEM chain.
    pub fn from_chain_pem(pem: &[u8]) -> Result<CertInfo, String> {
        let chain = pem_certificates(pem)?;
        let leaf = chain.first().ok_or("no certificate in it")?;
        CertInfo::from_der(leaf)
    }

    pub fn from_der(der: &[u8]) -> Result<CertInfo, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let validity = cert.validity();
        let secs = |t: i64| u64::try_from(t).unwrap_or(0);
        Ok(CertInfo {
            not_before: secs(validity.not_before.timestamp()),
            not_after: secs(validity.not_after.timestamp()),
            uai: provisioning::uai_of_cert(der),
            fingerprint: provisioning::fingerprint(der),
        })
    }

    /// Whether the certificate is in force at `now` (unix seconds).
    pub fn valid_at(&self, now: u64) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// The DER blocks labelled `CERTIFICATE` of a PEM text, in order.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("bad PEM: {e}"))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    Ok(out)
}

/// The box's identity as found on disk. `load` returns one only for a provisioned box (the `uai` file exists).
#[derive(Clone, Debug)]
pub struct Identity {
    dir: PathBuf,
    /// The school's UAI.
    pub uai: String,
    /// The pinned regional root, PEM.
    pub region_ca_pem: String,
    /// SHA-256 of the regional root (DER), lowercase hex.
    pub root_fingerprint: String,
    /// The box's client certificate, when enrolled (and its key is there).
    pub box_cert: Option<CertInfo>,
    /// The LAN server certificate, when enrolled.
    pub lan_cert: Option<CertInfo>,
}

impl Identity {
    /// The identity folder of a data folder.
    pub fn dir_of(data: &Path) -> PathBuf {
        data.join(DIR)
    }

    /// Reads the identity of the box whose data folder is `data`: `None` if it was never provisioned.
    /// A certificate bound to another UAI than the box's, or without its key, is ignored (not enrolled): it is
    /// left over from an interrupted reset and the box must enroll again.
    pub fn load(data: &Path) -> Result<Option<Identity>, IdentityError> {
        let dir = Identity::dir_of(data);
        let uai_path = dir.join(UAI);
        let uai = match fs::read_to_string(&uai_path) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&uai_path)(e)),
        };
        if !firmware_config::is_uai(&uai) {
            return Err(IdentityError::Corrupt { path: uai_path, message: format!("« {uai} » is not a UAI") });
        }
        let ca_path = dir.join(REGION_CA);
        let region_ca_pem = fs::read_to_string(&ca_path).map_err(io_err(&ca_path))?;
        let corrupt = |message: String| IdentityError::Corrupt { path: ca_path.clone(), message };
        let root = pem_certificates(region_ca_pem.as_bytes()).map_err(corrupt)?;
        let root = root.first().ok_or_else(|| corrupt("no certificate in it".into()))?;
        let root_fingerprint = provisioning::fingerprint(root);
        let cert = |cert: &str, key: &str| -> Result<Option<CertInfo>, IdentityError> {
            let path = dir.join(cert);
            let pem = match fs::read(&path) {
                Ok(pem) => pem,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(&path)(e)),
            };
            if !dir.join(key).exists() {
                return Ok(None);
            }
            let info = CertInfo::from_chain_pem(&pem).map_err(|message| IdentityError::Corrupt { path, message })?;
            Ok(Some(info))
        };
        let box_cert = cert(BOX_CERT, BOX_KEY)?.filter(|c| c.uai.as_deref() == Some(uai.as_str()));
        let lan_cert = cert(LAN_CERT, LAN_KEY)?;
        Ok(Some(Identity { dir, uai, region_ca_pem, root_fingerprint, box_cert, lan_cert }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Enrolled: the region signed a client certificate for this box's key and UAI.
    pub fn is_enrolled(&self) -> bool {
        self.box_cert.is_some()
    }

    /// When the box certificate expires (unix seconds), if enrolled.
    pub fn not_after(&self) -> Option<u64> {
        self.box_cert.as_ref().map(|c| c.not_after)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The one-time enrollment token, if the box still holds one. Refused when readable by others.
    pub fn token(&self) -> Result<Option<String>, IdentityError> {
        let path = self.dir.join(TOKEN);
        match read_secret(&path) {
            Ok(bytes) => {
                let token = String::from_utf8(bytes)
                    .map_err(|_| IdentityError::Corrupt { path: path.clone(), message: "not text".into() })?;
                Ok(Some(token.trim().to_owned()).filter(|t| !t.is_empty()))
            }
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The box's client key (refused when readable by others).
    pub fn box_key(&self) -> Result<BoxKey, IdentityError> {
        Ok(BoxKey::load(&self.dir.join(BOX_KEY))?)
    }

    /// The LAN server key (refused when readable by others).
    pub fn lan_key(&self) -> Result<BoxKey, IdentityError> {
        Ok(BoxKey::load(&self.dir.join(LAN_KEY))?)
    }

    /// The box certificate chain, PEM, if enrolled.
    pub fn box_chain_pem(&self) -> Result<Option<String>, IdentityError> {
        read_optional(&self.dir.join(BOX_CERT))
    }

    /// The LAN certificate chain, PEM, if enrolled.
    pub fn lan_chain_pem(&self) -> Result<Option<String>, IdentityError> {
        read_optional(&self.dir.join(LAN_CERT))
    }

    /// Stores the chains the region signed (each atomically; the LAN one first, so a box certificate on disk
    /// always comes with a LAN certificate at least as new), then forgets the token: it has been spent.
    pub fn store_certificates(&mut self, box_chain: &str, lan_chain: &str) -> Result<(), IdentityError> {
        let parse = |file: &str, pem: &str| {
            CertInfo::from_chain_pem(pem.as_bytes())
                .map_err(|message| IdentityError::Corrupt { path: self.dir.join(file), message })
        };
        let box_info = parse(BOX_CERT, box_chain)?;
        let lan_info = parse(LAN_CERT, lan_chain)?;
        write_atomic(&self.dir.join(LAN_CERT), lan_chain.as_bytes(), PUBLIC_MODE)?;
        write_atomic(&self.dir.join(BOX_CERT), box_chain.as_bytes(), PUBLIC_MODE)?;
        self.box_cert = Some(box_info);
        self.lan_cert = Some(lan_info);
        self.forget_token()
    }

    /// Deletes the enrollment token (it works once; keeping a spent one only invites confusion).
    pub fn forget_token(&self) -> Result<(), IdentityError> {
        remove_if_exists(&self.dir.join(TOKEN))?;
        sync_dir(&self.dir)
    }
}

/// What `provision apply` writes for a newly provisioned (or re-provisioned, not yet enrolled) box.
#[derive(Debug)]
pub struct Install<'a> {
    pub uai: &'a str,
    pub region_ca_pem: &'a str,
    /// `None` keeps the token already there (an enrolled box has none, and needs none).
    pub token: Option<&'a str>,
}

/// Whether `install` made the keys or found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeysMade {
    pub box_key: bool,
    pub lan_key: bool,
}

/// Writes the identity files of a provisioned box into `data/identity/`: the root, the token, the two keys
/// when missing (generated here, on the box, 0600 from their first byte), then the UAI last, which is what
/// makes [`Identity::load`] see a provisioned box. Certificates are not touched.
pub fn install(data: &Path, what: &Install<'_>) -> Result<KeysMade, IdentityError> {
    let dir = Identity::dir_of(data);
    create_private_dir(&dir)?;
    write_atomic(&dir.join(REGION_CA), what.region_ca_pem.as_bytes(), PUBLIC_MODE)?;
    if let Some(token) = what.token {
        write_atomic(&dir.join(TOKEN), format!("{}\n", token.trim()).as_bytes(), SECRET_MODE)?;
    }
    let mut made = KeysMade { box_key: false, lan_key: false };
    for (file, flag) in [(BOX_KEY, &mut made.box_key), (LAN_KEY, &mut made.lan_key)] {
        let path = dir.join(file);
        if path.symlink_metadata().is_ok() {
            // Load it to be sure it is a usable key with a safe mode, rather than find out at enrollment.
            BoxKey::load(&path)?;
        } else {
            BoxKey::generate(&path)?;
            *flag = true;
        }
    }
    write_atomic(&dir.join(UAI), format!("{}\n", what.uai).as_bytes(), PUBLIC_MODE)?;
    Ok(made)
}

/// Removes the certificates and the LAN revocation list (not the keys) of a half-provisioned identity folder:
/// left over from an interrupted reset, they belong to another school or region.
pub fn drop_certificates(data: &Path) -> Result<(), IdentityError> {
    let dir = Identity::dir_of(data);
    for file in [BOX_CERT, LAN_CERT, super::crl::LAN_CRL] {
        remove_if_exists(&dir.join(file))?;
    }
    if dir.exists() {
        sync_dir(&dir)?;
    }
    Ok(())
}

/// Wipes the identity folder (`--force-reset`). Renamed aside first, so that a crash mid-way leaves either the
/// whole old identity or none, never a UAI with another school's keys.
pub fn wipe(data: &Path) -> Result<(), IdentityError> {
    let dir = Identity::dir_of(data);
    if dir.symlink_metadata().is_err() {
        return Ok(());
    }
    let aside = data.join(format!(".{DIR}.reset-{:016x}", rand::rngs::OsRng.next_u64()));
    fs::rename(&dir, &aside).map_err(io_err(&dir))?;
    sync_dir(data)?;
    fs::remove_dir_all(&aside).map_err(io_err(&aside))?;
    sync_dir(data)
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees the old file or the new one, never half; the
/// temporary file has `mode` from its creation (the provisioning crate's writer, shared by CA and box).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    Ok(provisioning::disk::write_atomic(path, bytes, mode)?)
}

/// Reads a secret, refusing it when group or others have any access.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, IdentityError> {
    Ok(provisioning::disk::read_secret(path)?)
}

fn read_optional(path: &Path) -> Result<Option<String>, IdentityError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), IdentityError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Creates `dir` (and its parents) 0700 if missing, and tightens an existing one to 0700: it holds keys.
pub fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Makes a rename in `dir` durable: without it a power cut can forget the new name.
pub fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    Ok(provisioning::disk::sync_dir(dir)?)
}

/// Now, in unix seconds (0 before 1970 rather than a failure).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// "2025-03-01 14:05 UTC", for technicians whatever the box's time zone.
pub fn format_utc(secs: u64) -> String {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    match jiff::Timestamp::from_second(secs) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        Err(_) => format!("{secs} (unix)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_with_cert(dir: &Path, uai: &str, key: &BoxKey) -> (provisioning::RegionalCa, String) {
        let ca = provisioning::RegionalCa::init(&dir.join("ca"), &["gw.example".into()]).expect("ca");
        let csr = key.csr_pem(uai, provisioning::CertKind::Box, &[]).expect("csr");
        let issued = ca.issue_box_cert(csr.as_bytes(), uai, provisioning::DEFAULT_LEAF_VALIDITY).expect("issue");
        (ca, issued.chain_pem)
    }

    #[test]
    fn install_then_load_then_enroll() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        assert!(Identity::load(&data).expect("load").is_none());
        let ca = provisioning::RegionalCa::init(&tmp.path().join("ca"), &["gw.example".into()]).expect("ca");
        let made = install(
            &data,
            &Install { uai: "0123456A", region_ca_pem: ca.root_cert_pem(), token: Some("tok-tok-tok-tok-tok-tok-tok") },
        )
        .expect("install");
        assert_eq!(made, KeysMade { box_key: true, lan_key: true });
        let dir = Identity::dir_of(&data);
        let mode = |f: &str| fs::metadata(dir.join(f)).expect("meta").permissions().mode() & 0o777;
        assert_eq!(fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
        assert_eq!(mode(TOKEN), 0o600);
        assert_eq!(mode(BOX_KEY), 0o600);
        assert_eq!(mode(LAN_KEY), 0o600);
        assert_eq!(mode(REGION_CA), 0o644);

        let mut id = Identity::load(&data).expect("load").expect("provisioned");
        assert_eq!(id.uai, "0123456A");
        assert_eq!(id.root_fingerprint, ca.root_fingerprint());
        assert!(!id.is_enrolled());
        assert_eq!(id.token().expect("token").as_deref(), Some("tok-tok-tok-tok-tok-tok-tok"));

        // Installing again keeps the keys.
        let again = install(&data, &Install { uai: "0123456A", region_ca_pem: ca.root_cert_pem(), token: None })
            .expect("again");
        assert_eq!(again, KeysMade { box_key: false, lan_key: false });

        let key = id.box_key().expect("key");
        let csr = key.csr_pem("0123456A", provisioning::CertKind::Box, &[]).expect("csr");
        let chain = ca.issue_box_cert(csr.as_bytes(), "0123456A", provisioning::DEFAULT_LEAF_VALIDITY).expect("cert");
        let lan_key = id.lan_key().expect("lan key");
        let lan_csr = lan_key.csr_pem("0123456A", provisioning::CertKind::Lan, &["ent.0123456a.lan".into()]);
        let lan = ca
            .issue_lan_cert(
                lan_csr.expect("lan csr").as_bytes(),
                "0123456A",
                &["ent.0123456a.lan".into()],
                provisioning::DEFAULT_LEAF_VALIDITY,
            )
            .expect("lan cert");
        id.store_certificates(&chain.chain_pem, &lan.chain_pem).expect("store");
        assert!(id.token().expect("token").is_none(), "the token is spent");
        let id = Identity::load(&data).expect("load").expect("provisioned");
        assert!(id.is_enrolled());
        let not_after = chain.not_after.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
        assert_eq!(id.not_after(), Some(not_after));
        assert!(id.box_cert.as_ref().expect("cert").valid_at(unix_now()));
    }

    #[test]
    fn certificate_of_another_school_is_not_enrollment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let dir = Identity::dir_of(&data);
        create_private_dir(&dir).expect("dir");
        let key = BoxKey::generate(&dir.join(BOX_KEY)).expect("key");
        let (ca, chain) = ca_with_cert(tmp.path(), "7654321B", &key);
        install(&data, &Install { uai: "0123456A", region_ca_pem: ca.root_cert_pem(), token: None }).expect("install");
        write_atomic(&dir.join(BOX_CERT), chain.as_bytes(), PUBLIC_MODE).expect("write");
        let id = Identity::load(&data).expect("load").expect("provisioned");
        assert!(!id.is_enrolled());
    }

    #[test]
    fn loose_token_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("token");
        write_atomic(&path, b"secret", 0o644).expect("write");
        assert!(matches!(read_secret(&path), Err(IdentityError::LooseMode { mode: 0o644, .. })));
    }

    #[test]
    fn wipe_removes_everything() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let ca = provisioning::RegionalCa::init(&tmp.path().join("ca"), &["gw.example".into()]).expect("ca");
        install(&data, &Install { uai: "0123456A", region_ca_pem: ca.root_cert_pem(), token: None }).expect("install");
        wipe(&data).expect("wipe");
        assert_eq!(fs::read_dir(&data).expect("ls").count(), 0);
        assert!(Identity::load(&data).expect("load").is_none());
    }
}

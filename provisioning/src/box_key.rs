//! The box's own private key, generated on the box and never sent anywhere, and the CSRs it signs for the
//! regional CA (one for its client certificate to the gateway, one for its LAN server certificate).

use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, SanType};

use crate::ca::UAI_URI_PREFIX;
use crate::disk::{self, DiskError, SECRET_MODE};
use crate::index::CertKind;

/// Why the box key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum BoxKeyError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("{path}: not an ECDSA P-256 private key in PEM ({message})")]
    BadKey { path: PathBuf, message: String },
    #[error("« {0} » is not a UAI: 7 digits then a letter, e.g. 0123456A")]
    BadUai(String),
    #[error("« {0} » is neither a DNS name nor an IP address")]
    BadName(String),
    #[error("cannot make the key or the request: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// The box's key pair (ECDSA P-256), kept in one PEM file of mode 0600.
pub struct BoxKey {
    path: PathBuf,
    key: KeyPair,
}

impl std::fmt::Debug for BoxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxKey").field("path", &self.path).finish_non_exhaustive()
    }
}

impl BoxKey {
    /// Generates a key and writes it to `path` (PKCS#8 PEM), created 0600 from the start, its folder 0700 if
    /// it has to be made. Refuses to replace an existing key: it is the box's identity.
    pub fn generate(path: &Path) -> Result<BoxKey, BoxKeyError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            disk::create_private_dir(dir)?;
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        disk::write_new(path, key.serialize_pem().as_bytes(), SECRET_MODE)?;
        Ok(BoxKey { path: path.to_owned(), key })
    }

    /// Loads the key; refuses a file readable by group or others.
    pub fn load(path: &Path) -> Result<BoxKey, BoxKeyError> {
        let bad = |message: String| BoxKeyError::BadKey { path: path.to_owned(), message };
        let bytes = disk::read_secret(path)?;
        let pem = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
        let key = KeyPair::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(bad("another key type".into()));
        }
        Ok(BoxKey { path: path.to_owned(), key })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The private key as PKCS#8 DER, for the box's TLS stack (rustls `PrivatePkcs8KeyDer`).
    pub fn pkcs8_der(&self) -> &[u8] {
        self.key.serialized_der()
    }

    /// A PKCS#10 request signed by this key. CN = `uai`; for [`CertKind::Box`] the URI SAN binding the UAI, for
    /// [`CertKind::Lan`] (and `Gateway`) the DNS names / IP literals in `names`. The CA uses only the key and
    /// checks the CN; it decides the rest itself.
    pub fn csr_pem(&self, uai: &str, kind: CertKind, names: &[String]) -> Result<String, BoxKeyError> {
        if !firmware_config::is_uai(uai) {
            return Err(BoxKeyError::BadUai(uai.to_owned()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, uai);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        match kind {
            CertKind::Box => {
                let uri = format!("{UAI_URI_PREFIX}{uai}");
                params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            CertKind::Lan | CertKind::Gateway => {
                for name in names {
                    let san = match name.parse() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => {
                            SanType::DnsName(name.clone().try_into().map_err(|_| BoxKeyError::BadName(name.clone()))?)
                        }
                    };
                    params.subject_alt_names.push(san);
                }
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
        }
        Ok(params.serialize_request(&self.key)?.pem()?)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generate_is_private_and_load_refuses_loose() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("box").join("box.key");
        let key = BoxKey::generate(&path).expect("generate");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(BoxKey::generate(&path), Err(BoxKeyError::Disk(DiskError::Exists { .. }))));
        let again = BoxKey::load(&path).expect("load");
        assert_eq!(again.pkcs8_der(), key.pkcs8_der());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = BoxKey::load(&path).expect_err("0640 refused").to_string();
        assert!(err.contains("0640") && err.contains("box.key"), "{err}");
    }

    #[test]
    fn csr_is_pem_and_checks_uai() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = BoxKey::generate(&dir.path().join("k")).expect("generate");
        let pem = key.csr_pem("0123456A", CertKind::Box, &[]).expect("csr");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(matches!(key.csr_pem("bad", CertKind::Box, &[]), Err(BoxKeyError::BadUai(_))));
        let lan = key.csr_pem("0123456A", CertKind::Lan, &["relais.lan".into(), "10.0.0.2".into()]).expect("lan");
        assert!(lan.contains("CERTIFICATE REQUEST"));
    }
}

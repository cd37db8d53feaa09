//! The box's copy of its region's LAN revocation list (`identity/lan-ca.crl`, DER, 0644), served to the
//! school's PCs at `/crl/lan.crl` on the portal and on the plain-HTTP listener: the URL every LAN certificate
//! names (`http://ent.<uai>.lan/crl/lan.crl`, see `provisioning/src/crl.rs`), so a PC that checks the box's
//! certificate gets its answer from the box, uplink or not.
//!
//! The copy comes from the gateway with each enrollment and renewal (in the EST answer) and daily in between
//! (`GET /crl/lan.crl`, by the enrollment worker). It is kept only when it is signed by the LAN intermediate of
//! the box's own LAN chain (itself checked against the pinned root when it arrived), and only when it is not
//! older than the copy held. An expired copy is still served: a PC told "no newer list" decides for itself,
//! which beats a 404 for it and for testers.

use std::io;
use std::path::Path;

use provisioning::{CrlError, CrlInfo};

use super::identity::{self, pem_certificates, write_atomic, IdentityError, PUBLIC_MODE};

/// The copy's file in the identity folder.
pub const LAN_CRL: &str = "lan-ca.crl";

/// Why a list was not kept.
#[derive(Debug, thiserror::Error)]
pub enum CrlCopyError {
    #[error("the box has no LAN certificate chain to check the list against")]
    NoChain,
    #[error("the LAN chain has no intermediate to check the list against")]
    NoIntermediate,
    #[error("bad LAN chain: {0}")]
    Chain(String),
    #[error("LAN revocation list refused: {0}")]
    Crl(#[from] CrlError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What [`store`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The list is now the copy served.
    New(CrlInfo),
    /// The copy held is as new or newer: kept.
    Kept(CrlInfo),
}

/// Checks `crl` (DER) against the LAN intermediate of `lan_chain_pem` (leaf then intermediate) and makes it the
/// copy in `identity_dir` unless the copy there, from the same intermediate, is newer.
pub fn store(identity_dir: &Path, crl: &[u8], lan_chain_pem: &str) -> Result<Stored, CrlCopyError> {
    let chain = pem_certificates(lan_chain_pem.as_bytes()).map_err(CrlCopyError::Chain)?;
    let intermediate =
        chain.get(1).ok_or(if chain.is_empty() { CrlCopyError::NoChain } else { CrlCopyError::NoIntermediate })?;
    let info = provisioning::check_crl(crl, intermediate)?;
    let path = identity_dir.join(LAN_CRL);
    // A copy of another intermediate (another region, a rolled-over intermediate) does not count as newer.
    let held = std::fs::read(&path).ok().and_then(|der| provisioning::check_crl(&der, intermediate).ok());
    if let Some(held) = held.filter(|held| held.this_update > info.this_update) {
        return Ok(Stored::Kept(held));
    }
    write_atomic(&path, crl, PUBLIC_MODE)?;
    Ok(Stored::New(info))
}

/// Like [`store`], with the box's LAN chain on disk (`identity/lan.crt`).
pub fn store_with_chain_on_disk(identity_dir: &Path, crl: &[u8]) -> Result<Stored, CrlCopyError> {
    let chain_path = identity_dir.join(identity::LAN_CERT);
    let chain = match std::fs::read_to_string(&chain_path) {
        Ok(chain) => chain,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CrlCopyError::NoChain),
        Err(source) => return Err(IdentityError::Io { path: chain_path, source }.into()),
    };
    store(identity_dir, crl, &chain)
}

/// The copy to serve, DER; `None` when the box holds none (not enrolled yet, or a gateway that sent none).
pub async fn served(data: &Path) -> io::Result<Option<Vec<u8>>> {
    let path = identity::Identity::dir_of(data).join(LAN_CRL);
    match tokio::fs::read(&path).await {
        Ok(der) => Ok(Some(der)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisioning::{BoxKey, CertKind, CrlIssuer, RegionalCa, DEFAULT_LEAF_VALIDITY};

    #[test]
    fn only_a_list_of_the_lan_intermediate_and_not_older_is_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = RegionalCa::init(&tmp.path().join("ca"), &["gw.example".into()]).expect("ca");
        let key = BoxKey::generate(&tmp.path().join("lan.key")).expect("key");
        let names = vec!["ent.0123456a.lan".to_owned()];
        let csr = key.csr_pem("0123456A", CertKind::Lan, &names).expect("csr");
        let lan = ca.issue_lan_cert(csr.as_bytes(), "0123456A", &names, DEFAULT_LEAF_VALIDITY).expect("lan");
        let dir = tmp.path().join("identity");
        identity::create_private_dir(&dir).expect("dir");

        let first = ca.crl(CrlIssuer::Lan).expect("crl");
        assert!(matches!(store(&dir, &first, &lan.chain_pem), Ok(Stored::New(_))));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join(LAN_CRL)).expect("meta").permissions());
        assert_eq!(mode & 0o777, 0o644, "nothing secret in it");

        // Another authority's list, or bytes that are no list, are refused and the copy stays.
        let other = ca.crl(CrlIssuer::Box).expect("crl");
        assert!(matches!(store(&dir, &other, &lan.chain_pem), Err(CrlCopyError::Crl(CrlError::WrongIssuer { .. }))));
        assert!(matches!(store(&dir, b"junk", &lan.chain_pem), Err(CrlCopyError::Crl(_))));
        assert_eq!(std::fs::read(dir.join(LAN_CRL)).expect("copy"), first);

        // A newer list (made a second later) replaces it; the older one does not come back.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        ca.revoke_serial(&lan.serial).expect("revoke");
        let newer = ca.crl(CrlIssuer::Lan).expect("crl");
        match store(&dir, &newer, &lan.chain_pem) {
            Ok(Stored::New(info)) => assert_eq!(info.revoked, vec![lan.serial.clone()]),
            other => panic!("the newer list: {other:?}"),
        }
        assert!(matches!(store(&dir, &first, &lan.chain_pem), Ok(Stored::Kept(_))));
        assert_eq!(std::fs::read(dir.join(LAN_CRL)).expect("copy"), newer);

        // Without a chain there is nothing to check against.
        assert!(matches!(store_with_chain_on_disk(&dir, &newer), Err(CrlCopyError::NoChain)));
    }
}

//! The gateway's revocation lists, as served at `/crl/<issuer>.crl` (plain-HTTP listener and HTTPS alike):
//! made by the CA on demand and kept until the CA's index changes (a revocation, an issuance) or an hour has
//! passed, so a crowd of checkers costs one signature, not one each, and a revocation is published from the
//! next request. What each list covers and where certificates point: `provisioning/src/crl.rs`.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use provisioning::{CaError, CrlIssuer, RegionalCa};

/// A list is made anew at least this often: its `nextUpdate` ([`provisioning::CRL_VALIDITY`], a week) stays
/// far ahead for whoever fetches it.
const REFRESH: Duration = Duration::from_secs(3600);

/// The lists last made, per authority.
#[derive(Default)]
pub struct Crls(Mutex<HashMap<CrlIssuer, Made>>);

struct Made {
    /// The index as it was when the list was made: a change means a revocation to publish.
    index: Stamp,
    at: Instant,
    der: Arc<Vec<u8>>,
}

/// What identifies one version of the index: every rewrite renames a new file into place (a new inode), so two
/// rewrites within one tick of the clock still differ.
type Stamp = Option<(SystemTime, u64, u64)>;

fn index_stamp(dir: &Path) -> Stamp {
    let meta = std::fs::metadata(dir.join("issued.json")).ok()?;
    Some((meta.modified().ok()?, meta.ino(), meta.len()))
}

impl Crls {
    /// `issuer`'s list (DER), signed by `ca`: the one made last if the index has not changed since and it is
    /// less than [`REFRESH`] old, else a new one.
    pub fn get(&self, ca: &RegionalCa, issuer: CrlIssuer) -> Result<Arc<Vec<u8>>, CaError> {
        let stamp = index_stamp(ca.dir());
        let mut made = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = made.get(&issuer) {
            if m.index == stamp && m.at.elapsed() < REFRESH {
                return Ok(m.der.clone());
            }
        }
        // Signing takes well under a millisecond: holding the lock keeps two requests from both signing.
        let der = Arc::new(ca.crl(issuer)?);
        made.insert(issuer, Made { index: stamp, at: Instant::now(), der: der.clone() });
        Ok(der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_is_published_at_once_and_nothing_is_signed_twice_otherwise() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = RegionalCa::init(&dir.path().join("ca"), &["gw.test".into()]).expect("ca");
        let crls = Crls::default();
        let first = crls.get(&ca, CrlIssuer::Gateway).expect("crl");
        assert!(Arc::ptr_eq(&first, &crls.get(&ca, CrlIssuer::Gateway).expect("crl")), "kept");
        let lan = crls.get(&ca, CrlIssuer::Lan).expect("crl");
        let issuer = ca.crl_issuer_cert_der(CrlIssuer::Lan);
        assert!(provisioning::check_crl(&lan, issuer).expect("the LAN list").revoked.is_empty());

        // The gateway's certificate revoked: the index changes, the next request gets a list naming it.
        let renewed = ca.renew_gateway_cert(Duration::from_secs(86_400)).expect("renew");
        ca.revoke_serial(&renewed.serial).expect("revoke");
        let after = crls.get(&ca, CrlIssuer::Gateway).expect("crl");
        let listed = provisioning::check_crl(&after, ca.crl_issuer_cert_der(CrlIssuer::Gateway)).expect("checks");
        assert_eq!(listed.revoked, vec![renewed.serial]);
    }
}

//! The regional CA's record of every certificate it issued (`issued.json`): serial → UAI, kind, validity and
//! revocation. The CRL is built from it, and it is what `revoke_uai` searches.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::disk::{self, DiskError};

/// What a certificate is for; decides the issuing intermediate and the extended key usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// A box's TLS client certificate, presented to the gateway (signed by the box-client intermediate).
    Box,
    /// A box's HTTPS server certificate on the school LAN (signed by the LAN-server intermediate).
    Lan,
    /// The gateway's own HTTPS server certificate (signed by the gateway intermediate). Never from a CSR.
    Gateway,
}

impl CertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::Box => "box",
            CertKind::Lan => "lan",
            CertKind::Gateway => "gateway",
        }
    }
}

/// One issued certificate as the index remembers it. Times are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuedRecord {
    /// The school it was issued to; empty for the gateway's own certificate.
    pub uai: String,
    pub kind: CertKind,
    pub not_before: u64,
    pub not_after: u64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<u64>,
}

/// Expired certificates stay in the index this long (for the audit trail and `relais status` of old boxes),
/// then go: with 90-day certificates renewed at half-life, keeping them forever would grow the file for ever.
pub(crate) const KEEP_EXPIRED_SECS: u64 = 365 * 86_400;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Index {
    /// Serial (lowercase hex, as in [`crate::Issued::serial`]) → record.
    pub(crate) certificates: BTreeMap<String, IssuedRecord>,
}

impl Index {
    pub(crate) fn load(path: &Path) -> Result<Index, DiskError> {
        disk::read_json(path)
    }

    pub(crate) fn save(&mut self, path: &Path, now: u64) -> Result<(), DiskError> {
        self.certificates.retain(|_, r| r.not_after.saturating_add(KEEP_EXPIRED_SECS) > now);
        disk::write_json(path, self)
    }
}

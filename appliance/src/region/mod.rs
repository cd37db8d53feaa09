//! The regional gateway: its certificate authority on disk, the TLS configuration that accepts users and
//! enrolled boxes, and the enrollment endpoints (EST, RFC 7030, in a JSON flavour).

pub mod crl;
pub mod est;
pub mod sync;
pub mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use provisioning::RegionalCa;

/// The CA's folder inside the gateway's data folder.
pub fn ca_dir(data: &Path) -> PathBuf {
    data.join("ca")
}

/// What the gateway's request handlers need of the region.
pub struct Gateway {
    pub ca: RegionalCa,
    pub tls: tls::GatewayTls,
    /// Validity of the box and LAN certificates it signs.
    pub certificate_validity: Duration,
    /// What each school's box may read by hash (see `sync`).
    pub offers: sync::Offers,
    /// The revocation lists it publishes at `/crl/` (see `crl`).
    pub crls: crl::Crls,
}

impl Gateway {
    pub fn open(data: &Path, certificate_validity: Duration) -> Result<Gateway, tls::TlsError> {
        let dir = ca_dir(data);
        let ca = RegionalCa::open(&dir).map_err(|e| tls::TlsError::Ca(e.to_string()))?;
        let tls = tls::GatewayTls::new(&dir)?;
        Ok(Gateway { ca, tls, certificate_validity, offers: sync::Offers::default(), crls: crl::Crls::default() })
    }
}

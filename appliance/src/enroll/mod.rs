//! The box's identity with the region: applying a provisioning bundle, enrolling at first contact, renewing
//! certificates at half-life.
//!
//! - [`identity`]: `<data>/identity/`, the pinned regional root, the UAI, the token, keys and certificates.
//! - [`apply`]: `relais provision apply`, all or nothing.
//! - [`client`]: the pinned HTTPS client of the gateway's enrollment endpoints (EST, JSON flavour).
//! - [`crl`]: the box's copy of the region's LAN revocation list, served to the school's PCs.
//! - [`worker`]: the background worker of `relais serve` that enrolls and renews.

pub mod apply;
pub mod client;
pub mod crl;
pub mod identity;
pub mod worker;

pub use identity::{CertInfo, Identity, IdentityError};
pub use worker::{spawn, EnrollHandle, EnrollStatus, EnrollWorker};

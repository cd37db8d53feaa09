//! The trust crate's integration tests, all with real keys, real signatures and real TLS. Contents:
//!
//! - `util`: a region in a temp folder, boxes with their keys, zip surgery for tampered bundles.
//! - `ca`: CA folder and key modes, issuance (chain, validity, UAI binding, SANs), revocation and the CRL.
//! - `crl`: each authority's list, where every certificate says it is published, what revoking a school lists.
//! - `bundle`: a good bundle round-trips; every kind of bad bundle is refused with its own error.
//! - `tls`: a rustls handshake between a box and the gateway with the issued certificates and the CRL.

mod util;

mod bundle;
mod ca;
mod crl;
mod tls;

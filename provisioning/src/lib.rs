//! Trust between the school box and the regional gateway: the regional CA, box keys and CSRs, one-time
//! enrollment tokens, and the signed provisioning bundles a technician carries to a school.
//!
//! No private key ever travels: the CA's keys stay in the CA folder, each box's key is generated on the box
//! ([`BoxKey`]), and only CSRs, certificates, CRLs and one-time tokens cross the wire or the USB stick.
//! Backup archives live with the appliance's store, not here.

mod box_key;
mod bundle;
mod ca;
mod clock;
mod crl;
pub mod disk;
mod index;
mod self_signed;
mod token;

pub use box_key::{BoxKey, BoxKeyError};
pub use bundle::{
    Bundle, BundleError, BundleSpec, Manifest, ManifestMember, VerifyOptions, CA_CERT, CONFIG, DIRECTORY_PREFIX,
    FORMAT, MANIFEST, MAX_MEMBERS, MAX_MEMBER_BYTES, MAX_TOTAL_BYTES, MAX_ZIP_BYTES, SIGNATURE, TOKEN,
};
pub use ca::{
    fingerprint, uai_of_cert, CaError, Issued, RegionalCa, BACKDATE, CRL_VALIDITY, DEFAULT_LEAF_VALIDITY,
    INTERMEDIATE_VALIDITY, MAX_LEAF_VALIDITY, ROOT_VALIDITY, UAI_URI_PREFIX,
};
pub use crl::{
    check_crl, crl_der_of, crl_pem, crl_url, default_crl_base, distribution_points, lan_crl_urls, CrlError, CrlInfo,
    CrlIssuer, CrlUrlError, CRL_CONTENT_TYPE, CRL_PATH_PREFIX,
};
pub use disk::DiskError;
pub use index::{CertKind, IssuedRecord};
pub use self_signed::{self_signed, SelfSigned, SelfSignedError};
pub use token::{new_token, token_hash, TokenError, TokenRecord, TokenStore};

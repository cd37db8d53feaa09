//! A self-signed server certificate for a box that has no LAN certificate from its region yet (before
//! enrollment, or standalone): HTTPS on the school LAN from the first start, with a certificate a technician can
//! install as trusted (or a browser can keep an exception for), because the box keeps it across restarts.
//!
//! It is an end-entity certificate (CA:FALSE, EKU serverAuth) that signs itself: browsers refuse a CA
//! certificate presented as a server's (Firefox: `CA_CERT_USED_AS_END_ENTITY`), while a self-signed leaf
//! installed as a trusted root is accepted by Windows, Firefox and webpki alike.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};

use crate::ca::{check_names, new_serial, san_list, BACKDATE, MAX_LEAF_VALIDITY};
use crate::clock::{to_offset, unix_secs};

/// Why the certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    #[error("« {0} » is neither a DNS name nor an IP address")]
    BadName(String),
    #[error("a server certificate needs at least one DNS name or IP address")]
    NoNames,
    #[error("validity {0:?} refused: it must be more than 0 and at most 398 days")]
    BadValidity(Duration),
    #[error("cannot make the self-signed certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A key and the certificate it signed for itself, both PEM (the key PKCS#8, to be stored 0600).
pub struct SelfSigned {
    pub key_pem: String,
    pub cert_pem: String,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("SelfSigned").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// A new ECDSA P-256 key and a self-signed server certificate for `names` (DNS names or IP literals; DNS
/// names are lowercased, duplicates dropped), valid from [`BACKDATE`] before now until now + `validity`
/// (at most [`MAX_LEAF_VALIDITY`], the browsers' limit for server certificates). The first name is the CN.
pub fn self_signed(names: &[String], validity: Duration) -> Result<SelfSigned, SelfSignedError> {
    if validity.is_zero() || validity > MAX_LEAF_VALIDITY {
        return Err(SelfSignedError::BadValidity(validity));
    }
    let names = check_names(names).map_err(|e| match e {
        crate::CaError::BadName(name) => SelfSignedError::BadName(name),
        _ => SelfSignedError::NoNames,
    })?;
    let sans = san_list(&names).map_err(|_| SelfSignedError::BadName(names.join(", ")))?;
    let now = unix_secs(SystemTime::now());
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Relais");
    // What a certificate viewer shows first: say what it is, so a technician recognises it in a trust store.
    let label = names.first().map(String::as_str).unwrap_or("Relais");
    params.distinguished_name.push(DnType::CommonName, format!("Relais {label} (auto-signé)"));
    params.not_before = to_offset(now.saturating_sub(BACKDATE.as_secs()));
    params.not_after = to_offset(now.saturating_add(validity.as_secs()));
    params.serial_number = Some(SerialNumber::from_slice(&new_serial().1));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(SelfSigned { key_pem: key.serialize_pem(), cert_pem: cert.pem() })
}

#[cfg(test)]
mod tests {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;

    #[test]
    fn covers_the_names_for_the_validity_asked() {
        let names = vec!["ent.0123456a.lan".to_string(), "Localhost".into(), "127.0.0.1".into(), "localhost".into()];
        let made = self_signed(&names, Duration::from_secs(30 * 86_400)).expect("self-signed");
        assert!(made.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
        let der = crate::ca::der_of(made.cert_pem.as_bytes(), &["CERTIFICATE"]).expect("PEM");
        let (_, cert) = X509Certificate::from_der(&der).expect("certificate");
        assert_eq!(cert.subject().to_string(), cert.issuer().to_string(), "self-issued");
        assert!(cert.verify_signature(None).is_ok(), "self-signed");
        assert!(!cert.is_ca(), "an end-entity certificate, usable as a server's");
        let san = cert.subject_alternative_name().expect("SAN parses").expect("a SAN");
        let shown: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(shown, vec!["ent.0123456a.lan", "localhost", "[127, 0, 0, 1]"]);
        let validity = cert.validity();
        let span = validity.not_after.timestamp() - validity.not_before.timestamp();
        assert_eq!(span as u64, 30 * 86_400 + BACKDATE.as_secs());
        // Two calls make two keys: the caller keeps the first one on disk.
        let again = self_signed(&names, Duration::from_secs(86_400)).expect("again");
        assert_ne!(again.key_pem, made.key_pem);
    }

    #[test]
    fn refuses_bad_input() {
        let day = Duration::from_secs(86_400);
        assert!(matches!(self_signed(&[], day), Err(SelfSignedError::NoNames)));
        assert!(matches!(self_signed(&["bad name".into()], day), Err(SelfSignedError::BadName(_))));
        assert!(matches!(self_signed(&["a.lan".into()], Duration::ZERO), Err(SelfSignedError::BadValidity(_))));
        assert!(matches!(self_signed(&["a.lan".into()], day * 400), Err(SelfSignedError::BadValidity(_))));
    }
}

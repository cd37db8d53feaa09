//! The regional certificate authority: a root, three intermediates (box clients, LAN servers, the gateway),
//! issuance from CSRs bound to a UAI, the index of what was issued, revocation and one CRL per authority
//! (where each is published and why: `crl.rs`).
//!
//! Every private key is generated where it is used: the CA's own keys here, each box's key on the box
//! ([`crate::BoxKey`]). Only CSRs and certificates travel.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertificateSigningRequestParams,
    CrlDistributionPoint, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, NameConstraints, PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::clock::{from_unix, to_offset, unix_secs};
use crate::crl::{self, CrlIssuer, CrlUrlError};
use crate::disk::{self, DirLock, DiskError, PUBLIC_MODE, SECRET_MODE};
use crate::index::{CertKind, Index, IssuedRecord};

/// Default lifetime of a leaf certificate (box client, LAN server, gateway): short, so that a stolen box stops
/// working on its own and revocation matters only for the weeks that remain. Renew at half-life.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// The longest leaf validity we sign: the browsers' limit for server certificates (398 days).
pub const MAX_LEAF_VALIDITY: Duration = Duration::from_secs(398 * 86_400);
/// Root lifetime: every box trusts it, so replacing it means re-provisioning the region.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Intermediate lifetime: half the root's, so they can be rolled over under the same root.
pub const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 86_400);
/// Leaves start this much before issuance: a verifier whose clock is a few minutes behind the CA's must not
/// see a fresh certificate as "not yet valid". The end is exactly issuance + the validity asked for.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// How long a CRL is declared fresh (`nextUpdate`); the gateway serves a new one after every revocation and
/// at least hourly, and boxes fetch the LAN list daily.
pub const CRL_VALIDITY: Duration = Duration::from_secs(7 * 86_400);
/// The URI SAN prefix that binds a box certificate to its school: `urn:relais:uai:0123456A`.
pub const UAI_URI_PREFIX: &str = "urn:relais:uai:";

const META: &str = "ca.json";
const INDEX: &str = "issued.json";
const ROOT: (&str, &str) = ("root.crt", "root.key");
const BOX_CA: (&str, &str) = ("box-ca.crt", "box-ca.key");
const LAN_CA: (&str, &str) = ("lan-ca.crt", "lan-ca.key");
const GATEWAY_CA: (&str, &str) = ("gateway-ca.crt", "gateway-ca.key");
/// The gateway's key and certificate chain in one file, so that renewal replaces both at once: with two files,
/// a crash (or two renewals) between the writes would pair a key with another key's certificate.
const GATEWAY: &str = "gateway.pem";

/// Why the CA could not do what was asked. The messages name the file or the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{dir} already holds a certificate authority ({file} exists); refusing to replace it")]
    AlreadyInitialised { dir: PathBuf, file: &'static str },
    #[error("{dir} holds no certificate authority ({META} is missing); run `relais region init` first")]
    NotInitialised { dir: PathBuf },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("cannot build the {what}: {source}")]
    Rcgen { what: &'static str, source: rcgen::Error },
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    #[error("the certificate signing request names « {csr} » but the certificate is for UAI {uai}")]
    CsrMismatch { csr: String, uai: String },
    #[error("« {0} » is not a UAI: 7 digits then a letter, e.g. 0123456A")]
    BadUai(String),
    #[error("« {0} » is neither a DNS name nor an IP address")]
    BadName(String),
    #[error("a LAN certificate needs at least one DNS name or IP address")]
    NoNames,
    #[error("« {0} » is a name of the regional gateway; a box may not have a certificate for it")]
    ReservedName(String),
    #[error("validity {0:?} refused: it must be more than 0 and at most 398 days")]
    BadValidity(Duration),
    #[error("no certificate with serial {0} was issued by this CA")]
    UnknownSerial(String),
    #[error(transparent)]
    CrlUrl(#[from] CrlUrlError),
}

/// A certificate just issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// Serial number, lowercase hex without separators (the index key; what `revoke_serial` takes).
    pub serial: String,
    /// The leaf then its intermediate, PEM: what the holder presents in TLS.
    pub chain_pem: String,
    /// The leaf alone, DER.
    pub cert_der: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The school it is bound to; empty for the gateway's certificate.
    pub uai: String,
    pub kind: CertKind,
}

/// What `ca.json` records: the parameters chosen at `init`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    format: u32,
    created_at: u64,
    /// DNS names and IP literals of the gateway, in its certificate and excluded from LAN certificates.
    gateway_names: Vec<String>,
    /// `http://HOST[:PORT][/PATH]` under which the gateway publishes the lists (`/crl/<issuer>.crl`), written
    /// into every certificate but the LAN ones; absent in a CA made before it existed, which then uses
    /// [`crate::default_crl_base`] of its gateway names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crl_base: Option<String>,
}

/// One CA certificate with its signing key.
struct Authority {
    der: Vec<u8>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The regional CA, opened from its folder. Cheap to share behind an `Arc`: issuing and revoking take `&self`
/// and serialise their index updates through the folder's lock file.
pub struct RegionalCa {
    dir: PathBuf,
    meta: Meta,
    root: Authority,
    box_ca: Authority,
    lan_ca: Authority,
    gateway_ca: Authority,
}

impl fmt::Debug for RegionalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("RegionalCa")
            .field("dir", &self.dir)
            .field("root_fingerprint", &self.root_fingerprint())
            .field("gateway_names", &self.meta.gateway_names)
            .finish()
    }
}

impl RegionalCa {
    /// Creates a new CA in `dir` (created 0700 if missing): root, the three intermediates, and the gateway's
    /// server certificate for `gateway_names` (DNS names or IP literals) valid [`DEFAULT_LEAF_VALIDITY`].
    /// Refuses a folder that already holds any of the CA's files. The revocation lists are published under
    /// `http://<first gateway name>` (see [`RegionalCa::init_with_crl_base`]).
    pub fn init(dir: &Path, gateway_names: &[String]) -> Result<RegionalCa, CaError> {
        RegionalCa::init_with_crl_base(dir, gateway_names, None)
    }

    /// As [`RegionalCa::init`], with the base URL of the revocation lists, `http://HOST[:PORT][/PATH]`: where
    /// the gateway's plain-HTTP listener answers `/crl/<issuer>.crl` for anyone who checks a certificate of the
    /// region (boxes, users at home, the gateway itself). It is written into every certificate for its whole
    /// life, so it is chosen once, here; `None` takes `http://<first gateway name>` (port 80).
    pub fn init_with_crl_base(
        dir: &Path,
        gateway_names: &[String],
        crl_base: Option<&str>,
    ) -> Result<RegionalCa, CaError> {
        let gateway_names = check_names(gateway_names)?;
        let crl_base =
            crl::check_crl_base(&crl_base.map_or_else(|| crl::default_crl_base(&gateway_names), str::to_owned))?;
        disk::create_private_dir(dir)?;
        for file in [META, INDEX, ROOT.0, ROOT.1, BOX_CA.1, LAN_CA.1, GATEWAY_CA.1, GATEWAY] {
            if dir.join(file).symlink_metadata().is_ok() {
                return Err(CaError::AlreadyInitialised { dir: dir.to_owned(), file });
            }
        }
        let now = unix_secs(SystemTime::now());
        let label = gateway_names.first().map(String::as_str).unwrap_or("Relais");

        let root_key = new_key("root key")?;
        let mut root = ca_params(format!("Relais root CA ({label})"), now, ROOT_VALIDITY, 1);
        root.key_usages.push(KeyUsagePurpose::DigitalSignature); // manifest.sig of bundles
        let root_cert = root.self_signed(&root_key).map_err(rcgen_err("root certificate"))?;
        write_key(dir, ROOT.1, &root_key)?;
        disk::write_new(&dir.join(ROOT.0), root_cert.pem().as_bytes(), PUBLIC_MODE)?;
        let root_issuer = Issuer::new(root, root_key);

        let intermediates = [
            (BOX_CA, "Relais box client CA", ExtendedKeyUsagePurpose::ClientAuth),
            (LAN_CA, "Relais LAN server CA", ExtendedKeyUsagePurpose::ServerAuth),
            (GATEWAY_CA, "Relais gateway CA", ExtendedKeyUsagePurpose::ServerAuth),
        ];
        for ((cert_file, key_file), name, eku) in intermediates {
            let key = new_key("intermediate key")?;
            let mut params = ca_params(format!("{name} ({label})"), now, INTERMEDIATE_VALIDITY, 0);
            // An EKU on the intermediate limits what its leaves can be used for (webpki and browsers check
            // it along the chain): a box client certificate can never pass as a server, nor a LAN server
            // certificate as a box at the gateway.
            params.extended_key_usages = vec![eku];
            params.use_authority_key_identifier_extension = true;
            // On the gateway: the root's list matters to whoever checks a whole chain, and an intermediate
            // serves every school at once, so no school's box can stand for it.
            params.crl_distribution_points =
                vec![CrlDistributionPoint { uris: vec![crl::crl_url(&crl_base, CrlIssuer::Root)] }];
            if cert_file == LAN_CA.0 {
                // Defence in depth behind the check in `issue_lan_cert`: even a wrongly issued LAN
                // certificate for the gateway's name fails verification, so a box can never impersonate
                // the gateway to another box.
                params.name_constraints =
                    Some(NameConstraints { permitted_subtrees: vec![], excluded_subtrees: subtrees(&gateway_names) });
            }
            let cert = params.signed_by(&key, &root_issuer).map_err(rcgen_err("intermediate certificate"))?;
            write_key(dir, key_file, &key)?;
            disk::write_new(&dir.join(cert_file), cert.pem().as_bytes(), PUBLIC_MODE)?;
        }

        let meta = Meta { format: 1, created_at: now, gateway_names, crl_base: Some(crl_base) };
        // ca.json last: it is what `open` looks for, so an interrupted init is never mistaken for a CA.
        disk::write_json(&dir.join(META), &meta)?;
        let ca = RegionalCa::open(dir)?;
        ca.renew_gateway_cert(DEFAULT_LEAF_VALIDITY)?;
        Ok(ca)
    }

    /// Opens the CA in `dir`. Refuses any key file readable by group or others.
    pub fn open(dir: &Path) -> Result<RegionalCa, CaError> {
        let meta_path = dir.join(META);
        if meta_path.symlink_metadata().is_err() {
            return Err(CaError::NotInitialised { dir: dir.to_owned() });
        }
        let meta: Meta = serde_json::from_slice(&disk::read(&meta_path)?)
            .map_err(|e| CaError::BadFile { path: meta_path.clone(), message: e.to_string() })?;
        if meta.format != 1 {
            return Err(CaError::BadFile { path: meta_path, message: format!("unknown format {}", meta.format) });
        }
        Ok(RegionalCa {
            root: load_authority(dir, ROOT)?,
            box_ca: load_authority(dir, BOX_CA)?,
            lan_ca: load_authority(dir, LAN_CA)?,
            gateway_ca: load_authority(dir, GATEWAY_CA)?,
            dir: dir.to_owned(),
            meta,
        })
    }

    /// The CA's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The region's enrollment tokens, kept beside the CA (`tokens.json`).
    pub fn tokens(&self) -> Result<crate::TokenStore, crate::TokenError> {
        crate::TokenStore::open(&self.dir)
    }

    /// Signs a box's TLS client certificate for `uai` from its CSR (DER or PEM). Only the CSR's public key is
    /// used (its signature is checked); the subject and names are ours: CN = UAI and the URI SAN
    /// `urn:relais:uai:<UAI>` that [`uai_of_cert`] reads back. A CSR whose CN names another school is refused.
    pub fn issue_box_cert(&self, csr: &[u8], uai: &str, validity: Duration) -> Result<Issued, CaError> {
        check_uai(uai)?;
        let public_key = parse_csr(csr, uai)?;
        let uri = format!("{UAI_URI_PREFIX}{uai}");
        let sans = vec![SanType::URI(uri.try_into().map_err(rcgen_err("UAI URI"))?)];
        let crl_urls = vec![self.crl_url(CrlIssuer::Box)];
        self.issue(CertKind::Box, &public_key, uai, uai, sans, crl_urls, validity)
    }

    /// Signs a box's HTTPS server certificate for the school LAN, for `names` (DNS names and IP literals).
    /// The gateway's own names are refused: a box must never hold a certificate that passes for the gateway.
    /// Its CRL distribution points are on the box itself, one per name ([`crate::lan_crl_urls`]): the school's
    /// PCs check it, and must be able to while the uplink is down.
    pub fn issue_lan_cert(
        &self,
        csr: &[u8],
        uai: &str,
        names: &[String],
        validity: Duration,
    ) -> Result<Issued, CaError> {
        check_uai(uai)?;
        let names = check_names(names)?;
        if let Some(reserved) = names.iter().find(|n| self.meta.gateway_names.contains(n)) {
            return Err(CaError::ReservedName(reserved.clone()));
        }
        let public_key = parse_csr(csr, uai)?;
        self.issue(CertKind::Lan, &public_key, uai, uai, san_list(&names)?, crl::lan_crl_urls(&names), validity)
    }

    /// Issues a new server certificate (and key) for the gateway, with the names given at `init`, and makes
    /// it the one [`gateway_cert_chain_pem`](Self::gateway_cert_chain_pem) returns. The gateway's renewal
    /// worker calls this at half-life; it must be the only caller (two renewals at once could pair one's key
    /// with the other's certificate).
    pub fn renew_gateway_cert(&self, validity: Duration) -> Result<Issued, CaError> {
        let key = new_key("gateway key")?;
        let names = &self.meta.gateway_names;
        let cn = names.first().cloned().unwrap_or_default();
        let crl_urls = vec![self.crl_url(CrlIssuer::Gateway)];
        let issued = self.issue(CertKind::Gateway, &key, "", &cn, san_list(names)?, crl_urls, validity)?;
        let pem = format!("{}{}", key.serialize_pem(), issued.chain_pem);
        disk::write_atomic(&self.dir.join(GATEWAY), pem.as_bytes(), SECRET_MODE)?;
        Ok(issued)
    }

    /// Signs one leaf; `crl_urls` are the URIs of its one CRL distribution point (alternatives for the same
    /// list, tried in order).
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        kind: CertKind,
        public_key: &impl PublicKeyData,
        uai: &str,
        common_name: &str,
        sans: Vec<SanType>,
        crl_urls: Vec<String>,
        validity: Duration,
    ) -> Result<Issued, CaError> {
        if validity.is_zero() || validity > MAX_LEAF_VALIDITY {
            return Err(CaError::BadValidity(validity));
        }
        let authority = match kind {
            CertKind::Box => &self.box_ca,
            CertKind::Lan => &self.lan_ca,
            CertKind::Gateway => &self.gateway_ca,
        };
        let now = unix_secs(SystemTime::now());
        let not_before = now.saturating_sub(BACKDATE.as_secs());
        let not_after = now.saturating_add(validity.as_secs());
        let (serial, serial_bytes) = new_serial();

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match kind {
            CertKind::Box => ExtendedKeyUsagePurpose::ClientAuth,
            CertKind::Lan | CertKind::Gateway => ExtendedKeyUsagePurpose::ServerAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        if !crl_urls.is_empty() {
            params.crl_distribution_points = vec![CrlDistributionPoint { uris: crl_urls }];
        }
        let cert = params.signed_by(public_key, &authority.issuer).map_err(rcgen_err("certificate"))?;

        // Recorded before it is handed out: a certificate the index does not know could not be revoked.
        let record = IssuedRecord { uai: uai.to_owned(), kind, not_before, not_after, revoked_at: None };
        self.update_index(|index| {
            // 120 random bits make a collision absurd; the check keeps the index a function anyway.
            if index.certificates.insert(serial.clone(), record).is_some() {
                return Err(CaError::BadFile {
                    path: self.dir.join(INDEX),
                    message: format!("serial {serial} issued twice"),
                });
            }
            Ok(())
        })?;
        Ok(Issued {
            serial,
            chain_pem: format!("{}{}", cert.pem(), authority.pem),
            cert_der: cert.der().to_vec(),
            not_before: from_unix(not_before),
            not_after: from_unix(not_after),
            uai: uai.to_owned(),
            kind,
        })
    }

    /// Marks one certificate revoked (idempotent: the first revocation time is kept).
    pub fn revoke_serial(&self, serial: &str) -> Result<(), CaError> {
        let serial = normalise_hex(serial);
        let now = unix_secs(SystemTime::now());
        self.update_index(|index| match index.certificates.get_mut(&serial) {
            Some(record) => {
                record.revoked_at.get_or_insert(now);
                Ok(())
            }
            None => Err(CaError::UnknownSerial(serial.clone())),
        })
    }

    /// Revokes every certificate (box client and LAN) of one school, e.g. a stolen or replaced box. Returns the
    /// serials revoked by this call (those already revoked are not repeated).
    pub fn revoke_uai(&self, uai: &str) -> Result<Vec<String>, CaError> {
        check_uai(uai)?;
        let now = unix_secs(SystemTime::now());
        let mut revoked = Vec::new();
        self.update_index(|index| {
            for (serial, record) in index.certificates.iter_mut() {
                if record.uai == uai && record.revoked_at.is_none() {
                    record.revoked_at = Some(now);
                    revoked.push(serial.clone());
                }
            }
            Ok(())
        })?;
        Ok(revoked)
    }

    /// Every certificate in the index (expired ones are dropped a year after they expire).
    pub fn certificates(&self) -> Result<Vec<(String, IssuedRecord)>, CaError> {
        Ok(Index::load(&self.dir.join(INDEX))?.certificates.into_iter().collect())
    }

    /// The index's record of one serial.
    pub fn certificate(&self, serial: &str) -> Result<Option<IssuedRecord>, CaError> {
        Ok(Index::load(&self.dir.join(INDEX))?.certificates.remove(&normalise_hex(serial)))
    }

    /// The box-client intermediate's CRL ([`RegionalCa::crl`] of [`CrlIssuer::Box`]): give it to rustls'
    /// `WebPkiClientVerifier` (with `only_check_end_entity_revocation()`) so the gateway refuses a revoked box
    /// during the TLS handshake; rebuild the verifier after each revocation.
    pub fn crl_der(&self) -> Result<Vec<u8>, CaError> {
        self.crl(CrlIssuer::Box)
    }

    /// A fresh X.509 CRL (DER) of one authority, signed by it, listing every certificate it issued that is
    /// revoked and not expired yet: box client certificates for [`CrlIssuer::Box`], LAN certificates for
    /// [`CrlIssuer::Lan`], gateway certificates for [`CrlIssuer::Gateway`]; the root's list names revoked
    /// intermediates, and the index records none (an intermediate is replaced with the whole region), so it is
    /// empty but signed, which is what a verifier that checks the chain needs. `thisUpdate` is backdated like
    /// certificates, `nextUpdate` is [`CRL_VALIDITY`] ahead, and the CRL number is the issue time in seconds,
    /// which only grows. No issuing distribution point: each list is complete for its authority, so it is
    /// authoritative for every URL its certificates name.
    ///
    /// (Returns a `Result`, not a bare `Vec`: it reads the index and signs, and either can fail.)
    pub fn crl(&self, issuer: CrlIssuer) -> Result<Vec<u8>, CaError> {
        let (kind, authority) = match issuer {
            CrlIssuer::Root => (None, &self.root),
            CrlIssuer::Box => (Some(CertKind::Box), &self.box_ca),
            CrlIssuer::Lan => (Some(CertKind::Lan), &self.lan_ca),
            CrlIssuer::Gateway => (Some(CertKind::Gateway), &self.gateway_ca),
        };
        let index = Index::load(&self.dir.join(INDEX))?;
        let now = unix_secs(SystemTime::now());
        let mut revoked_certs = Vec::new();
        for (serial, record) in &index.certificates {
            let Some(revoked_at) = record.revoked_at else { continue };
            if Some(record.kind) != kind || record.not_after <= now {
                continue;
            }
            let bytes = decode_hex(serial).ok_or_else(|| CaError::BadFile {
                path: self.dir.join(INDEX),
                message: format!("serial « {serial} » is not hex"),
            })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: to_offset(revoked_at),
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: to_offset(now.saturating_sub(BACKDATE.as_secs())),
            next_update: to_offset(now.saturating_add(CRL_VALIDITY.as_secs())),
            crl_number: SerialNumber::from_slice(&now.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&authority.issuer).map_err(rcgen_err("CRL"))?;
        Ok(crl.der().to_vec())
    }

    /// Where the gateway publishes the lists: `http://HOST[:PORT][/PATH]`, without a trailing `/`.
    pub fn crl_base(&self) -> String {
        self.meta.crl_base.clone().unwrap_or_else(|| crl::default_crl_base(&self.meta.gateway_names))
    }

    /// The URL of one authority's list on the gateway, as written into the certificates it covers (LAN
    /// certificates name their box instead, see [`crate::lan_crl_urls`]).
    pub fn crl_url(&self, issuer: CrlIssuer) -> String {
        crl::crl_url(&self.crl_base(), issuer)
    }

    /// The certificate of the authority that signs `issuer`'s list, DER.
    pub fn crl_issuer_cert_der(&self, issuer: CrlIssuer) -> &[u8] {
        match issuer {
            CrlIssuer::Root => &self.root.der,
            CrlIssuer::Box => &self.box_ca.der,
            CrlIssuer::Lan => &self.lan_ca.der,
            CrlIssuer::Gateway => &self.gateway_ca.der,
        }
    }

    pub fn root_cert_pem(&self) -> &str {
        &self.root.pem
    }

    pub fn root_cert_der(&self) -> &[u8] {
        &self.root.der
    }

    /// SHA-256 of the root certificate's DER, lowercase hex: what a technician compares and a box pins.
    pub fn root_fingerprint(&self) -> String {
        fingerprint(&self.root.der)
    }

    /// The box-client intermediate, PEM. The gateway's client verifier should trust this one alone (not the
    /// root), so that nothing but a box certificate can authenticate as a box.
    pub fn box_ca_cert_pem(&self) -> &str {
        &self.box_ca.pem
    }

    pub fn box_ca_cert_der(&self) -> &[u8] {
        &self.box_ca.der
    }

    /// The LAN-server intermediate, PEM.
    pub fn lan_ca_cert_pem(&self) -> &str {
        &self.lan_ca.pem
    }

    /// The names the gateway's certificate carries.
    pub fn gateway_names(&self) -> &[String] {
        &self.meta.gateway_names
    }

    /// The gateway's server certificate then the gateway intermediate, PEM.
    pub fn gateway_cert_chain_pem(&self) -> Result<String, CaError> {
        self.gateway_pem(&["CERTIFICATE"])
    }

    /// The gateway's private key, PKCS#8 PEM (refused if `gateway.pem` is looser than 0600).
    pub fn gateway_key_pem(&self) -> Result<String, CaError> {
        self.gateway_pem(&["PRIVATE KEY"])
    }

    /// The blocks of `gateway.pem` with one of `labels`, in order, re-encoded as PEM.
    fn gateway_pem(&self, labels: &[&str]) -> Result<String, CaError> {
        let path = self.dir.join(GATEWAY);
        let bytes = disk::read_secret(&path)?;
        let mut out = String::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
            let block = block.map_err(|e| CaError::BadFile { path: path.clone(), message: format!("bad PEM: {e}") })?;
            if labels.contains(&block.label.as_str()) {
                out.push_str(&pem_encode(&block.label, &block.contents));
            }
        }
        if out.is_empty() {
            return Err(CaError::BadFile { path, message: format!("no {} in it", labels.join(" or ")) });
        }
        Ok(out)
    }

    /// The root's key, to sign bundle manifests (see `bundle.rs`).
    pub(crate) fn root_key(&self) -> &KeyPair {
        self.root.issuer.key()
    }

    fn update_index(&self, change: impl FnOnce(&mut Index) -> Result<(), CaError>) -> Result<(), CaError> {
        let _lock = DirLock::acquire(&self.dir)?;
        let path = self.dir.join(INDEX);
        let mut index = Index::load(&path)?;
        change(&mut index)?;
        index.save(&path, unix_secs(SystemTime::now()))?;
        Ok(())
    }
}

/// The UAI a box certificate is bound to, read from its `urn:relais:uai:<UAI>` URI SAN; `None` when there is
/// no such SAN, more than one, or it is not a UAI. The gateway calls it on the client certificate of a
/// connection that rustls already verified against the box-client intermediate and the CRL, and serves that
/// connection as that school only. (The subject CN carries the UAI too, for people; the SAN is what counts.)
pub fn uai_of_cert(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut found: Option<&str> = None;
    for name in &san.value.general_names {
        if let GeneralName::URI(uri) = name {
            if let Some(uai) = uri.strip_prefix(UAI_URI_PREFIX) {
                if found.is_some_and(|f| f != uai) {
                    return None;
                }
                found = Some(uai);
            }
        }
    }
    found.filter(|u| firmware_config::is_uai(u)).map(str::to_owned)
}

/// SHA-256 of `der`, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase, without the `:` or spaces people paste from `openssl x509 -fingerprint`.
pub(crate) fn normalise_hex(text: &str) -> String {
    text.chars().filter(|c| !matches!(c, ':' | ' ')).flat_map(char::to_lowercase).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// PEM text of one DER block: base64 in 64-character lines, as RFC 7468 asks.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The first DER block of `bytes` when it is PEM with one of `labels`, else `bytes` as they are (DER).
pub(crate) fn der_of(bytes: &[u8], labels: &[&str]) -> Result<Vec<u8>, String> {
    let trimmed = bytes.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(trimmed).map_err(|e| format!("bad PEM: {e}"))?;
    if !labels.contains(&pem.label.as_str()) {
        return Err(format!("PEM block « {} » where {} was expected", pem.label, labels.join(" or ")));
    }
    Ok(pem.contents)
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { what, source }
}

fn check_uai(uai: &str) -> Result<(), CaError> {
    if firmware_config::is_uai(uai) {
        Ok(())
    } else {
        Err(CaError::BadUai(uai.to_owned()))
    }
}

/// Lowercases DNS names, checks each is a DNS name or an IP literal, and drops duplicates.
pub(crate) fn check_names(names: &[String]) -> Result<Vec<String>, CaError> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let name = name.trim().to_ascii_lowercase();
        if name.parse::<IpAddr>().is_err() && !is_dns_name(&name) {
            return Err(CaError::BadName(name));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err(CaError::NoNames);
    }
    Ok(out)
}

/// RFC 1123 host names, no wildcard (a box serves its own names only), no trailing dot.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

pub(crate) fn san_list(names: &[String]) -> Result<Vec<SanType>, CaError> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into().map_err(|_| CaError::BadName(n.clone()))?)),
        })
        .collect()
}

fn subtrees(names: &[String]) -> Vec<GeneralSubtree> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => {
                GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(ip, if ip.is_ipv4() { 32 } else { 128 }))
            }
            Err(_) => GeneralSubtree::DnsName(n.clone()),
        })
        .collect()
}

fn ca_params(common_name: String, now: u64, validity: Duration, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Relais");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.not_before = to_offset(now.saturating_sub(BACKDATE.as_secs()));
    params.not_after = to_offset(now.saturating_add(validity.as_secs()));
    params.serial_number = Some(SerialNumber::from_slice(&new_serial().1));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// 16 random bytes, the first in 0x01..=0x7f: positive and with no leading zero, so the DER INTEGER is these
/// exact bytes and the hex we record is the hex every tool prints.
pub(crate) fn new_serial() -> (String, [u8; 16]) {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (hex(&bytes), bytes)
}

fn new_key(what: &'static str) -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rcgen_err(what))
}

fn write_key(dir: &Path, file: &str, key: &KeyPair) -> Result<(), CaError> {
    Ok(disk::write_new(&dir.join(file), key.serialize_pem().as_bytes(), SECRET_MODE)?)
}

fn load_authority(dir: &Path, (cert_file, key_file): (&str, &str)) -> Result<Authority, CaError> {
    let key_path = dir.join(key_file);
    let key_pem = String::from_utf8(disk::read_secret(&key_path)?)
        .map_err(|_| CaError::BadFile { path: key_path.clone(), message: "not UTF-8".into() })?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| CaError::BadFile { path: key_path.clone(), message: format!("not a private key: {e}") })?;
    let cert_path = dir.join(cert_file);
    let pem = String::from_utf8(disk::read(&cert_path)?)
        .map_err(|_| CaError::BadFile { path: cert_path.clone(), message: "not UTF-8".into() })?;
    let der = der_of(pem.as_bytes(), &["CERTIFICATE"])
        .map_err(|message| CaError::BadFile { path: cert_path.clone(), message })?;
    let (_, parsed) = X509Certificate::from_der(&der)
        .map_err(|e| CaError::BadFile { path: cert_path.clone(), message: format!("not a certificate: {e}") })?;
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CaError::BadFile {
            path: key_path,
            message: format!("this key does not belong to {}", cert_path.display()),
        });
    }
    let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)
        .map_err(|e| CaError::BadFile { path: cert_path, message: format!("unusable CA certificate: {e}") })?;
    Ok(Authority { der, pem, issuer })
}

/// Parses a CSR (DER or PEM), checks its signature, its key type (ECDSA P-256, like every key in the region)
/// and that its CN, if any, is `uai`; returns its public key, the only part we use.
fn parse_csr(csr: &[u8], uai: &str) -> Result<rcgen::PublicKey, CaError> {
    let der = der_of(csr, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"]).map_err(CaError::BadCsr)?;
    let request = CertificateSigningRequestParams::from_der(&der.as_slice().into())
        .map_err(|e| CaError::BadCsr(e.to_string()))?;
    if request.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(CaError::BadCsr("the key must be ECDSA P-256".into()));
    }
    if let Some(cn) = request.params.distinguished_name.get(&DnType::CommonName) {
        let cn = match cn {
            DnValue::Utf8String(s) => s.clone(),
            DnValue::PrintableString(s) => s.as_str().to_owned(),
            other => format!("{other:?}"),
        };
        if cn != uai {
            return Err(CaError::CsrMismatch { csr: cn, uai: uai.to_owned() });
        }
    }
    Ok(request.public_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(is_dns_name("relais.college-x.lan"));
        assert!(is_dns_name("relais"));
        assert!(!is_dns_name("*.lan"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("-a.b"));
        assert!(matches!(check_names(&["Relais.LAN".into(), "192.168.1.2".into()]), Ok(v) if v[0] == "relais.lan"));
        assert!(matches!(check_names(&[]), Err(CaError::NoNames)));
        assert!(matches!(check_names(&["bad name".into()]), Err(CaError::BadName(_))));
    }

    /// Even if `issue_lan_cert`'s check were bypassed, a LAN certificate for a gateway name must not verify:
    /// the LAN intermediate's name constraints exclude the gateway's names.
    #[test]
    fn lan_intermediate_cannot_vouch_for_the_gateway() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = vec!["gw.region.test".to_owned(), "10.9.8.7".to_owned()];
        let ca = RegionalCa::init(&dir.path().join("ca"), &names).expect("init");
        let key = new_key("test").expect("key");
        let verify = |name: &str| {
            let issued = ca
                .issue(
                    CertKind::Lan,
                    &key,
                    "0123456A",
                    "0123456A",
                    san_list(&[name.to_owned()])?,
                    Vec::new(),
                    DEFAULT_LEAF_VALIDITY,
                )
                .expect("issue bypassing the policy check");
            let leaf_der = rustls::pki_types::CertificateDer::from(issued.cert_der.clone());
            let leaf = webpki::EndEntityCert::try_from(&leaf_der).expect("leaf");
            let root_der = rustls::pki_types::CertificateDer::from(ca.root_cert_der().to_vec());
            let anchors = [webpki::anchor_from_trusted_cert(&root_der).expect("anchor").to_owned()];
            let intermediates = [rustls::pki_types::CertificateDer::from(ca.lan_ca.der.clone())];
            let now = rustls::pki_types::UnixTime::now();
            Ok::<_, CaError>(
                leaf.verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    &anchors,
                    &intermediates,
                    now,
                    webpki::KeyUsage::server_auth(),
                    None,
                    None,
                )
                .map(|_| ()),
            )
        };
        assert!(matches!(verify("relais.college.lan"), Ok(Ok(()))));
        assert!(matches!(verify("gw.region.test"), Ok(Err(webpki::Error::NameConstraintViolation))), "DNS");
        assert!(matches!(verify("10.9.8.7"), Ok(Err(webpki::Error::NameConstraintViolation))), "IP");
        // And the policy check refuses it up front.
        let csr_key = crate::BoxKey::generate(&dir.path().join("box.key")).expect("box key");
        let csr = csr_key.csr_pem("0123456A", CertKind::Lan, &names).expect("csr");
        assert!(matches!(
            ca.issue_lan_cert(csr.as_bytes(), "0123456A", &names, DEFAULT_LEAF_VALIDITY),
            Err(CaError::ReservedName(_))
        ));
    }

    #[test]
    fn hex_round_trips() {
        let (text, bytes) = new_serial();
        assert_eq!(decode_hex(&text).as_deref(), Some(&bytes[..]));
        assert!(bytes[0] >= 1 && bytes[0] <= 0x7f);
        assert_eq!(normalise_hex("AB:cd 01"), "abcd01");
    }
}

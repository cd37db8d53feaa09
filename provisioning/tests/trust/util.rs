//! Test helpers: a region (CA in a temp folder), boxes with real keys, webpki verification, and zip surgery to
//! make the tampered bundles an attacker or a bad USB stick would produce.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use provisioning::{BoxKey, CertKind, Issued, Manifest, ManifestMember, RegionalCa};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

pub const UAI: &str = "0123456A";
pub const OTHER_UAI: &str = "7654321B";
pub const GATEWAY_NAME: &str = "gw.region.test";
pub const DAY: Duration = Duration::from_secs(86_400);

/// A regional CA in its own temp folder.
pub struct Region {
    pub tmp: TempDir,
    pub dir: PathBuf,
    pub ca: RegionalCa,
}

impl Region {
    pub fn new() -> Region {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let names = vec![GATEWAY_NAME.to_owned(), "127.0.0.1".to_owned()];
        let ca = RegionalCa::init(&dir, &names).expect("init CA");
        Region { tmp, dir, ca }
    }

    /// A new box key in this region's temp folder.
    pub fn box_key(&self, name: &str) -> BoxKey {
        BoxKey::generate(&self.tmp.path().join("boxes").join(name).join("box.key")).expect("box key")
    }

    /// A box (key) with its client certificate for `uai`.
    pub fn enrolled_box(&self, name: &str, uai: &str) -> (BoxKey, Issued) {
        let key = self.box_key(name);
        let csr = key.csr_pem(uai, CertKind::Box, &[]).expect("csr");
        let issued = self.ca.issue_box_cert(csr.as_bytes(), uai, 30 * DAY).expect("issue box cert");
        (key, issued)
    }

    pub fn root_key_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("root.key")).expect("root key")
    }
}

/// DER of every certificate in a PEM text, in order.
pub fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).map(|p| p.expect("pem block").contents).collect()
}

/// Verifies `chain_pem` (leaf then intermediates) up to `anchor_der` as rustls would, optionally against CRLs.
pub fn webpki_verify(
    chain_pem: &str,
    anchor_der: &[u8],
    usage: webpki::KeyUsage,
    crls: &[Vec<u8>],
) -> Result<(), webpki::Error> {
    let certs: Vec<CertificateDer<'static>> = pem_certs(chain_pem).into_iter().map(CertificateDer::from).collect();
    let leaf = webpki::EndEntityCert::try_from(&certs[0]).expect("leaf parses");
    let anchor_der = CertificateDer::from(anchor_der.to_vec());
    let anchors = [webpki::anchor_from_trusted_cert(&anchor_der).expect("anchor").to_owned()];
    let parsed_crls: Vec<webpki::CertRevocationList<'_>> =
        crls.iter().map(|c| webpki::BorrowedCertRevocationList::from_der(c).expect("CRL parses").into()).collect();
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = parsed_crls.iter().collect();
    let revocation = if crl_refs.is_empty() {
        None
    } else {
        Some(
            webpki::RevocationOptionsBuilder::new(&crl_refs)
                .expect("crls")
                .with_depth(webpki::RevocationCheckDepth::EndEntity)
                .build(),
        )
    };
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &certs[1..],
        UnixTime::now(),
        usage,
        revocation,
        None,
    )
    .map(|_| ())
}

pub fn crl(der: Vec<u8>) -> CertificateRevocationListDer<'static> {
    CertificateRevocationListDer::from(der)
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// The members of a zip, in order, names as stored.
pub fn read_zip(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut archive = ZipArchive::new(std::fs::File::open(path).expect("open zip")).expect("zip");
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).expect("member");
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).expect("read member");
            (String::from_utf8(file.name_raw().to_vec()).expect("utf8 name"), bytes)
        })
        .collect()
}

/// A valid zip with exactly these members (deflated), so that only their content or names are wrong.
pub fn write_zip(path: &Path, members: &[(String, Vec<u8>)]) {
    std::fs::write(path, zip_bytes(members)).expect("write zip");
}

pub fn zip_bytes(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, bytes) in members {
        zip.start_file(name.as_str(), options).expect("start member");
        zip.write_all(bytes).expect("write member");
    }
    zip.finish().expect("finish zip").into_inner()
}

/// Rewrites the zip at `path` after `edit` changed its member list.
pub fn edit_zip(path: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) {
    let mut members = read_zip(path);
    edit(&mut members);
    write_zip(path, &members);
}

/// ECDSA P-256 SHA-256 (ASN.1) signature with a PKCS#8 PEM key, as the region signs manifests.
pub fn sign(key_pem: &str, message: &[u8]) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(key_pem.as_bytes()).expect("key pem");
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pem.contents, &rng).expect("pkcs8");
    key.sign(&rng, message).expect("sign").as_ref().to_vec()
}

/// Builds a bundle the way a forger holding `key_pem` would: a manifest listing `members` exactly, signed.
/// `manifest` gives every field but `members`.
pub fn forge(path: &Path, key_pem: &str, manifest: &Manifest, members: Vec<(String, Vec<u8>)>) {
    let mut manifest = manifest.clone();
    manifest.members = members
        .iter()
        .map(|(name, bytes)| ManifestMember {
            name: name.clone(),
            blake3: blake3::hash(bytes).to_hex().to_string(),
            size: bytes.len() as u64,
        })
        .collect();
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("manifest json");
    let signature = sign(key_pem, &manifest_bytes);
    let mut all = vec![("manifest.json".to_owned(), manifest_bytes), ("manifest.sig".to_owned(), signature)];
    all.extend(members);
    write_zip(path, &all);
}

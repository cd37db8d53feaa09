//! Provisioning bundles: the signed zip a technician carries on a USB stick to set up a box with no uplink.
//! Written by the region ([`RegionalCa::write_bundle`]), checked whole by the box ([`Bundle::open`]) before
//! anything of it is used.
//!
//! Members: `manifest.json` (what is in the bundle, with the blake3 and size of every other member),
//! `manifest.sig` (ECDSA P-256 / SHA-256, ASN.1 DER, by the region's root key, over the exact bytes of
//! `manifest.json`), `ca.crt` (that root, PEM), `token`, `relais.toml`, and `directory/<file>` exports.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ring::signature::{self, EcdsaKeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::ca::{der_of, fingerprint, normalise_hex, RegionalCa};
use crate::clock::{format_utc, unix_secs};
use crate::disk::{self, SECRET_MODE};

/// The only manifest format this code reads and writes.
pub const FORMAT: u32 = 1;
/// At most this many members in the zip (a real bundle has five plus a few directory exports).
pub const MAX_MEMBERS: usize = 64;
/// At most this many bytes in one member once decompressed.
pub const MAX_MEMBER_BYTES: u64 = 64 << 20;
/// At most this many bytes in all members once decompressed.
pub const MAX_TOTAL_BYTES: u64 = 256 << 20;
/// The zip file itself: all members stored uncompressed, plus room for headers. Checked before the zip is
/// parsed, which bounds the memory the central directory can take.
pub const MAX_ZIP_BYTES: u64 = MAX_TOTAL_BYTES + (1 << 20);

pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
pub const CA_CERT: &str = "ca.crt";
pub const TOKEN: &str = "token";
pub const CONFIG: &str = "relais.toml";
pub const DIRECTORY_PREFIX: &str = "directory/";

/// Why a bundle was refused, or could not be written. Each message is for the technician holding the USB
/// stick, in French, and says what is wrong with the bundle (not with the box).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("impossible de lire ou d'écrire « {path} » : {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("fichier trop gros pour un bundle : {size} octets (au plus {MAX_ZIP_BYTES})")]
    FileTooBig { size: u64 },
    #[error("ce fichier n'est pas un zip lisible : {0}")]
    NotZip(String),
    #[error("trop de fichiers dans le zip : {count} (au plus {MAX_MEMBERS})")]
    TooManyMembers { count: usize },
    #[error("chemin dangereux dans le zip : « {0} »")]
    DangerousPath(String),
    #[error("lien ou fichier spécial refusé dans le zip : « {0} »")]
    Link(String),
    #[error("entrée qui n'est pas un fichier dans le zip : « {0} »")]
    NotAFile(String),
    #[error("deux fichiers du zip portent le même nom")]
    Duplicate,
    #[error("fichier chiffré ou compression non prise en charge dans le zip : « {0} »")]
    Unsupported(String),
    #[error("zip trop gros une fois décompressé : « {name} » dépasse {limit} octets")]
    MemberTooBig { name: String, limit: u64 },
    #[error("zip trop gros une fois décompressé : plus de {MAX_TOTAL_BYTES} octets au total")]
    TooBig,
    #[error("« {name} » est illisible dans le zip : {message}")]
    Corrupt { name: String, message: String },
    #[error("bundle incomplet : « {0} » manque")]
    Missing(String),
    #[error("certificat de l'autorité (ca.crt) refusé : {0}")]
    BadCaCert(String),
    #[error("bundle d'une autre région (autorité {found}, attendue {expected})")]
    OtherRegion { found: String, expected: String },
    #[error("bundle modifié ou signé par une autre autorité : la signature du manifeste est invalide")]
    BadSignature,
    #[error("manifeste illisible : {0}")]
    BadManifest(String),
    #[error("format de bundle {0} inconnu (cette version lit le format {FORMAT})")]
    UnknownFormat(u32),
    #[error("bundle modifié : « {0} » ne correspond pas au manifeste")]
    Modified(String),
    #[error("bundle modifié : « {0} » n'est pas listé dans le manifeste")]
    Unlisted(String),
    #[error("bundle expiré le {0} : demandez-en un nouveau à la région")]
    Expired(String),
    #[error("UAI invalide dans le bundle : « {0} » (7 chiffres puis une lettre, ex. 0123456A)")]
    BadUai(String),
    #[error("adresse de la passerelle invalide : « {0} » (attendu https://hôte[:port])")]
    BadUrl(String),
    #[error("nom d'établissement vide ou invalide dans le bundle")]
    BadName,
    #[error("jeton d'enrôlement absent ou invalide dans le bundle")]
    BadToken,
    #[error("ce jeton d'enrôlement n'est pas un jeton valide émis pour l'UAI {0} par cette région")]
    TokenNotIssued(String),
    #[error("configuration « relais.toml » invalide : {0}")]
    BadConfig(String),
    #[error("« relais.toml » est pour l'UAI {config}, le bundle pour l'UAI {manifest}")]
    UaiMismatch { manifest: String, config: String },
    #[error("nom de fichier d'annuaire invalide : « {0} »")]
    BadDirectoryName(String),
    #[error("durée de validité du bundle invalide")]
    BadExpiry,
    #[error("impossible de préparer le bundle : {0}")]
    Signing(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_owned(), source }
}

/// `manifest.json`. Times are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    pub uai: String,
    /// The school's name, for the technician to check it is the right stick.
    pub name: String,
    /// `https://host[:port]` of the regional gateway the box enrolls with.
    pub gateway_url: String,
    pub created_at: u64,
    /// After this the box refuses the bundle (the token in it expires with it).
    pub expires_at: u64,
    /// Every member but `manifest.json` and `manifest.sig`.
    pub members: Vec<ManifestMember>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestMember {
    pub name: String,
    /// blake3 of the member's bytes, lowercase hex.
    pub blake3: String,
    pub size: u64,
}

/// What the region puts in a bundle.
#[derive(Clone, Debug)]
pub struct BundleSpec {
    pub uai: String,
    pub name: String,
    pub gateway_url: String,
    /// How long from now the bundle (and so its token) may be used.
    pub expiry: Duration,
    /// The box configuration; its `identity.uai`, if set, must be `uai`.
    pub config_toml: String,
    /// Directory exports (ONDE CSV, AAF XML…), stored as `directory/<name>`.
    pub directory: Vec<(String, Vec<u8>)>,
}

/// How the box checks a bundle.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// SHA-256 of the region's root certificate (hex, `:` allowed), when the box or the technician knows it:
    /// then a bundle of any other region is refused. Without it the bundle's own `ca.crt` is believed, and
    /// the technician should compare [`Bundle::root_fingerprint`] with the one the region published.
    pub expected_root_fingerprint: Option<String>,
    pub now: SystemTime,
}

/// A bundle that passed every check.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    /// The region's root certificate, PEM: the box's trust anchor for the gateway.
    pub ca_cert_pem: String,
    /// The one-time enrollment token, plain.
    pub token: String,
    pub config_toml: String,
    /// Directory exports, by file name (without `directory/`).
    pub directory: Vec<(String, Vec<u8>)>,
}

impl RegionalCa {
    /// Writes a signed bundle for `spec` to `out` (mode 0600: it holds a live token), atomically. The spec is
    /// checked with the same rules as [`Bundle::open`], so a bundle the region writes is one a box accepts.
    pub fn write_bundle(&self, spec: &BundleSpec, token_plain: &str, out: &Path) -> Result<Manifest, BundleError> {
        let now = unix_secs(SystemTime::now());
        if spec.expiry.is_zero() {
            return Err(BundleError::BadExpiry);
        }
        let manifest_fields = (spec.uai.as_str(), spec.name.as_str(), spec.gateway_url.as_str());
        check_identity(manifest_fields)?;
        check_token(token_plain)?;
        check_config(&spec.config_toml, &spec.uai)?;
        // A bundle whose token the gateway will refuse would only be found out at the school.
        let record =
            self.tokens().and_then(|t| t.lookup(token_plain)).map_err(|e| BundleError::Signing(e.to_string()))?;
        if !record.is_some_and(|r| r.uai == spec.uai && r.used_at.is_none() && r.expires_at > now) {
            return Err(BundleError::TokenNotIssued(spec.uai.clone()));
        }

        let mut members: Vec<(String, Vec<u8>)> = vec![
            (CA_CERT.into(), self.root_cert_pem().as_bytes().to_vec()),
            (TOKEN.into(), format!("{}\n", token_plain.trim()).into_bytes()),
            (CONFIG.into(), spec.config_toml.as_bytes().to_vec()),
        ];
        for (name, bytes) in &spec.directory {
            check_directory_name(name)?;
            members.push((format!("{DIRECTORY_PREFIX}{name}"), bytes.clone()));
        }
        let mut names = BTreeSet::new();
        let mut total = 0u64;
        for (name, bytes) in &members {
            if !names.insert(name.as_str()) {
                return Err(BundleError::Duplicate);
            }
            let size = bytes.len() as u64;
            if size > MAX_MEMBER_BYTES {
                return Err(BundleError::MemberTooBig { name: name.clone(), limit: MAX_MEMBER_BYTES });
            }
            total += size;
        }
        if total > MAX_TOTAL_BYTES {
            return Err(BundleError::TooBig);
        }
        if members.len() + 2 > MAX_MEMBERS {
            return Err(BundleError::TooManyMembers { count: members.len() + 2 });
        }

        let manifest = Manifest {
            format: FORMAT,
            uai: spec.uai.clone(),
            name: spec.name.trim().to_owned(),
            gateway_url: spec.gateway_url.clone(),
            created_at: now,
            expires_at: now.saturating_add(spec.expiry.as_secs()),
            members: members
                .iter()
                .map(|(name, bytes)| ManifestMember {
                    name: name.clone(),
                    blake3: blake3::hash(bytes).to_hex().to_string(),
                    size: bytes.len() as u64,
                })
                .collect(),
        };
        let mut manifest_bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::BadManifest(e.to_string()))?;
        manifest_bytes.push(b'\n');
        let signature = sign_manifest(self.root_key().serialized_der(), &manifest_bytes)?;

        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        let options =
            SimpleFileOptions::default().compression_method(CompressionMethod::Deflated).unix_permissions(0o644);
        let all = [(MANIFEST.to_owned(), manifest_bytes), (SIGNATURE.to_owned(), signature)].into_iter().chain(members);
        for (name, bytes) in all {
            zip.start_file(name.as_str(), options).map_err(|e| io_err(out)(io::Error::other(e)))?;
            zip.write_all(&bytes).map_err(io_err(out))?;
        }
        let bytes = zip.finish().map_err(|e| io_err(out)(io::Error::other(e)))?.into_inner();
        disk::write_atomic(out, &bytes, SECRET_MODE).map_err(|e| match e {
            disk::DiskError::Io { path, source } => BundleError::Io { path, source },
            other => BundleError::Io { path: out.to_owned(), source: io::Error::other(other.to_string()) },
        })?;
        Ok(manifest)
    }
}

/// ECDSA P-256 with SHA-256, ASN.1 DER signature (what `openssl dgst -sha256 -verify` checks), by the root key.
fn sign_manifest(root_pkcs8: &[u8], manifest: &[u8]) -> Result<Vec<u8>, BundleError> {
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, root_pkcs8, &rng)
        .map_err(|e| BundleError::Signing(e.to_string()))?;
    let sig = key.sign(&rng, manifest).map_err(|e| BundleError::Signing(e.to_string()))?;
    Ok(sig.as_ref().to_vec())
}

impl Bundle {
    /// Opens and checks the bundle at `path`, all or nothing: the zip's structure and sizes, the signature and
    /// the root, every member against the manifest, the expiry, the UAI, the token and the configuration. The
    /// bundle is returned only when every check passed.
    pub fn open(path: &Path, options: &VerifyOptions) -> Result<Bundle, BundleError> {
        let mut members = read_members(path)?;
        let mut take = |name: &str| members.remove(name).ok_or_else(|| BundleError::Missing(name.to_owned()));
        let manifest_bytes = take(MANIFEST)?;
        let signature_bytes = take(SIGNATURE)?;
        let ca_bytes = members.get(CA_CERT).cloned().ok_or_else(|| BundleError::Missing(CA_CERT.into()))?;

        // Who signed, before what was signed: the root must be a self-signed CA (and the pinned one, if any),
        // and the manifest's signature must be its.
        let ca_der = check_root(&ca_bytes, options)?;
        let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| BundleError::BadCaCert(e.to_string()))?;
        let public_key = &ca.public_key().subject_public_key.data;
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, public_key)
            .verify(&manifest_bytes, &signature_bytes)
            .map_err(|_| BundleError::BadSignature)?;

        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| BundleError::BadManifest(e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(BundleError::UnknownFormat(manifest.format));
        }

        // Every member listed is present and intact; nothing else is there.
        let mut listed = BTreeSet::new();
        for entry in &manifest.members {
            if entry.name == MANIFEST || entry.name == SIGNATURE || !listed.insert(entry.name.as_str()) {
                return Err(BundleError::BadManifest(format!("« {} » listé à tort", entry.name)));
            }
            let bytes = members.get(&entry.name).ok_or_else(|| BundleError::Missing(entry.name.clone()))?;
            if bytes.len() as u64 != entry.size || blake3::hash(bytes).to_hex().as_str() != entry.blake3 {
                return Err(BundleError::Modified(entry.name.clone()));
            }
        }
        if let Some(extra) = members.keys().find(|name| !listed.contains(name.as_str())) {
            return Err(BundleError::Unlisted(extra.clone()));
        }

        if unix_secs(options.now) >= manifest.expires_at {
            return Err(BundleError::Expired(format_utc(manifest.expires_at)));
        }
        check_identity((&manifest.uai, &manifest.name, &manifest.gateway_url))?;

        let text = |name: &str, bytes: Vec<u8>| {
            String::from_utf8(bytes)
                .map_err(|_| BundleError::Corrupt { name: name.into(), message: "pas du texte UTF-8".into() })
        };
        let token_bytes = members.remove(TOKEN).ok_or_else(|| BundleError::Missing(TOKEN.into()))?;
        let token = text(TOKEN, token_bytes).map_err(|_| BundleError::BadToken)?.trim().to_owned();
        check_token(&token)?;
        let config_bytes = members.remove(CONFIG).ok_or_else(|| BundleError::Missing(CONFIG.into()))?;
        let config_toml = text(CONFIG, config_bytes)?;
        check_config(&config_toml, &manifest.uai)?;
        let ca_cert_pem = text(CA_CERT, members.remove(CA_CERT).unwrap_or_default())?;

        let mut directory = Vec::new();
        for (name, bytes) in members {
            // Whatever is left was listed, so it is a directory export or a name we do not know.
            let file = name.strip_prefix(DIRECTORY_PREFIX).ok_or_else(|| BundleError::Unlisted(name.clone()))?;
            check_directory_name(file)?;
            directory.push((file.to_owned(), bytes));
        }
        Ok(Bundle { manifest, ca_cert_pem, token, config_toml, directory })
    }

    /// SHA-256 of the bundle's root certificate, lowercase hex, for the technician to compare with the one the
    /// region publishes (when no fingerprint was pinned).
    pub fn root_fingerprint(&self) -> String {
        der_of(self.ca_cert_pem.as_bytes(), &["CERTIFICATE"]).map(|der| fingerprint(&der)).unwrap_or_default()
    }
}

/// Reads every member into memory, refusing unsafe names, links, duplicates, encryption, and anything that
/// decompresses past the limits. Sizes are the bytes actually produced, not what the headers claim.
fn read_members(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    if size > MAX_ZIP_BYTES {
        return Err(BundleError::FileTooBig { size });
    }
    if let Some(count) = declared_entries(&mut file).map_err(io_err(path))? {
        if count > MAX_MEMBERS as u64 {
            return Err(BundleError::TooManyMembers { count: usize::try_from(count).unwrap_or(usize::MAX) });
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut archive = ZipArchive::new(BufReader::new(file)).map_err(|e| BundleError::NotZip(e.to_string()))?;
    if archive.len() > MAX_MEMBERS {
        return Err(BundleError::TooManyMembers { count: archive.len() });
    }
    if archive.has_duplicate_names() {
        return Err(BundleError::Duplicate);
    }

    let mut members = BTreeMap::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let name = {
            let entry = archive.by_index_raw(i).map_err(|e| BundleError::NotZip(e.to_string()))?;
            let raw = String::from_utf8_lossy(entry.name_raw()).into_owned();
            let name = check_member_name(entry.name_raw())?;
            // The zip may carry a second, "Unicode" name for the entry; if it says something else, which one
            // a tool uses is a guess, so refuse.
            if entry.name().map_err(|_| BundleError::DangerousPath(raw.clone()))? != name.as_str() {
                return Err(BundleError::DangerousPath(raw));
            }
            if entry.is_dir() {
                return Err(BundleError::NotAFile(name));
            }
            // Regular files only: the file-type bits of the Unix mode must say "regular" or nothing.
            let file_type = entry.unix_mode().map(|mode| mode & 0o170_000).unwrap_or(0);
            if entry.is_symlink() || !(file_type == 0 || file_type == 0o100_000) {
                return Err(BundleError::Link(name));
            }
            if entry.encrypted()
                || !matches!(entry.compression(), CompressionMethod::Stored | CompressionMethod::Deflated)
            {
                return Err(BundleError::Unsupported(name));
            }
            name
        };
        let entry =
            archive.by_index(i).map_err(|e| BundleError::Corrupt { name: name.clone(), message: e.to_string() })?;
        let mut bytes = Vec::new();
        // One byte more than allowed is enough to know it is too big, whatever the header said.
        entry
            .take(MAX_MEMBER_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| BundleError::Corrupt { name: name.clone(), message: e.to_string() })?;
        if bytes.len() as u64 > MAX_MEMBER_BYTES {
            return Err(BundleError::MemberTooBig { name, limit: MAX_MEMBER_BYTES });
        }
        total += bytes.len() as u64;
        if total > MAX_TOTAL_BYTES {
            return Err(BundleError::TooBig);
        }
        if members.insert(name, bytes).is_some() {
            return Err(BundleError::Duplicate);
        }
    }
    Ok(members)
}

/// The entry count of the end-of-central-directory record, read before the zip library parses the central
/// directory (and allocates for each entry it claims). `None` when there is no well-formed record: the zip
/// library then reports what is wrong.
fn declared_entries(file: &mut File) -> io::Result<Option<u64>> {
    const EOCD_LEN: u64 = 22;
    let len = file.seek(SeekFrom::End(0))?;
    let tail_len = len.min(EOCD_LEN + u64::from(u16::MAX));
    file.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = Vec::new();
    file.take(tail_len).read_to_end(&mut tail)?;
    let eocd_len = EOCD_LEN as usize;
    let Some(last_start) = tail.len().checked_sub(eocd_len) else { return Ok(None) };
    for start in (0..=last_start).rev() {
        let record = &tail[start..];
        if !record.starts_with(b"PK\x05\x06") {
            continue;
        }
        let comment_len = usize::from(u16::from_le_bytes([record[20], record[21]]));
        if eocd_len + comment_len != record.len() {
            continue;
        }
        let total = u16::from_le_bytes([record[10], record[11]]);
        // 0xFFFF means "see the zip64 record": our bundles never need zip64, so count it as too many.
        return Ok(Some(if total == u16::MAX { u64::MAX } else { u64::from(total) }));
    }
    Ok(None)
}

/// A member name is a relative path of plain components: not absolute, no `..` or `.`, no backslash, no
/// drive letter, no control character. Checked on the raw bytes of the central directory.
fn check_member_name(raw: &[u8]) -> Result<String, BundleError> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let Ok(name) = std::str::from_utf8(raw) else { return Err(BundleError::DangerousPath(shown)) };
    if name.ends_with('/') {
        return Err(BundleError::NotAFile(shown));
    }
    let dangerous = name.is_empty()
        || name.len() > 255
        || name.starts_with('/')
        || name.chars().any(|c| c == '\\' || c == ':' || c.is_control())
        || name.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if dangerous {
        return Err(BundleError::DangerousPath(shown));
    }
    Ok(name.to_owned())
}

/// A directory export's file name: one plain component, as the box stores it under that name.
fn check_directory_name(name: &str) -> Result<(), BundleError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.chars().any(|c| c == '/' || c == '\\' || c == ':' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(BundleError::BadDirectoryName(name.to_owned()))
    }
}

/// The manifest's UAI, school name and gateway URL.
fn check_identity((uai, name, url): (&str, &str, &str)) -> Result<(), BundleError> {
    if !firmware_config::is_uai(uai) {
        return Err(BundleError::BadUai(uai.to_owned()));
    }
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(BundleError::BadName);
    }
    let host = url.strip_prefix("https://").unwrap_or_default();
    let host = host.strip_suffix('/').unwrap_or(host);
    if host.is_empty()
        || host.contains(['/', '?', '#', '@'])
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(BundleError::BadUrl(url.to_owned()));
    }
    Ok(())
}

/// What [`crate::new_token`] makes: base64url, at least 128 bits.
fn check_token(token: &str) -> Result<(), BundleError> {
    let token = token.trim();
    if token.len() < 22
        || token.len() > 256
        || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(BundleError::BadToken);
    }
    Ok(())
}

fn check_config(text: &str, uai: &str) -> Result<(), BundleError> {
    let config =
        firmware_config::Config::parse(Path::new(CONFIG), text).map_err(|e| BundleError::BadConfig(e.to_string()))?;
    let config_uai = &config.identity.uai;
    if !config_uai.is_empty() && config_uai != uai {
        return Err(BundleError::UaiMismatch { manifest: uai.to_owned(), config: config_uai.clone() });
    }
    Ok(())
}

/// `ca.crt` must be one self-signed CA certificate, in force at `now`, and the pinned one when a fingerprint
/// is given. Returns its DER.
fn check_root(pem: &[u8], options: &VerifyOptions) -> Result<Vec<u8>, BundleError> {
    let der = der_of(pem, &["CERTIFICATE"]).map_err(BundleError::BadCaCert)?;
    let found = fingerprint(&der);
    if let Some(expected) = &options.expected_root_fingerprint {
        let expected = normalise_hex(expected);
        if found != expected {
            return Err(BundleError::OtherRegion { found, expected });
        }
    }
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| BundleError::BadCaCert(e.to_string()))?;
    if !cert.is_ca() {
        return Err(BundleError::BadCaCert("ce n'est pas une autorité".into()));
    }
    if cert.subject() != cert.issuer() || cert.verify_signature(None).is_err() {
        return Err(BundleError::BadCaCert("ce n'est pas une autorité racine (auto-signée)".into()));
    }
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    if unix_secs(options.now) >= not_after {
        return Err(BundleError::BadCaCert(format!("expiré le {}", format_utc(not_after))));
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names() {
        assert_eq!(check_member_name(b"directory/eleves.csv").ok().as_deref(), Some("directory/eleves.csv"));
        for bad in [&b"../../etc/passwd"[..], b"/etc/passwd", b"a/../b", b"./token", b"C:\\x", b"a//b", b"", b"\xff"] {
            assert!(matches!(check_member_name(bad), Err(BundleError::DangerousPath(_))), "{bad:?}");
        }
        assert!(matches!(check_member_name(b"directory/"), Err(BundleError::NotAFile(_))));
    }

    #[test]
    fn identity_checks() {
        assert!(check_identity(("0123456A", "Collège", "https://gw.example:8443")).is_ok());
        assert!(matches!(check_identity(("0123456", "C", "https://gw")), Err(BundleError::BadUai(_))));
        assert!(matches!(check_identity(("0123456A", "C", "http://gw")), Err(BundleError::BadUrl(_))));
        assert!(matches!(check_identity(("0123456A", "C", "https://gw/x")), Err(BundleError::BadUrl(_))));
        assert!(matches!(check_identity(("0123456A", " ", "https://gw")), Err(BundleError::BadName)));
    }
}

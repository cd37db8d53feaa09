//! Provisioning bundles: a good one round-trips; each way a bundle can be wrong (tampered, foreign, stale, badly
//! built, hostile zip) is refused with its own error and nothing is returned.

use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use provisioning::{Bundle, BundleError, BundleSpec, Manifest, TokenStore, VerifyOptions};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::util::{self, Region, DAY, OTHER_UAI, UAI};

const CONFIG: &str = "[identity]\nuai = \"0123456A\"\nname = \"Collège Jean Moulin\"\n";

fn spec() -> BundleSpec {
    BundleSpec {
        uai: UAI.to_owned(),
        name: "Collège Jean Moulin".to_owned(),
        gateway_url: "https://gw.region.test:8443".to_owned(),
        expiry: 14 * DAY,
        config_toml: CONFIG.to_owned(),
        directory: vec![
            ("eleves.csv".to_owned(), b"Nom;Prenom;Classe\nDupont;Marie;6A\n".to_vec()),
            ("ENT_0123456A_Complet.xml".to_owned(), b"<ficAlimMENESR/>".to_vec()),
        ],
    }
}

struct Fixture {
    region: Region,
    path: PathBuf,
    token: String,
}

impl Fixture {
    fn new() -> Fixture {
        let region = Region::new();
        let token = TokenStore::open(&region.dir).expect("tokens").issue(UAI, 14 * DAY).expect("token");
        let path = region.tmp.path().join("bundle.zip");
        region.ca.write_bundle(&spec(), &token, &path).expect("write bundle");
        Fixture { region, path, token }
    }

    fn options(&self) -> VerifyOptions {
        VerifyOptions { expected_root_fingerprint: Some(self.region.ca.root_fingerprint()), now: SystemTime::now() }
    }

    fn open(&self) -> Result<Bundle, BundleError> {
        Bundle::open(&self.path, &self.options())
    }

    /// The good bundle's manifest, as a base for forged ones.
    fn manifest(&self) -> Manifest {
        self.open().expect("good bundle").manifest
    }

    /// A bundle signed with the region's real root key, listing exactly `members`: what a bug at the region
    /// (or a thief of its key) could produce. Only the content rules can refuse it.
    fn forge(&self, manifest: &Manifest, members: Vec<(String, Vec<u8>)>) {
        util::forge(&self.path, &self.region.root_key_pem(), manifest, members);
    }

    /// The members of the good bundle other than the manifest and its signature.
    fn payload(&self) -> Vec<(String, Vec<u8>)> {
        util::read_zip(&self.path).into_iter().filter(|(n, _)| !n.starts_with("manifest.")).collect()
    }
}

fn set(members: &mut [(String, Vec<u8>)], name: &str, bytes: &[u8]) {
    members.iter_mut().find(|(n, _)| n == name).expect(name).1 = bytes.to_vec();
}

#[test]
fn good_bundle_round_trips() {
    let f = Fixture::new();
    let bundle = f.open().expect("a good bundle opens");
    let m = &bundle.manifest;
    assert_eq!((m.format, m.uai.as_str(), m.name.as_str()), (1, UAI, "Collège Jean Moulin"));
    assert_eq!(m.gateway_url, "https://gw.region.test:8443");
    assert_eq!(m.expires_at - m.created_at, 14 * 86_400);
    assert_eq!(bundle.token, f.token);
    assert_eq!(bundle.config_toml, CONFIG);
    assert_eq!(bundle.ca_cert_pem, f.region.ca.root_cert_pem());
    assert_eq!(bundle.root_fingerprint(), f.region.ca.root_fingerprint());
    let mut directory = bundle.directory.clone();
    directory.sort();
    let mut expected = spec().directory;
    expected.sort();
    assert_eq!(directory, expected);
    let names: Vec<&str> = m.members.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["ca.crt", "token", "relais.toml", "directory/eleves.csv", "directory/ENT_0123456A_Complet.xml"]);
    // The token in the bundle redeems at the region, once.
    let tokens = TokenStore::open(&f.region.dir).expect("tokens");
    tokens.redeem(&bundle.token, UAI, SystemTime::now()).expect("redeem");

    // The bundle holds a live token: private file.
    assert_eq!(std::fs::metadata(&f.path).expect("meta").permissions().mode() & 0o777, 0o600);
    // A pinned fingerprint may be written the openssl way.
    let colons = f
        .region
        .ca
        .root_fingerprint()
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let options = VerifyOptions { expected_root_fingerprint: Some(colons), now: SystemTime::now() };
    Bundle::open(&f.path, &options).expect("fingerprint with colons");
    // Without a pin the bundle's own root is believed.
    Bundle::open(&f.path, &VerifyOptions { expected_root_fingerprint: None, now: SystemTime::now() })
        .expect("unpinned");
}

#[test]
fn write_bundle_refuses_what_a_box_would_refuse() {
    let f = Fixture::new();
    let out = f.region.tmp.path().join("other.zip");
    let write = |spec: BundleSpec| f.region.ca.write_bundle(&spec, &f.token, &out);
    assert!(matches!(write(BundleSpec { uai: "012345A".into(), ..spec() }), Err(BundleError::BadUai(_))));
    assert!(matches!(write(BundleSpec { gateway_url: "http://gw".into(), ..spec() }), Err(BundleError::BadUrl(_))));
    assert!(matches!(
        write(BundleSpec { config_toml: "[identity]\nuai = 12\n".into(), ..spec() }),
        Err(BundleError::BadConfig(_))
    ));
    assert!(matches!(write(BundleSpec { uai: OTHER_UAI.into(), ..spec() }), Err(BundleError::UaiMismatch { .. })));
    assert!(matches!(
        write(BundleSpec { directory: vec![("../x".into(), vec![])], ..spec() }),
        Err(BundleError::BadDirectoryName(_))
    ));
    assert!(matches!(write(BundleSpec { expiry: Duration::ZERO, ..spec() }), Err(BundleError::BadExpiry)));
    assert!(matches!(f.region.ca.write_bundle(&spec(), "short", &out), Err(BundleError::BadToken)));
    // The token must be a live one of this region, for this school.
    let (unknown, _) = provisioning::new_token();
    assert!(matches!(f.region.ca.write_bundle(&spec(), &unknown, &out), Err(BundleError::TokenNotIssued(_))));
    let other_school = f.region.ca.tokens().expect("tokens").issue(OTHER_UAI, DAY).expect("token");
    assert!(matches!(f.region.ca.write_bundle(&spec(), &other_school, &out), Err(BundleError::TokenNotIssued(_))));
    assert!(!out.exists(), "nothing written on refusal");
}

#[test]
fn one_byte_changed_in_any_member_is_refused() {
    let f = Fixture::new();
    let good = util::read_zip(&f.path);
    for (index, (name, bytes)) in good.iter().enumerate() {
        let mut members = good.clone();
        let mut changed = bytes.clone();
        // A byte in the middle, kept printable so that text stays text and PEM stays base64.
        let at = changed.len() / 2;
        changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
        members[index].1 = changed;
        util::write_zip(&f.path, &members);
        let err = f.open().expect_err(name);
        match name.as_str() {
            "manifest.json" => {
                assert!(matches!(err, BundleError::BadSignature | BundleError::BadManifest(_)), "{err:?}")
            }
            "manifest.sig" => assert!(matches!(err, BundleError::BadSignature), "{err:?}"),
            "ca.crt" => assert!(matches!(err, BundleError::BadCaCert(_) | BundleError::OtherRegion { .. }), "{err:?}"),
            _ => {
                assert!(matches!(&err, BundleError::Modified(n) if n == name), "{name}: {err:?}");
                assert_eq!(err.to_string(), format!("bundle modifié : « {name} » ne correspond pas au manifeste"));
            }
        }
    }
}

#[test]
fn edited_manifest_is_refused() {
    let f = Fixture::new();
    util::edit_zip(&f.path, |members| {
        let manifest = &mut members[0];
        assert_eq!(manifest.0, "manifest.json");
        let mut value: serde_json::Value = serde_json::from_slice(&manifest.1).expect("json");
        value["expires_at"] = serde_json::json!(value["expires_at"].as_u64().expect("u64") + 365 * 86_400);
        manifest.1 = serde_json::to_vec_pretty(&value).expect("json");
    });
    assert!(matches!(f.open(), Err(BundleError::BadSignature)));
}

#[test]
fn signature_of_another_ca_is_refused() {
    let f = Fixture::new();
    let other = Region::new();
    util::edit_zip(&f.path, |members| {
        let signature = util::sign(&other.root_key_pem(), &members[0].1);
        set(members, "manifest.sig", &signature);
    });
    let err = f.open().expect_err("signed by another CA");
    assert!(matches!(err, BundleError::BadSignature), "{err:?}");
    // Even with no fingerprint pinned.
    let unpinned = VerifyOptions { expected_root_fingerprint: None, now: SystemTime::now() };
    assert!(matches!(Bundle::open(&f.path, &unpinned), Err(BundleError::BadSignature)));
}

#[test]
fn bundle_of_another_region_is_refused_when_pinned() {
    let f = Fixture::new();
    let other = Region::new();
    let path = other.tmp.path().join("foreign.zip");
    let token = other.ca.tokens().expect("tokens").issue(UAI, DAY).expect("token");
    other.ca.write_bundle(&spec(), &token, &path).expect("foreign bundle");
    let err = Bundle::open(&path, &f.options()).expect_err("foreign");
    assert!(matches!(err, BundleError::OtherRegion { .. }), "{err:?}");
    assert!(err.to_string().starts_with("bundle d'une autre région (autorité "), "{err}");
    // Swapping in the other region's ca.crt under our signature does not help either.
    util::edit_zip(&f.path, |members| set(members, "ca.crt", other.ca.root_cert_pem().as_bytes()));
    assert!(matches!(f.open(), Err(BundleError::OtherRegion { .. })));
    let unpinned = VerifyOptions { expected_root_fingerprint: None, now: SystemTime::now() };
    assert!(matches!(Bundle::open(&f.path, &unpinned), Err(BundleError::BadSignature)));
}

#[test]
fn expired_bundle_is_refused() {
    let f = Fixture::new();
    let later = VerifyOptions { now: SystemTime::now() + 15 * DAY, ..f.options() };
    let err = Bundle::open(&f.path, &later).expect_err("expired");
    assert!(matches!(err, BundleError::Expired(_)), "{err:?}");
    assert!(err.to_string().starts_with("bundle expiré le 20"), "{err}");
}

#[test]
fn bad_uai_and_bad_config_are_refused_even_when_signed() {
    let f = Fixture::new();
    let good = f.manifest();
    let payload = f.payload();

    f.forge(&Manifest { uai: "0123456".into(), ..good.clone() }, payload.clone());
    assert!(matches!(f.open(), Err(BundleError::BadUai(u)) if u == "0123456"));

    let mut members = payload.clone();
    set(&mut members, "relais.toml", b"[identity]\nuai = \"0123456A\"\nbogus = 1\n");
    f.forge(&good, members);
    let err = f.open().expect_err("bad config");
    assert!(matches!(&err, BundleError::BadConfig(m) if m.contains("bogus")), "{err:?}");

    let mut members = payload.clone();
    set(&mut members, "relais.toml", b"[identity]\nuai = \"7654321B\"\n");
    f.forge(&good, members);
    assert!(matches!(f.open(), Err(BundleError::UaiMismatch { .. })));

    let mut members = payload.clone();
    set(&mut members, "token", b"not a token\n");
    f.forge(&good, members);
    assert!(matches!(f.open(), Err(BundleError::BadToken)));

    f.forge(&Manifest { gateway_url: "http://gw.region.test".into(), ..good.clone() }, payload.clone());
    assert!(matches!(f.open(), Err(BundleError::BadUrl(_))));

    f.forge(&Manifest { format: 2, ..good.clone() }, payload.clone());
    assert!(matches!(f.open(), Err(BundleError::UnknownFormat(2))));

    // A signed manifest that simply leaves relais.toml out.
    let members = payload.into_iter().filter(|(n, _)| n != "relais.toml").collect();
    f.forge(&good, members);
    assert!(matches!(f.open(), Err(BundleError::Missing(n)) if n == "relais.toml"));
}

#[test]
fn listed_member_missing_is_refused() {
    let f = Fixture::new();
    util::edit_zip(&f.path, |members| members.retain(|(n, _)| n != "directory/eleves.csv"));
    assert!(matches!(f.open(), Err(BundleError::Missing(n)) if n == "directory/eleves.csv"));
    util::edit_zip(&f.path, |members| members.retain(|(n, _)| n != "manifest.sig"));
    assert!(matches!(f.open(), Err(BundleError::Missing(n)) if n == "manifest.sig"));
}

#[test]
fn zip_slip_names_are_refused() {
    for evil in ["../../etc/passwd", "/etc/passwd", "directory/../../x", "directory\\..\\x"] {
        let f = Fixture::new();
        util::edit_zip(&f.path, |members| members.push((evil.to_owned(), b"root::0:0::/:/bin/sh\n".to_vec())));
        let err = f.open().expect_err(evil);
        assert!(matches!(&err, BundleError::DangerousPath(n) if n == evil), "{evil}: {err:?}");
        assert_eq!(err.to_string(), format!("chemin dangereux dans le zip : « {evil} »"));
    }
}

#[test]
fn symlink_member_is_refused() {
    let f = Fixture::new();
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    for (name, bytes) in util::read_zip(&f.path) {
        zip.start_file(name.as_str(), options).expect("start");
        zip.write_all(&bytes).expect("write");
    }
    zip.add_symlink("directory/eleves.csv.lnk", "/etc/shadow", options).expect("symlink");
    std::fs::write(&f.path, zip.finish().expect("finish").into_inner()).expect("write");
    let err = f.open().expect_err("symlink");
    assert!(matches!(&err, BundleError::Link(n) if n == "directory/eleves.csv.lnk"), "{err:?}");
}

/// A zip whose members are runs of zeros, deflated: megabytes that become hundreds once inflated.
fn zeros_zip(path: &Path, members: &[(&str, u64)]) {
    let mut zip = ZipWriter::new(std::fs::File::create(path).expect("create"));
    let options =
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated).compression_level(Some(1));
    let chunk = vec![0u8; 1 << 20];
    for (name, mib) in members {
        zip.start_file(*name, options).expect("start");
        for _ in 0..*mib {
            zip.write_all(&chunk).expect("write");
        }
    }
    zip.finish().expect("finish");
}

#[test]
fn zip_bombs_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = VerifyOptions { expected_root_fingerprint: None, now: SystemTime::now() };

    // One member that inflates past 64 MiB.
    let one = dir.path().join("one.zip");
    zeros_zip(&one, &[("directory/zeros.csv", 65)]);
    assert!(std::fs::metadata(&one).expect("meta").len() < 1 << 20, "the bomb itself is small");
    let err = Bundle::open(&one, &options).expect_err("member bomb");
    assert!(matches!(&err, BundleError::MemberTooBig { name, .. } if name == "directory/zeros.csv"), "{err:?}");
    assert!(err.to_string().starts_with("zip trop gros une fois décompressé"), "{err}");

    // Five members under the per-member limit whose total passes 256 MiB.
    let many = dir.path().join("many.zip");
    let members: Vec<(String, u64)> = (0..5).map(|i| (format!("directory/zeros{i}.csv"), 60)).collect();
    zeros_zip(&many, &members.iter().map(|(n, s)| (n.as_str(), *s)).collect::<Vec<_>>());
    let err = Bundle::open(&many, &options).expect_err("total bomb");
    assert!(matches!(err, BundleError::TooBig), "{err:?}");
    assert!(err.to_string().starts_with("zip trop gros une fois décompressé"), "{err}");

    // The same single-member bomb whose headers lie, claiming 1000 bytes: what counts is what inflates.
    let mut bytes = std::fs::read(&one).expect("read");
    patch_u32_after(&mut bytes, b"PK\x03\x04", 22, 1000);
    patch_u32_after(&mut bytes, b"PK\x01\x02", 24, 1000);
    let liar = dir.path().join("liar.zip");
    std::fs::write(&liar, &bytes).expect("write");
    let err = Bundle::open(&liar, &options).expect_err("lying bomb");
    assert!(
        matches!(&err, BundleError::MemberTooBig { .. } | BundleError::Corrupt { .. }),
        "refused either when it inflates too far or when its data disagrees with its header: {err:?}"
    );
}

/// Overwrites the little-endian u32 at `offset` after the first occurrence of `signature`.
fn patch_u32_after(bytes: &mut [u8], signature: &[u8], offset: usize, value: u32) {
    let at = bytes.windows(signature.len()).position(|w| w == signature).expect("signature") + offset;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn too_many_members_are_refused() {
    let f = Fixture::new();
    util::edit_zip(&f.path, |members| {
        for i in 0..70 {
            members.push((format!("directory/f{i}.csv"), b"x".to_vec()));
        }
    });
    let err = f.open().expect_err("too many");
    assert!(matches!(err, BundleError::TooManyMembers { count: 77 }), "{err:?}");
}

#[test]
fn unlisted_member_is_refused() {
    for extra in ["extra.txt", "directory/intrus.csv"] {
        let f = Fixture::new();
        util::edit_zip(&f.path, |members| members.push((extra.to_owned(), b"surprise".to_vec())));
        let err = f.open().expect_err(extra);
        assert!(matches!(&err, BundleError::Unlisted(n) if n == extra), "{err:?}");
        assert_eq!(err.to_string(), format!("bundle modifié : « {extra} » n'est pas listé dans le manifeste"));
    }
}

#[test]
fn duplicate_names_are_refused() {
    let f = Fixture::new();
    let mut members = util::read_zip(&f.path);
    // Two entries named alike: rename "tokeQ" to "token" in the raw bytes (same length, CRCs unaffected).
    members.push(("tokeQ".to_owned(), format!("{}\n", f.token).into_bytes()));
    let mut bytes = util::zip_bytes(&members);
    let mut replaced = 0;
    for i in 0..bytes.len() - 5 {
        if &bytes[i..i + 5] == b"tokeQ" {
            bytes[i..i + 5].copy_from_slice(b"token");
            replaced += 1;
        }
    }
    assert_eq!(replaced, 2, "local and central headers");
    std::fs::write(&f.path, bytes).expect("write");
    assert!(matches!(f.open(), Err(BundleError::Duplicate)));
}

#[test]
fn not_a_zip_is_refused() {
    let f = Fixture::new();
    std::fs::write(&f.path, b"PK but not really a zip file").expect("write");
    assert!(matches!(f.open(), Err(BundleError::NotZip(_))));
    let missing = f.region.tmp.path().join("missing.zip");
    assert!(matches!(Bundle::open(&missing, &f.options()), Err(BundleError::Io { .. })));
}

//! Trust between the box and its region, with real processes and real TLS: `relais provision apply` checks a
//! bundle whole and writes nothing when it refuses one (edited, zip-slip, expired, another region, another
//! school, a bad directory export, a running daemon); a provisioned box enrolls at its first contact with
//! `relais region serve`, its token works once, it renews at half-life, and a revoked box is refused.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use provisioning::{BundleSpec, RegionalCa};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::util::*;

pub(crate) const UAI: &str = "0123456A";
const OTHER_UAI: &str = "7654321B";
/// How long a box may take to enroll once started (debug build; the first attempt is immediate).
const ENROLL_TIMEOUT: Duration = Duration::from_secs(60);

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/directory").join(path)
}

fn onde_exports() -> Vec<PathBuf> {
    ["eleves", "enseignants", "responsables"].iter().map(|k| fixture(&format!("onde/CSVExtraction-{k}.csv"))).collect()
}

/// `relais provision apply BUNDLE --data DATA EXTRA…`, with the e2e admin password in the environment.
fn apply(bundle: &Path, data: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("provision").arg("apply").arg(bundle).arg("--data").arg(data).args(extra);
    cmd.env("RELAIS_ADMIN_PASSWORD", ADMIN_PASSWORD);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(120));
    (status.and_then(|s| s.code()), out, err)
}

#[track_caller]
pub(crate) fn apply_ok(bundle: &Path, data: &Path, extra: &[&str]) -> String {
    let (code, out, err) = apply(bundle, data, extra);
    assert_eq!(code, Some(0), "provision apply failed\nstdout:\n{out}\nstderr:\n{err}");
    out
}

/// Applies, expects exit 2, and returns stderr.
#[track_caller]
fn apply_refused(bundle: &Path, data: &Path, extra: &[&str], what: &str) -> String {
    let (code, out, err) = apply(bundle, data, extra);
    assert_eq!(code, Some(2), "{what}: expected exit 2\nstdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("relais:"), "{what}: no message\n{err}");
    err
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Every file and folder under `dir`: relative path → (mode, blake3 of the content or "dir"). The lock file's
/// content (a pid) is left out: only its presence counts.
fn listing(dir: &Path) -> BTreeMap<String, (u32, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root").display().to_string();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, (mode, "dir".into()));
                walk(root, &path, out);
            } else if rel == "lock" {
                out.insert(rel, (mode, "lock".into()));
            } else {
                let bytes = std::fs::read(&path).expect("read");
                out.insert(rel, (mode, blake3::hash(&bytes).to_hex().to_string()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A regional CA made with the library, for bundles the CLI would never write.
struct LibraryRegion {
    dir: tempfile::TempDir,
    ca: RegionalCa,
}

impl LibraryRegion {
    fn new() -> LibraryRegion {
        let dir = tempfile::Builder::new().prefix("relais-ca-e2e-").tempdir().expect("temp dir");
        let ca = RegionalCa::init(&dir.path().join("ca"), &["localhost".into()]).expect("region CA");
        LibraryRegion { dir, ca }
    }

    fn bundle_with(&self, uai: &str, expiry: Duration, directory: Vec<(String, Vec<u8>)>) -> PathBuf {
        let gateway = "https://127.0.0.1:9";
        let config =
            format!("[identity]\nuai = \"{uai}\"\nname = \"École du test\"\n\n[uplink]\ngateway = \"{gateway}\"\n");
        let spec = BundleSpec {
            uai: uai.into(),
            name: "École du test".into(),
            gateway_url: gateway.into(),
            expiry,
            config_toml: config,
            directory,
        };
        let token = self.ca.tokens().expect("tokens").issue(uai, Duration::from_secs(86_400)).expect("token");
        let out = self.dir.path().join(format!("bundle-{uai}-{}.zip", rand::random::<u32>()));
        self.ca.write_bundle(&spec, &token, &out).expect("write bundle");
        out
    }

    fn bundle(&self, uai: &str) -> PathBuf {
        self.bundle_with(uai, Duration::from_secs(86_400), Vec::new())
    }

    fn fingerprint_colons(&self) -> String {
        let hex = self.ca.root_fingerprint().to_uppercase();
        (0..hex.len()).step_by(2).map(|i| &hex[i..i + 2]).collect::<Vec<_>>().join(":")
    }
}

pub(crate) fn identity(data: &Path) -> PathBuf {
    data.join("identity")
}

/// The leaf of a PEM chain file, DER.
pub(crate) fn leaf_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let block = x509_parser::pem::Pem::iter_from_buffer(&pem).next().expect("a PEM block").expect("valid PEM");
    block.contents
}

fn dns_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = X509Certificate::from_der(der).expect("certificate");
    let san = cert.subject_alternative_name().expect("SAN parses").expect("a SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| if let GeneralName::DNSName(d) = n { Some(d.to_string()) } else { None })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// provision apply
// ---------------------------------------------------------------------------------------------------------

#[test]
fn a_bundle_provisions_the_box_with_keys_made_on_it() {
    let region = LibraryRegion::new();
    let exports = onde_exports()
        .iter()
        .map(|p| (p.file_name().expect("name").to_string_lossy().into_owned(), std::fs::read(p).expect("fixture")))
        .collect();
    let bundle = region.bundle_with(UAI, Duration::from_secs(86_400), exports);
    let mut relais = Relais::unstarted("", Some(ADMIN_PASSWORD));
    let data = relais.data_dir();

    let out = apply_ok(&bundle, &data, &[]);
    for needle in [UAI, "École du test", "https://127.0.0.1:9", &region.fingerprint_colons(), "premier démarrage"] {
        assert!(out.contains(needle), "the summary lacks {needle:?}:\n{out}");
    }
    assert!(out.contains("créés"), "the summary counts imported accounts:\n{out}");

    let id = identity(&data);
    assert_eq!(mode(&id), 0o700);
    for (file, expected) in [("box.key", 0o600), ("lan.key", 0o600), ("token", 0o600), ("region-ca.crt", 0o644)] {
        assert_eq!(mode(&id.join(file)), expected, "mode of identity/{file}");
    }
    assert_eq!(std::fs::read_to_string(id.join("uai")).expect("uai").trim(), UAI);
    assert_eq!(std::fs::read_to_string(id.join("region-ca.crt")).expect("root"), region.ca.root_cert_pem());
    let members: BTreeMap<String, Vec<u8>> = zip_members(&bundle).into_iter().collect();
    assert_eq!(std::fs::read(id.join("token")).expect("token"), members["token"]);
    assert_eq!(std::fs::read(data.join("relais.toml")).expect("config"), members["relais.toml"]);
    // The keys were made on the box: they are in no member of the bundle.
    let key = std::fs::read_to_string(id.join("box.key")).expect("key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
    assert!(members.values().all(|m| !String::from_utf8_lossy(m).contains("PRIVATE KEY")));
    assert!(!id.join("box.crt").exists(), "not enrolled before the first contact");

    // The imported accounts are there when the box starts with the provisioned configuration.
    std::fs::copy(data.join("relais.toml"), relais.config_path()).expect("use the provisioned config");
    relais.respawn();
    let admin = relais.admin();
    let users = admin.call("GET", "/api/admin/users").expect_status(200).json();
    assert!(users.as_array().expect("array").len() >= 3, "imported accounts: {users}");
}

#[test]
fn applying_the_same_bundle_twice_is_harmless() {
    let region = LibraryRegion::new();
    let bundle = region.bundle(UAI);
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    apply_ok(&bundle, &data, &[]);
    let before = listing(&data);
    let out = apply_ok(&bundle, &data, &[]);
    assert!(out.contains("déjà appliqué"), "{out}");
    assert_eq!(listing(&data), before, "a second application changes nothing");
    assert!(out.contains("conservée"), "keys are kept: {out}");
}

#[test]
fn hostile_bundles_are_refused_and_write_nothing() {
    let region = LibraryRegion::new();
    let other_region = LibraryRegion::new();
    let scratch = tempfile::tempdir().expect("temp dir");
    let good = region.bundle(UAI);

    // Edited bytes, anywhere in the file.
    let raw = std::fs::read(&good).expect("bundle");
    let flipped = scratch.path().join("flipped.zip");
    let mut bytes = raw.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&flipped, bytes).expect("write");

    // A member changed and the zip rebuilt cleanly: the gateway replaced by the attacker's.
    let members = zip_members(&good);
    let modified = scratch.path().join("modified.zip");
    let edited: Vec<(String, Vec<u8>)> = members
        .iter()
        .map(|(name, bytes)| {
            let bytes = if name == "relais.toml" {
                String::from_utf8_lossy(bytes).replace("127.0.0.1:9", "evil.example:443").into_bytes()
            } else {
                bytes.clone()
            };
            (name.clone(), bytes)
        })
        .collect();
    write_zip(&modified, &edited);

    // Zip-slip: a member that would land outside the data folder.
    let slip = scratch.path().join("slip.zip");
    let mut slipped = members.clone();
    slipped.push(("../../evil.txt".into(), b"owned".to_vec()));
    write_zip(&slip, &slipped);

    // Expired.
    let expired = region.bundle_with(UAI, Duration::from_secs(1), Vec::new());
    std::thread::sleep(Duration::from_millis(2100));

    // A bad directory export: refused by the import, so the whole bundle is.
    let bad_export = region.bundle_with(
        UAI,
        Duration::from_secs(86_400),
        vec![("bad-date.csv".into(), std::fs::read(fixture("hostile/bad-date.csv")).expect("fixture"))],
    );

    let fresh = scratch.path().join("fresh");
    std::fs::create_dir(&fresh).expect("mkdir");
    let cases: [(&Path, &str, &str); 5] = [
        (&flipped, "edited byte", "bundle refusé"),
        (&modified, "modified member", "bundle modifié"),
        (&slip, "zip-slip", "chemin dangereux"),
        (&expired, "expired", "expiré"),
        (&bad_export, "bad directory export", "bad-date.csv ligne"),
    ];
    for (bundle, what, message) in cases {
        let err = apply_refused(bundle, &fresh, &[], what);
        assert!(err.contains(message), "{what}: the message should say {message:?}:\n{err}");
        assert!(err.contains("rien n'a été écrit"), "{what}: says nothing was written:\n{err}");
        assert_eq!(listing(&fresh), BTreeMap::new(), "{what}: the data folder must stay empty");
    }
    assert!(!scratch.path().join("evil.txt").exists() && !Path::new("/tmp/evil.txt").exists());

    // A provisioned box: another region and another school are refused, naming what is installed.
    let data = scratch.path().join("provisioned");
    apply_ok(&good, &data, &[]);
    let before = listing(&data);
    let foreign = other_region.bundle(UAI);
    let err = apply_refused(&foreign, &data, &[], "another region");
    assert!(err.contains("autre autorité régionale") && err.contains(UAI) && err.contains("--force-reset"), "{err}");
    let other_school = region.bundle(OTHER_UAI);
    let err = apply_refused(&other_school, &data, &[], "another school");
    assert!(err.contains(UAI) && err.contains(OTHER_UAI) && err.contains("--force-reset"), "{err}");
    for (bundle, what) in [(&flipped, "edited"), (&slip, "zip-slip"), (&expired, "expired"), (&bad_export, "export")] {
        apply_refused(bundle, &data, &[], what);
    }
    assert_eq!(listing(&data), before, "refused bundles changed the provisioned box");

    // --force-reset takes the box over: new keys, the other region's root.
    let old_key = std::fs::read(identity(&data).join("box.key")).expect("key");
    let out = apply_ok(&foreign, &data, &["--force-reset"]);
    assert!(out.contains("--force-reset") && out.contains("effacée"), "says the identity was wiped: {out}");
    assert_ne!(std::fs::read(identity(&data).join("box.key")).expect("key"), old_key, "a new key");
    let root = std::fs::read_to_string(identity(&data).join("region-ca.crt")).expect("root");
    assert_eq!(root, other_region.ca.root_cert_pem());
    // The school's people arrive (the store is made), then the box moves to another school: the first
    // school's accounts and files must go with its identity.
    let imported = std::process::Command::new(BIN)
        .arg("import")
        .arg(fixture("generic/eleves.csv"))
        .arg("--data")
        .arg(&data)
        .env("RELAIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .expect("run relais import");
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    assert!(data.join("meta").exists());
    let out = apply_ok(&region.bundle(OTHER_UAI), &data, &["--force-reset"]);
    assert!(out.contains(OTHER_UAI) && out.contains("fichiers et comptes"), "{out}");
    assert_eq!(std::fs::read_to_string(identity(&data).join("uai")).expect("uai").trim(), OTHER_UAI);
    assert!(!data.join("meta").exists() && !data.join("blobs").exists(), "the first school's data is erased");
}

#[test]
fn apply_refuses_while_the_daemon_runs() {
    let region = LibraryRegion::new();
    let bundle = region.bundle(UAI);
    let relais = Relais::start("");
    let err = apply_refused(&bundle, &relais.data_dir(), &[], "daemon running");
    assert!(err.contains("arrêtez d'abord le démon"), "{err}");
    assert!(!identity(&relais.data_dir()).exists(), "nothing written");
}

// ---------------------------------------------------------------------------------------------------------
// Enrollment against `relais region serve`
// ---------------------------------------------------------------------------------------------------------

/// A box provisioned from `bundle` and started with the provisioned configuration.
fn provisioned_box(bundle: &Path) -> Relais {
    let mut relais = Relais::unstarted("", Some(ADMIN_PASSWORD));
    apply_ok(bundle, &relais.data_dir(), &[]);
    std::fs::copy(relais.data_dir().join("relais.toml"), relais.config_path()).expect("use the provisioned config");
    relais.respawn();
    relais
}

pub(crate) fn wait_enrolled(relais: &Relais) {
    let cert = identity(&relais.data_dir()).join("box.crt");
    let deadline = std::time::Instant::now() + ENROLL_TIMEOUT;
    while !cert.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the box did not enroll within {ENROLL_TIMEOUT:?}\nbox stderr:\n{}",
            relais.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_box_enrolls_at_first_contact_and_its_token_works_once() {
    let mut region = Region::init(None);
    region.serve();
    let bundle = region.bundle(UAI, "École du test", None, &[]);
    let first = provisioned_box(&bundle);
    // The portal does not wait for the uplink.
    first.anonymous().call("GET", "/healthz").expect_status(200);
    wait_enrolled(&first);

    let id = identity(&first.data_dir());
    let leaf = leaf_der(&id.join("box.crt"));
    assert_eq!(provisioning::uai_of_cert(&leaf).as_deref(), Some(UAI), "the certificate is bound to the UAI");
    assert_eq!(mode(&id.join("box.crt")), 0o644);
    wait_until("the spent token is deleted", Duration::from_secs(10), || !id.join("token").exists());
    let lan = leaf_der(&id.join("lan.crt"));
    assert!(dns_names(&lan).contains(&format!("ent.{}.lan", UAI.to_lowercase())), "LAN names: {:?}", dns_names(&lan));

    // The same bundle on a second box: valid on its own, but its token is spent.
    let second = provisioned_box(&bundle);
    second.anonymous().call("GET", "/healthz").expect_status(200);
    wait_until("the second box is refused", ENROLL_TIMEOUT, || second.stderr_tail().contains("refused (401)"));
    assert!(!identity(&second.data_dir()).join("box.crt").exists(), "no certificate for a spent token");
    assert!(second.stderr_tail().contains(UAI), "log lines name the UAI:\n{}", second.stderr_tail());

    // The uplink client trusts the pinned root only.
    use relais::enroll::client::{tls_config, Gateway};
    let ca_pem = std::fs::read_to_string(id.join("region-ca.crt")).expect("root");
    let served = Gateway::new(&region.url(), tls_config(&ca_pem, None).expect("tls")).cacerts().expect("cacerts");
    assert_eq!(served.trim(), ca_pem.trim());
    let stranger = LibraryRegion::new();
    let pinned_elsewhere = Gateway::new(&region.url(), tls_config(stranger.ca.root_cert_pem(), None).expect("tls"));
    let err = pinned_elsewhere.cacerts().expect_err("a gateway of another root is refused");
    assert!(matches!(err, relais::enroll::client::ClientError::Transport { .. }), "{err}");
}

#[test]
fn a_box_renews_at_half_life_and_a_revoked_box_is_refused() {
    // One-minute certificates: boxes renew after 30 s.
    let mut region = Region::init(Some("[region]\ncertificate_validity = \"1m\"\n"));
    region.serve();
    let kept = provisioned_box(&region.bundle(UAI, "École gardée", None, &[]));
    let revoked = provisioned_box(&region.bundle(OTHER_UAI, "École révoquée", None, &[]));
    wait_enrolled(&kept);
    wait_enrolled(&revoked);
    let cert_of = |relais: &Relais| leaf_der(&identity(&relais.data_dir()).join("box.crt"));
    let kept_first = cert_of(&kept);
    let revoked_first = cert_of(&revoked);

    region.revoke(OTHER_UAI);
    wait_until("the kept box renews", Duration::from_secs(120), || cert_of(&kept) != kept_first);
    assert_eq!(provisioning::uai_of_cert(&cert_of(&kept)).as_deref(), Some(UAI));
    wait_until("the revoked box's renewal fails", Duration::from_secs(120), || {
        revoked.stderr_tail().contains(&format!("{OTHER_UAI} enrollment with"))
    });
    assert_eq!(cert_of(&revoked), revoked_first, "a revoked box gets no new certificate");
    // The portal of the revoked box keeps serving its school.
    revoked.anonymous().call("GET", "/healthz").expect_status(200);
}

#[test]
fn the_gateway_refuses_box_certificates_of_another_ca_expired_or_revoked() {
    use provisioning::{BoxKey, CertKind};
    use relais::enroll::client::{tls_config, ClientError, Gateway};
    let mut region = Region::init(None);
    region.serve();
    let ca = RegionalCa::open(&region.ca_dir()).expect("open the region's CA");
    let root = ca.root_cert_pem().to_string();
    let keys = tempfile::tempdir().expect("tempdir");
    let key = |name: &str| BoxKey::generate(&keys.path().join(name)).expect("box key");
    let csr = |key: &BoxKey, uai: &str| key.csr_pem(uai, CertKind::Box, &[]).expect("csr");
    let day = Duration::from_secs(86_400);
    let connect = |chain: &str, key: &BoxKey| {
        Gateway::new(&region.url(), tls_config(&root, Some((chain, key.pkcs8_der()))).expect("tls")).cacerts()
    };
    let refused = |result: Result<String, ClientError>, what: &str| match result {
        Err(ClientError::Transport { .. }) => {}
        other => panic!("{what}: the gateway should refuse the handshake, got {other:?}"),
    };

    let good_key = key("good.key");
    let good = ca.issue_box_cert(csr(&good_key, UAI).as_bytes(), UAI, day).expect("issue");
    connect(&good.chain_pem, &good_key).expect("a certificate of the region is accepted");

    let stranger = LibraryRegion::new();
    let foreign_key = key("foreign.key");
    let foreign = stranger.ca.issue_box_cert(csr(&foreign_key, UAI).as_bytes(), UAI, day).expect("issue");
    refused(connect(&foreign.chain_pem, &foreign_key), "a certificate of another CA");

    let expired_key = key("expired.key");
    let expired = ca.issue_box_cert(csr(&expired_key, UAI).as_bytes(), UAI, Duration::from_secs(1)).expect("issue");
    std::thread::sleep(Duration::from_millis(2100));
    refused(connect(&expired.chain_pem, &expired_key), "an expired certificate");

    let revoked_key = key("revoked.key");
    let revoked = ca.issue_box_cert(csr(&revoked_key, OTHER_UAI).as_bytes(), OTHER_UAI, day).expect("issue");
    connect(&revoked.chain_pem, &revoked_key).expect("accepted before its revocation");
    region.revoke(OTHER_UAI);
    refused(connect(&revoked.chain_pem, &revoked_key), "a revoked certificate");
    wait_until("the gateway logs the refused school", Duration::from_secs(10), || {
        region.stderr_tail().contains(&format!("{OTHER_UAI} box certificate refused"))
    });
    // The others keep working, without a restart of the gateway.
    connect(&good.chain_pem, &good_key).expect("the good certificate still passes");
}

#[test]
fn a_box_keeps_serving_while_its_gateway_is_down_and_renews_when_it_returns() {
    // One-minute certificates: renewal is due 30 s after enrollment.
    let mut region = Region::init(Some("[region]\ncertificate_validity = \"1m\"\n"));
    region.serve();
    let relais = provisioned_box(&region.bundle(UAI, "École isolée", None, &[]));
    wait_enrolled(&relais);
    let first = leaf_der(&identity(&relais.data_dir()).join("box.crt"));
    region.kill();

    // The renewal fails and is retried; meanwhile the school works as usual.
    wait_until("the box notices the gateway is down", Duration::from_secs(90), || {
        relais.stderr_tail().contains(&format!("{UAI} enrollment with"))
    });
    let admin = relais.admin();
    admin.put("me/pendant-la-coupure.txt", b"la classe continue").expect_status(201);
    assert_eq!(admin.get("me/pendant-la-coupure.txt").expect_status(200).body, b"la classe continue");
    let status = admin.call("GET", "/api/admin/status").expect_status(200).json();
    assert_eq!(status["uplink"], "offline", "{status}");
    assert!(status["last_error"].is_string(), "the cause is shown: {status}");
    assert!(status["certificate"]["not_after"].is_string(), "the certificate in force is still shown: {status}");
    assert_eq!(leaf_der(&identity(&relais.data_dir()).join("box.crt")), first);

    // The gateway comes back before the certificate runs out: the next retry renews it.
    region.serve();
    wait_until("the box renews once the gateway is back", Duration::from_secs(60), || {
        leaf_der(&identity(&relais.data_dir()).join("box.crt")) != first
    });
    wait_until("the status says online again", Duration::from_secs(10), || {
        admin.call("GET", "/api/admin/status").json()["uplink"] == "online"
    });
}

//! Replication between a real box and a real regional gateway on loopback, over mutual TLS: files and people
//! flow both ways, concurrent edits keep both versions, a box only ever reaches its own school.

use std::path::Path;
use std::time::Duration;

use crate::trust::{identity, wait_enrolled};
use crate::util::*;

const UAI: &str = "0123456A";
const OTHER_UAI: &str = "0654321B";
/// How long replication may take on loopback: a session every second, a few seconds per file.
const CONVERGE: Duration = Duration::from_secs(60);

/// A box provisioned from `bundle`, replicating every second, started.
pub(crate) fn replicating_box(bundle: &Path) -> Relais {
    let mut relais = provisioned(bundle, |_| {});
    relais.respawn();
    relais
}

/// A box provisioned from `bundle` (not started), its configuration the provisioned one with a session every
/// second, then `tune`d.
pub(crate) fn provisioned(bundle: &Path, tune: impl FnOnce(&mut firmware_config::Config)) -> Relais {
    let relais = Relais::unstarted("", Some(ADMIN_PASSWORD));
    let (code, out, err) = relais_cli([
        "provision".as_ref(),
        "apply".as_ref(),
        bundle.as_os_str(),
        "--data".as_ref(),
        relais.data_dir().as_os_str(),
    ]);
    assert_eq!(code, Some(0), "provision apply failed\n{out}\n{err}");
    let provisioned = relais.data_dir().join("relais.toml");
    let mut config = firmware_config::Config::load(&provisioned).expect("provisioned config");
    config.uplink.sync_interval = firmware_config::Span(Duration::from_secs(1));
    tune(&mut config);
    std::fs::write(relais.config_path(), config.to_toml()).expect("write config");
    relais
}

/// Waits until `client` reads `content` at `path` (a user's view), or fails with both sides' logs.
fn wait_for_file(client: &Client, path: &str, content: &[u8], what: &str, logs: &dyn Fn() -> String) {
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let resp = client.get(path);
        if resp.status == 200 && resp.body == content {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {path} never arrived (last {})\n{}",
            resp.status,
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A client of the region, logged in as `login` once the account has arrived there (watched as the region's
/// admin: polling with failed logins would trip the login throttle).
pub(crate) fn region_login(region: &Region, login: &str, logs: &dyn Fn() -> String) -> Client {
    let mut admin = region.client();
    assert_eq!(admin.login("admin", ADMIN_PASSWORD).status, 200, "region admin login");
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let users = admin.call("GET", "/api/admin/users").expect_status(200).json();
        if users.as_array().into_iter().flatten().any(|u| u["login"] == login) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{login} never reached the region\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut client = region.client();
    let resp = client.login(login, &password_of(login));
    assert_eq!(resp.status, 200, "{login} logs in at the region with the school's password: {resp:?}");
    client
}

/// `PUT` through the client's own TLS agent (`Client::put` speaks plain HTTP on a raw socket).
pub(crate) fn put_tls(client: &Client, path: &str, body: &[u8]) -> Resp {
    Client::send(client.request("PUT", &files_url(path)), Some(body))
}

#[test]
fn files_and_people_flow_both_ways_and_concurrent_edits_keep_both() {
    let mut region = Region::init(None);
    region.serve();
    let relais = replicating_box(&region.bundle(UAI, "École des Tilleuls", None, &[]));
    wait_enrolled(&relais);
    let logs = || format!("box:\n{}\nregion:\n{}", relais.stderr_tail(), region.stderr_tail());

    // People made at school log in at home with the same password.
    let admin = relais.admin();
    let paul = relais.user(&admin, "paul.prof", "teacher", &["CM2"], &[]);
    let lea = relais.user(&admin, "lea.martin", "pupil", &["CM2"], &[]);
    let course = content(1, 3 * MIB + 123);
    paul.put("classes/CM2/cours.pdf", &course).expect_status(201);
    lea.put("me/brouillon.txt", b"mon brouillon").expect_status(201);
    let paul_home = region_login(&region, "paul.prof", &logs);
    wait_for_file(&paul_home, "classes/CM2/cours.pdf", &course, "box to region", &logs);
    let lea_home = region_login(&region, "lea.martin", &logs);
    wait_for_file(&lea_home, "me/brouillon.txt", b"mon brouillon", "box to region", &logs);

    // Written at home, read at school.
    put_tls(&lea_home, "classes/CM2/rendus/lea.martin/devoir.odt", b"fait a la maison").expect_status(201);
    wait_for_file(&lea, "classes/CM2/rendus/lea.martin/devoir.odt", b"fait a la maison", "region to box", &logs);
    paul_home.call("DELETE", &files_url("classes/CM2/cours.pdf")).expect_status(204);
    let deadline = std::time::Instant::now() + CONVERGE;
    while paul.get("classes/CM2/cours.pdf").status != 404 {
        assert!(std::time::Instant::now() < deadline, "the deletion never reached the box\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }

    // The same file edited on both sides while the link is down: both versions survive, on both sides.
    lea.put("me/expose.odt", b"version 1").expect_status(201);
    wait_for_file(&lea_home, "me/expose.odt", b"version 1", "box to region", &logs);
    region.kill();
    lea.put("me/expose.odt", b"version de l'ecole").expect_status(204);
    std::thread::sleep(Duration::from_millis(1100));
    region.serve();
    let logs = || format!("box:\n{}\nregion:\n{}", relais.stderr_tail(), region.stderr_tail());
    let lea_home = region_login(&region, "lea.martin", &logs);
    // The box is in its back-off after failing to reach the gateway: the home edit lands before it syncs.
    put_tls(&lea_home, "me/expose.odt", b"version de la maison").expect_status(204);
    let deadline = std::time::Instant::now() + CONVERGE;
    let listing = |c: &Client| -> Vec<String> {
        let resp = c.get("me/");
        if resp.status != 200 {
            return Vec::new();
        }
        let mut names: Vec<String> =
            resp.json().as_array().into_iter().flatten().filter_map(|i| i["name"].as_str().map(String::from)).collect();
        names.sort();
        names
    };
    loop {
        let (school, home) = (listing(&lea), listing(&lea_home));
        if school == home && school.iter().any(|n| n.contains("(conflit ")) {
            assert_eq!(lea.get("me/expose.odt").body, b"version de l'ecole", "the earlier edit keeps the name");
            let copy = school.iter().find(|n| n.contains("(conflit ")).expect("copy");
            assert!(copy.starts_with("expose (conflit ") && copy.ends_with(" region).odt"), "{copy}");
            assert_eq!(lea.get(&format!("me/{copy}")).body, b"version de la maison");
            assert_eq!(lea_home.get(&format!("me/{copy}")).body, b"version de la maison");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no convergence: school {school:?}, home {home:?}\n{}", logs());
        std::thread::sleep(Duration::from_millis(300));
    }

    // The status says when the last session succeeded, what waits, and how fast the last transfer went.
    // (A resolution made at school is the box's own change: the next session carries it up.)
    wait_until("nothing left to send", CONVERGE, || {
        admin.call("GET", "/api/admin/status").json()["replication"]["backlog"]["up_changes"] == 0
    });
    let status = admin.call("GET", "/api/admin/status").expect_status(200).json();
    assert!(status["replication"]["last_success"].is_string(), "{status}");
    assert_eq!(status["uplink"], "online", "{status}");
    assert!(status["replication"]["rate"]["up"].as_u64() > Some(0), "{status}");
    let home = admin.call("GET", "/accueil").expect_status(200).text();
    assert!(home.contains("Synchronisation") && home.contains("dernière réussie"), "the admin page shows it");
    let metrics = relais.anonymous().call("GET", "/metrics").expect_status(200).text();
    assert!(metrics.contains("relais_sync_sessions_total{outcome=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("relais_sync_backlog_changes{direction=\"up\"} 0"), "{metrics}");
}

#[test]
fn a_box_reaches_only_its_own_school() {
    let mut region = Region::init(None);
    region.serve();
    let a = replicating_box(&region.bundle(UAI, "École A", None, &[]));
    let b = replicating_box(&region.bundle(OTHER_UAI, "École B", None, &[]));
    wait_enrolled(&a);
    wait_enrolled(&b);
    let logs = || format!("A:\n{}\nB:\n{}\nregion:\n{}", a.stderr_tail(), b.stderr_tail(), region.stderr_tail());
    let admin_a = a.admin();
    let secret = content(7, 200 * KIB);
    admin_a.put("school/secret-a.pdf", &secret).expect_status(201);
    let paul = a.user(&admin_a, "paul.prof", "teacher", &["CM2"], &[]);
    paul.put("classes/CM2/a.txt", b"ecole A").expect_status(201);
    let paul_home = region_login(&region, "paul.prof", &logs);
    wait_for_file(&paul_home, "classes/CM2/a.txt", b"ecole A", "A to region", &logs);
    wait_for_file(&paul_home, "school/secret-a.pdf", &secret, "A to region", &logs);

    // B syncs too, and sees none of it.
    let admin_b = b.admin();
    admin_b.put("school/b.txt", b"ecole B").expect_status(201);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(admin_b.get("school/secret-a.pdf").status, 404);
    assert!(b.data_dir().join("meta").exists());
    let users_b = admin_b.call("GET", "/api/admin/users").expect_status(200).json();
    assert!(!users_b.to_string().contains("paul.prof"), "A's people never reach B: {users_b}");

    // B's certificate asking for A's content directly is refused.
    use relais::enroll::client::tls_config;
    let id = identity(&b.data_dir());
    let root = std::fs::read_to_string(id.join("region-ca.crt")).expect("root");
    let chain = std::fs::read_to_string(id.join("box.crt")).expect("chain");
    let key = provisioning::BoxKey::load(&id.join("box.key")).expect("key");
    let tls = tls_config(&root, Some((&chain, key.pkcs8_der()))).expect("tls");
    let agent = ureq::AgentBuilder::new().tls_config(std::sync::Arc::new(tls)).build();
    let hash = blake3::hash(&secret).to_hex().to_string();
    let url = format!("{}/sync/v1/manifest/{hash}", region.url());
    match agent.get(&url).call() {
        Err(ureq::Error::Status(403, _)) => {}
        other => panic!("{url}: B must be refused A's manifest, got {:?}", other.map(|r| r.status())),
    }
    let url = format!("{}/sync/v1/chunks", region.url());
    match agent.post(&url).send_json(serde_json::json!({ "chunks": [hash] })) {
        Err(ureq::Error::Status(403, _)) => {}
        other => panic!("{url}: B must be refused A's chunks, got {:?}", other.map(|r| r.status())),
    }
    // Without a box certificate, nothing at all.
    let anonymous =
        ureq::AgentBuilder::new().tls_config(std::sync::Arc::new(tls_config(&root, None).expect("tls"))).build();
    match anonymous.post(&format!("{}/sync/v1/hello", region.url())).send_string("{}") {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("a client without a box certificate must get 401, got {:?}", other.map(|r| r.status())),
    }
}

#[test]
fn the_region_imports_a_schools_directory_and_it_flows_down() {
    let mut region = Region::init(None);
    region.serve();
    let relais = replicating_box(&region.bundle(UAI, "École des Tilleuls", None, &[]));
    wait_enrolled(&relais);
    let logs = || format!("box:\n{}\nregion:\n{}", relais.stderr_tail(), region.stderr_tail());
    let export =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/directory/generic/eleves.csv"))
            .expect("fixture");
    let mut admin = region.client();
    assert_eq!(admin.login("admin", ADMIN_PASSWORD).status, 200);
    let import = |uai: &str, export: &[u8]| {
        let req = admin.request("POST", &format!("/api/admin/import?uai={uai}&file=eleves.csv"));
        Client::send(req, Some(export))
    };
    let report = import(UAI, &export).expect_status(200).json();
    let created = report["created"].as_u64().expect("created");
    assert!(created > 0, "{report}");
    // Logins are unique across the region: an export imposing a login another school uses is refused whole,
    // naming it; people without an imposed login get a free one.
    let refused = import(OTHER_UAI, &export);
    assert_eq!(refused.status, 422);
    assert!(refused.text().contains("zoe.dupont"), "{}", refused.text());
    let names = "Nom de famille,Prénom,Classe,Profil\nDupont,Zoé,CM2,élève\nLe Goff,Maël,CM2,élève\n";
    let other = import(OTHER_UAI, names.as_bytes()).expect_status(200).json();
    assert_eq!(other["created"].as_u64(), Some(2), "{other}");
    let logins = |uai: &str| -> Vec<String> {
        let users = admin.call("GET", &format!("/api/admin/users?uai={uai}")).expect_status(200).json();
        users.as_array().into_iter().flatten().filter_map(|u| u["login"].as_str().map(String::from)).collect()
    };
    let (ours, theirs) = (logins(UAI), logins(OTHER_UAI));
    assert_eq!(ours.len() as u64, created);
    assert!(ours.iter().all(|l| !theirs.contains(l)), "two schools share a login: {ours:?} / {theirs:?}");

    // The school's people reach its box, and only them.
    let box_admin = relais.admin();
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let users = box_admin.call("GET", "/api/admin/users").expect_status(200).json();
        let on_box: Vec<String> =
            users.as_array().into_iter().flatten().filter_map(|u| u["login"].as_str().map(String::from)).collect();
        if ours.iter().all(|l| on_box.contains(l)) {
            assert!(theirs.iter().all(|l| !on_box.contains(l)), "another school's people reached the box");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the directory never reached the box: {on_box:?}\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_password_changed_at_home_works_at_school_and_the_reverse() {
    let mut region = Region::init(None);
    region.serve();
    let relais = replicating_box(&region.bundle(UAI, "École des Tilleuls", None, &[]));
    wait_enrolled(&relais);
    let logs = || format!("box:\n{}\nregion:\n{}", relais.stderr_tail(), region.stderr_tail());
    let admin = relais.admin();
    let lea = relais.user(&admin, "lea.martin", "pupil", &["CM2"], &[]);
    let home = region_login(&region, "lea.martin", &logs);
    let change = |client: &Client, current: &str, new: &str| {
        let body = serde_json::json!({ "current": current, "new": new });
        client.post_json("/api/password", &body).expect_status(204);
    };
    // A wrong current password changes nothing.
    let wrong = home.post_json("/api/password", &serde_json::json!({ "current": "pas le bon", "new": "nouveau-mdp" }));
    assert_eq!(wrong.status, 401);

    // Logins are throttled: wait for the change to arrive (the box applied a change from the region), then
    // try once.
    let arrived = changes_in(&relais);
    change(&home, &password_of("lea.martin"), "change-a-la-maison");
    wait_until("the change reaches the box", CONVERGE, || changes_in(&relais) > arrived);
    assert_eq!(relais.anonymous().login("lea.martin", "change-a-la-maison").status, 200, "{}", logs());
    assert_eq!(relais.anonymous().login("lea.martin", &password_of("lea.martin")).status, 401, "the old one is gone");
    drop(lea);

    let school = relais.login("lea.martin", "change-a-la-maison");
    let sent = changes_out(&relais);
    change(&school, "change-a-la-maison", "change-a-l-ecole");
    wait_until("the change reaches the region", CONVERGE, || changes_out(&relais) > sent);
    assert_eq!(region.client().login("lea.martin", "change-a-l-ecole").status, 200, "{}", logs());
}

/// A counter of the box's `/metrics` (read from loopback).
fn metric(relais: &Relais, line_start: &str) -> u64 {
    let text = relais.anonymous().call("GET", "/metrics").expect_status(200).text();
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

fn changes_in(relais: &Relais) -> u64 {
    metric(relais, "relais_sync_changes_total{direction=\"in\"}")
}

fn changes_out(relais: &Relais) -> u64 {
    metric(relais, "relais_sync_changes_total{direction=\"out\"}")
}

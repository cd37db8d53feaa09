//! Directory imports over HTTP and from the CLI: ONDE, AAF and CSV exports, all-or-nothing refusals that
//! name file, line and field, idempotent re-imports, class moves, leavers, undo and the activation flow.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::*;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/directory").join(path)
}

fn read_fixture(path: &str) -> Vec<u8> {
    std::fs::read(fixture(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A zip of fixtures (or of `(name, bytes)` pairs), as an admin would upload a whole export.
fn zip_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in members {
        zip.start_file(*name, zip::write::SimpleFileOptions::default()).expect("zip member");
        zip.write_all(bytes).expect("zip write");
    }
    zip.finish().expect("zip finish").into_inner()
}

fn onde_zip() -> Vec<u8> {
    zip_of(&[
        ("CSVExtraction-eleves.csv", read_fixture("onde/CSVExtraction-eleves.csv")),
        ("CSVExtraction-enseignants.csv", read_fixture("onde/CSVExtraction-enseignants.csv")),
        ("CSVExtraction-responsables.csv", read_fixture("onde/CSVExtraction-responsables.csv")),
    ])
}

/// `POST /api/admin/import[?file=NAME]` with `body`.
fn import(admin: &Client, name: Option<&str>, body: &[u8]) -> Resp {
    let path = match name {
        Some(name) => format!("/api/admin/import?file={}", encode_path(name)),
        None => "/api/admin/import".to_string(),
    };
    Client::send(admin.request("POST", &path), Some(body))
}

fn counts(report: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| report[k].as_u64().unwrap_or_else(|| panic!("report without {k}: {report}"));
    (n("created"), n("updated"), n("moved"), n("leaving"))
}

fn users(admin: &Client) -> Vec<Value> {
    let list = admin.call("GET", "/api/admin/users").expect_status(200).json();
    list.as_array().cloned().unwrap_or_default()
}

fn user<'a>(all: &'a [Value], login: &str) -> &'a Value {
    all.iter().find(|u| u["login"] == login).unwrap_or_else(|| panic!("no account {login} among {all:?}"))
}

/// The activation code of `login`, read off the printable sheet as an admin would.
fn activation_code(admin: &Client, login: &str) -> String {
    let sheet = admin.call("GET", "/admin/activation").expect_status(200).text();
    let at = sheet.find(&format!("<code>{login}</code>")).unwrap_or_else(|| panic!("{login} not on the sheet"));
    let rest = &sheet[at..];
    let code_at =
        rest.find("Code d'activation : <code>").expect("code on the card") + "Code d'activation : <code>".len();
    rest[code_at..rest[code_at..].find("</code>").expect("end of code") + code_at].to_string()
}

#[test]
fn onde_export_imports_once_and_re_imports_as_nothing() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let first = import(&admin, Some("export-onde.zip"), &onde_zip());
    assert_eq!(first.status, 200, "{}", first.text());
    let report = first.json();
    assert_eq!(report["errors"], json!([]));
    let (created, updated, moved, leaving) = counts(&report);
    assert!(created >= 10, "{report}");
    assert_eq!((updated, moved, leaving), (0, 0, 0));

    let all = users(&admin);
    assert_eq!(all.len() as u64, created + 1, "every person plus the admin");
    let lea = user(&all, "lea.dupont");
    assert_eq!(lea["role"], "pupil");
    assert_eq!(lea["classes"], json!(["CM2"]));
    assert_eq!(lea["display_name"], "Léa DUPONT", "Latin-1 accents decoded");
    let eloise =
        all.iter().find(|u| u["display_name"].as_str().is_some_and(|n| n.starts_with("Éloïse"))).expect("Éloïse");
    assert_eq!(eloise["classes"], json!(["CE1-CE2 A"]));
    let sophie = all.iter().find(|u| u["role"] == "parent" && u["display_name"] == "Sophie DUPONT").expect("guardian");
    let children = sophie["children"].as_array().expect("children");
    assert!(children.contains(&json!("lea.dupont")), "{sophie}");
    assert_eq!(children.len(), 2, "one guardian, two children: {sophie}");
    assert!(all.iter().any(|u| u["role"] == "teacher" && u["classes"] == json!(["CM2"])), "the CM2 teacher");

    let again = import(&admin, Some("export-onde.zip"), &onde_zip()).expect_status(200).json();
    assert_eq!(counts(&again), (0, 0, 0, 0), "re-importing the same export changes nothing: {again}");
    assert_eq!(users(&admin), all);
}

#[test]
fn the_first_login_with_the_activation_code_chooses_a_password() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    import(&admin, Some("export-onde.zip"), &onde_zip()).expect_status(200);
    let code = activation_code(&admin, "lea.dupont");
    assert_eq!(code.len(), 9, "printed as ABCD-EFGH: {code}");

    let mut lea = relais.anonymous();
    let first = lea.login("lea.dupont", &code.to_lowercase().replace('-', ""));
    assert_eq!(first.status, 403, "{}", first.text());
    assert_eq!(first.json()["activation_required"], true);
    let weak = lea.post_json("/api/activate", &json!({"login": "lea.dupont", "code": code, "password": "court"}));
    assert_eq!(weak.status, 400);
    let done =
        lea.post_json("/api/activate", &json!({"login": "lea.dupont", "code": code, "password": "mon-nouveau-mdp"}));
    assert_eq!(done.status, 200, "{}", done.text());
    assert!(done.header("set-cookie").is_some_and(|c| c.starts_with("relais_session=")));

    assert_eq!(relais.anonymous().login("lea.dupont", &code).status, 401, "the code dies at activation");
    let mut again = relais.anonymous();
    assert_eq!(again.login("lea.dupont", "mon-nouveau-mdp").status, 200);
    let me = again.me();
    assert_eq!(me["classes"], json!(["CM2"]));
    let reused = relais
        .anonymous()
        .post_json("/api/activate", &json!({"login": "lea.dupont", "code": code, "password": "autre-mdp-123"}));
    assert_eq!(reused.status, 401, "an activation code works once");
    assert!(!admin.call("GET", "/admin/activation").text().contains("<code>lea.dupont</code>"));
}

#[test]
fn the_aaf_set_imports_with_subjects_groups_and_parent_links() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let names = [
        "ENT_0123456A_Complet_20260901_Eleve_0000.xml",
        "ENT_0123456A_Complet_20260901_PersRelEleve_0000.xml",
        "ENT_0123456A_Complet_20260901_PersEducNat_0000.xml",
        "ENT_0123456A_Complet_20260901_EtabEducNat_0000.xml",
    ];
    let members: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (*n, read_fixture(&format!("aaf/{n}")))).collect();
    let report = import(&admin, None, &zip_of(&members));
    assert_eq!(report.status, 200, "{}", report.text());
    let all = users(&admin);
    let pupils: Vec<&Value> = all.iter().filter(|u| u["role"] == "pupil").collect();
    let parents: Vec<&Value> = all.iter().filter(|u| u["role"] == "parent").collect();
    let teachers: Vec<&Value> = all.iter().filter(|u| u["role"] == "teacher").collect();
    assert!(!pupils.is_empty() && !parents.is_empty() && !teachers.is_empty(), "{all:?}");
    let lea = pupils.iter().find(|u| u["display_name"] == "Léa DUPONT").expect("Léa");
    assert_eq!(lea["classes"], json!(["3A"]));
    assert!(
        parents.iter().any(|p| p["children"].as_array().is_some_and(|c| c.contains(&lea["login"]))),
        "Léa's parents"
    );
    assert!(teachers.iter().all(|t| t["classes"].as_array().is_some_and(|c| !c.is_empty())), "{teachers:?}");
    // A parent sees their child's class space, read-only.
    let parent =
        parents.iter().find(|p| p["children"].as_array().is_some_and(|c| c.contains(&lea["login"]))).expect("parent");
    let login = parent["login"].as_str().expect("login");
    let code = activation_code(&admin, login);
    let mut client = relais.anonymous();
    client
        .post_json("/api/activate", &json!({"login": login, "code": code, "password": "parent-mdp-1"}))
        .expect_status(200);
    client.login(login, "parent-mdp-1").expect_status(200);
    admin.put("classes/3A/cours.txt", b"cours").expect_status(201);
    assert_eq!(client.get("classes/3A/cours.txt").status, 200);
    assert_eq!(client.put("classes/3A/cours.txt", b"x").status, 403);
}

#[test]
fn bad_exports_are_refused_whole_with_every_problem_named() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    import(&admin, Some("export-onde.zip"), &onde_zip()).expect_status(200);
    let before = users(&admin);
    let cases = [
        ("hostile/bad-date.csv", "bad-date.csv"),
        ("hostile/missing-columns.csv", "missing-columns.csv"),
        ("hostile/duplicate-ids.xml", "duplicate-ids.xml"),
        ("hostile/truncated.xml", "truncated.xml"),
        ("hostile/bomb.xml", "bomb.xml"),
        // Guardians whose children are not in the import (nor on the box under those names).
        ("hostile/../onde/CSVExtraction-responsables.csv", "CSVExtraction-responsables.csv"),
    ];
    for (path, name) in cases {
        let started = Instant::now();
        let resp = import(&admin, Some(name), &read_fixture(path));
        assert_eq!(resp.status, 422, "{name}: {}", resp.text());
        assert!(started.elapsed() < Duration::from_secs(20), "{name} took {:?}", started.elapsed());
        let report = resp.json();
        let errors = report["errors"].as_array().cloned().unwrap_or_default();
        assert!(!errors.is_empty(), "{name}: {report}");
        for e in &errors {
            assert_eq!(e["file"], name, "{name}: {e}");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            assert!(e.get("line").is_some() && e.get("field").is_some(), "{e}");
        }
        assert_eq!(counts(&report), (0, 0, 0, 0));
        assert_eq!(users(&admin), before, "{name} changed the directory");
    }
    // The bad date is reported on its own line, naming the field and the value.
    let report = import(&admin, Some("bad-date.csv"), &read_fixture("hostile/bad-date.csv")).json();
    let e = &report["errors"][0];
    assert!(e["line"].as_u64().is_some_and(|l| l >= 2), "{e}");
    assert!(e["message"].as_str().is_some_and(|m| m.contains('«')), "the message quotes the value: {e}");
}

#[test]
fn csv_injection_text_is_kept_as_plain_text() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let resp = import(&admin, Some("injection.csv"), &read_fixture("hostile/injection.csv"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let all = users(&admin);
    assert!(
        all.iter().any(|u| u["display_name"].as_str().is_some_and(|n| n.contains("=cmd|' /C calc'!A0"))),
        "{all:?}"
    );
    let page = admin.call("GET", "/admin/comptes").expect_status(200).text();
    assert!(page.contains("=cmd|&#39; /C calc&#39;!A0") || page.contains("=cmd|' /C calc'!A0"), "listed verbatim");
}

/// ONDE pupils as UTF-8 text, edited by `edit`, imported as a complete extraction.
fn onde_pupils(edit: impl Fn(String) -> String) -> Vec<u8> {
    let raw = read_fixture("onde/CSVExtraction-eleves.csv");
    let text: String = raw.iter().map(|&b| b as char).collect(); // Latin-1 → Unicode
    edit(text).into_bytes()
}

#[test]
fn class_moves_leavers_and_undo() {
    let relais = Relais::start(&format!("{NO_QUOTAS}\n[directory]\nleaver_delay = \"3s\"\n"));
    let admin = relais.admin();
    let name = "CSVExtraction-eleves.csv";
    import(&admin, Some(name), &onde_pupils(|t| t)).expect_status(200);
    // Zoé activates her account and keeps a file in her space.
    let code = activation_code(&admin, "zoe.martin");
    let mut zoe = relais.anonymous();
    zoe.post_json("/api/activate", &json!({"login": "zoe.martin", "code": code, "password": "zoe-mdp-123"}))
        .expect_status(200);
    zoe.login("zoe.martin", "zoe-mdp-123").expect_status(200);
    zoe.put("me/notes.txt", &vec![7u8; 300_000]).expect_status(201);
    let blobs_with_zoe = relais.blob_bytes();
    let before = users(&admin);

    // Next year's export: Léa moves to CM1 (and her birth date is corrected), Zoé has left.
    let next = onde_pupils(|t| {
        t.replace("\"DUPONT\";\"\";\"Léa\";\"Marie\";\"31/03/2015\";\"F\";\"1 rue des Lilas\";\"75001\";\"Paris\";\"3\";\"CM2\";\"CM2\"",
            "\"DUPONT\";\"\";\"Léa\";\"Marie\";\"31/03/2015\";\"F\";\"1 rue des Lilas\";\"75001\";\"Paris\";\"3\";\"CM1\";\"CM1\"")
            .lines()
            .filter(|l| !l.contains("\"Zoé\""))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let report = import(&admin, Some(name), &next).expect_status(200).json();
    assert_eq!(counts(&report), (0, 0, 1, 1), "{report}");
    assert_eq!(user(&users(&admin), "lea.dupont")["classes"], json!(["CM1"]));
    assert_eq!(relais.anonymous().login("zoe.martin", "zoe-mdp-123").status, 403, "a leaver is disabled at once");
    assert_eq!(zoe.call("GET", "/api/me").status, 401, "and their sessions end");

    // Undo puts the directory back as it was before this import.
    admin.call("POST", "/api/admin/import/undo").expect_status(200);
    assert_eq!(users(&admin), before);
    assert_eq!(relais.anonymous().login("zoe.martin", "zoe-mdp-123").status, 200);
    assert_eq!(admin.call("POST", "/api/admin/import/undo").status, 409, "only one level of undo");

    // Redo it, and after the (shortened) delay Zoé's account and files are gone.
    import(&admin, Some(name), &next).expect_status(200);
    wait_until("the leaver to be deleted", Duration::from_secs(30), || {
        let gone = !users(&admin).iter().any(|u| u["login"] == "zoe.martin");
        if !gone {
            std::thread::sleep(Duration::from_millis(300));
        }
        gone
    });
    assert!(relais.blob_bytes() <= blobs_with_zoe - 300_000, "the leaver's files are freed");
}

#[test]
fn ten_thousand_line_export_imports_in_bounded_time() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let mut csv = String::from("nom;prenom;classe;profil;date de naissance;id\n");
    for i in 0..10_000 {
        csv.push_str(&format!("Nom{i};Prénom{};CM{};eleve;01/02/2015;ID{i:05}\n", i % 97, i % 5 + 1));
    }
    let started = Instant::now();
    let report = import(&admin, Some("eleves.csv"), csv.as_bytes());
    assert_eq!(report.status, 200, "{}", report.text());
    assert_eq!(counts(&report.json()).0, 10_000);
    assert!(started.elapsed() < Duration::from_secs(120), "10 000 people took {:?}", started.elapsed());
    let again = import(&admin, Some("eleves.csv"), csv.as_bytes()).expect_status(200).json();
    assert_eq!(counts(&again), (0, 0, 0, 0));
}

fn relais_import(args: &[&str], data: &Path, env_password: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("import").args(args).arg("--data").arg(data);
    cmd.env_remove("RELAIS_ADMIN_PASSWORD");
    if let Some(p) = env_password {
        cmd.env("RELAIS_ADMIN_PASSWORD", p);
    }
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(120));
    (status.and_then(|s| s.code()), out, err)
}

#[test]
fn technicians_import_from_the_command_line() {
    let mut relais = Relais::start(NO_QUOTAS);
    let files: Vec<String> = ["eleves", "enseignants", "responsables"]
        .iter()
        .map(|k| fixture(&format!("onde/CSVExtraction-{k}.csv")).display().to_string())
        .collect();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();

    // While the daemon runs, the data folder is its own: the command says how to go through it instead.
    let (code, _, err) = relais_import(&args, &relais.data_dir(), None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--url"), "{err}");

    relais.stop();
    let (code, out, err) = relais_import(&args, &relais.data_dir(), None);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("créés :"), "summary printed: {out}");
    let (code, _, err) =
        relais_import(&[fixture("hostile/bad-date.csv").to_str().expect("utf-8 path")], &relais.data_dir(), None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad-date.csv ligne"), "errors name file and line: {err}");

    relais.respawn();
    let admin = relais.admin();
    assert!(users(&admin).iter().any(|u| u["login"] == "lea.dupont"));
    // Through the running daemon.
    let mut cmd = Command::new(BIN);
    cmd.arg("import").arg("--url").arg(relais.url("")).args(&args[..1]);
    cmd.env("RELAIS_ADMIN_PASSWORD", ADMIN_PASSWORD);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(120));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out}{err}");
    assert!(out.contains("créés : 0"), "the same export again changes nothing: {out}");
}

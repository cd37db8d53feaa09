//! Backup, restore, factory reset and status, against the real binary: a backup taken while uploads run
//! restores byte for byte into a new folder under a new replica id; damaged backups are refused whole; a
//! technician's status is the same whether the daemon answers or the folder is read while stopped.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

fn hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn cli_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let (code, out, err) = relais_cli(&args);
    assert_eq!(code, Some(0), "relais {args:?} failed:\nstdout:\n{out}\nstderr:\n{err}");
    out
}

fn status_json(data: &Path) -> Value {
    let out = cli_ok(&[&"status", &"--data", &data, &"--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{out}"))
}

/// Every file under `me/` of `client`, by path, with its content hash.
fn tree(client: &Client, folder: &str, out: &mut BTreeMap<String, String>) {
    let listing = client.get(&format!("{folder}/")).expect_status(200).json();
    for item in listing.as_array().expect("a listing") {
        let name = item["name"].as_str().expect("name");
        let path = format!("{folder}/{name}");
        if item["dir"].as_bool() == Some(true) {
            tree(client, &path, out);
        } else {
            let body = client.get(&path).expect_status(200).body;
            out.insert(path, hash(&body));
        }
    }
}

#[test]
fn a_backup_taken_while_uploads_run_restores_byte_for_byte_under_a_new_replica_id() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    admin.create_user("lea.martin", "pupil", &["CM2"], &[]);
    admin.create_user("paul.prof", "teacher", &["CM2"], &[]);
    let paul = relais.login("paul.prof", &password_of("paul.prof"));

    // Before the backup: files of several sizes, one content twice (stored once), an empty file.
    let mut before = BTreeMap::new();
    for (i, size) in [0, 1, 4 * KIB, MIB, 5 * MIB].into_iter().enumerate() {
        let body = content(i as u64, size);
        admin.put(&format!("me/avant/f{i}.bin"), &body).expect_status(201);
        before.insert(format!("me/avant/f{i}.bin"), hash(&body));
    }
    let twice = content(99, 300 * KIB);
    admin.put("me/avant/copie-1.pdf", &twice).expect_status(201);
    admin.put("me/avant/copie-2.pdf", &twice).expect_status(201);
    before.insert("me/avant/copie-1.pdf".into(), hash(&twice));
    before.insert("me/avant/copie-2.pdf".into(), hash(&twice));
    paul.put("classes/CM2/cours.odt", &content(7, 200 * KIB)).expect_status(201);
    // Deleted during the backup: the backup must still hold it whole (it was there when the snapshot was
    // taken), even though its content loses its last reference meanwhile.
    let doomed = content(8, 2 * MIB);
    admin.put("me/avant/supprime-pendant.bin", &doomed).expect_status(201);

    // Uploads go on while the backup runs: every acknowledged one is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let writer = {
        let (stop, acknowledged, client) = (stop.clone(), acknowledged.clone(), relais.admin());
        std::thread::spawn(move || {
            let started = Instant::now();
            for i in 0..400u64 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let body = content(1000 + i, 64 * KIB + i * 997);
                let path = format!("me/pendant/u{i}.bin");
                if client.try_put(&path, &body).is_ok_and(|r| r.status == 201) {
                    acknowledged.lock().expect("lock").insert(path, hash(&body));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let backup_file = relais.root().join("sauvegarde.zip");
    let data = relais.data_dir();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["backup", "--out"]).arg(&backup_file).arg("--data").arg(&data);
    let backup = std::thread::spawn(move || run_bounded(cmd, Duration::from_secs(120)));
    wait_until("the daemon takes its snapshot", Duration::from_secs(30), || {
        relais.stderr_tail().contains("backup started")
    });
    admin.call("DELETE", &files_url("me/avant/supprime-pendant.bin")).expect_status(204);
    let (status, out, err) = backup.join().expect("backup thread");
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    assert!(status.is_some_and(|s| s.success()), "backup failed:\n{out}\n{err}");
    assert!(out.contains("backup written to"), "{out}");
    assert_eq!(
        std::fs::metadata(&backup_file).expect("backup file").permissions().mode() & 0o777,
        0o600,
        "a backup holds everyone's files and password hashes"
    );
    assert!(!relais.root().join("sauvegarde.zip.part").exists());
    let during = acknowledged.lock().expect("lock").clone();
    assert!(during.len() >= 5, "uploads kept going during the backup ({} acknowledged)", during.len());
    let source = status_json(&data);
    assert_eq!(source["running"], true, "the running daemon answered: {source}");

    // Restore into a fresh box and compare.
    let mut restored = Relais::unstarted(NO_QUOTAS, Some(ADMIN_PASSWORD));
    let out = cli_ok(&[&"restore", &backup_file, &"--data", &restored.data_dir()]);
    assert!(out.contains("new replica id"), "{out}");
    let target = status_json(&restored.data_dir());
    assert_ne!(target["replica_id"], source["replica_id"], "a restored box is a new replica");
    assert_eq!(target["accounts"], source["accounts"]);
    restored.respawn();
    let admin2 = restored.admin();
    let paul2 = restored.login("paul.prof", &password_of("paul.prof"));
    let mut got = BTreeMap::new();
    tree(&admin2, "me", &mut got);
    for (path, want) in &before {
        assert_eq!(got.get(path), Some(want), "{path}: written before the backup, restored byte for byte");
    }
    assert_eq!(
        got.get("me/avant/supprime-pendant.bin"),
        Some(&hash(&doomed)),
        "deleted while the backup ran, after its snapshot: still whole in the backup"
    );
    // Uploads acknowledged during the backup are either in it, whole, or not at all; nothing else is.
    let mut in_backup = 0;
    for (path, have) in &got {
        if let Some(want) = during.get(path) {
            assert_eq!(have, want, "{path}: an upload made during the backup was restored damaged");
            in_backup += 1;
        } else {
            assert!(before.contains_key(path) || path.ends_with("supprime-pendant.bin"), "{path}: unknown file");
        }
    }
    eprintln!("{in_backup} of {} uploads made during the backup are in it", during.len());
    assert_eq!(paul2.get("classes/CM2/cours.odt").expect_status(200).body, content(7, 200 * KIB));
    // Quotas are recomputed from the tree: the admin's usage is the sum of their files.
    let sizes: u64 = admin2
        .get("me/avant/")
        .expect_status(200)
        .json()
        .as_array()
        .expect("listing")
        .iter()
        .map(|i| i["size"].as_u64().unwrap_or(0))
        .sum::<u64>();
    let pendant: u64 = got
        .keys()
        .filter(|p| p.starts_with("me/pendant/"))
        .map(|p| {
            admin2.call("HEAD", &files_url(p)).header("content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum();
    assert_eq!(admin2.quota_used(), sizes + pendant);

    // The source box kept serving and still has everything acknowledged.
    let mut now = BTreeMap::new();
    tree(&admin, "me", &mut now);
    for (path, want) in during.iter().chain(before.iter()) {
        assert_eq!(now.get(path), Some(want), "{path}: lost on the source box");
    }
}

/// A small backup of a stopped box, written by the stopped-folder path.
fn small_backup() -> (Relais, PathBuf, Vec<u8>) {
    let mut relais = Relais::start(NO_QUOTAS);
    let marker = b"CONTENU-REPERABLE-DANS-LA-SAUVEGARDE-".repeat(100);
    relais.admin().put("me/repere.txt", &marker).expect_status(201);
    relais.stop();
    let file = relais.root().join("b.zip");
    let out = cli_ok(&[&"backup", &"--data", &relais.data_dir(), &"--out", &file]);
    assert!(out.contains("1 contents") || out.contains("contents"), "{out}");
    (relais, file, marker)
}

#[test]
fn damaged_backups_are_refused_whole_and_write_nothing() {
    let (relais, good, marker) = small_backup();
    let root = relais.root().to_path_buf();
    let raw = std::fs::read(&good).expect("read");
    let members = zip_members(&good);

    // One byte of a stored content flipped.
    let at = raw.windows(marker.len()).position(|w| w == marker.as_slice()).expect("the content is stored as is");
    let mut flipped = raw.clone();
    flipped[at + 10] ^= 0x20;
    let flipped_path = root.join("flipped.zip");
    std::fs::write(&flipped_path, flipped).expect("write");
    // Cut in the middle (a backup copied to a full USB stick).
    let truncated = root.join("truncated.zip");
    std::fs::write(&truncated, &raw[..raw.len() / 2]).expect("write");
    // The accounts edited and the zip rebuilt cleanly: the manifest's hash no longer matches.
    let edited = root.join("edited.zip");
    let rebuilt: Vec<_> = members
        .iter()
        .map(|(n, b)| {
            let b = if n == "users.jsonl" {
                String::from_utf8_lossy(b).replace("admin", "pirate").into_bytes()
            } else {
                b.clone()
            };
            (n.clone(), b)
        })
        .collect();
    write_zip(&edited, &rebuilt);
    // A member that is not ours (zip-slip).
    let slip = root.join("slip.zip");
    let mut slipped = members.clone();
    slipped.push(("../../evil.txt".into(), b"owned".to_vec()));
    write_zip(&slip, &slipped);
    // A content the tree needs is missing.
    let missing = root.join("missing.zip");
    let without: Vec<_> = members.iter().filter(|(n, _)| !n.starts_with("blobs/")).cloned().collect();
    write_zip(&missing, &without);
    // Not a zip at all.
    let text = root.join("notes.zip");
    std::fs::write(&text, "ceci n'est pas une sauvegarde").expect("write");

    let cases: [(&Path, &str); 6] = [
        (&flipped_path, "is damaged (blobs/"),
        (&truncated, "not a readable zip"),
        (&edited, "does not match the manifest"),
        (&slip, "unexpected member"),
        (&missing, "missing"),
        (&text, "not a readable zip"),
    ];
    let parent = root.join("restores");
    std::fs::create_dir(&parent).expect("mkdir");
    for (file, message) in cases {
        let target = parent.join("box");
        let (code, out, err) =
            relais_cli(["restore".as_ref(), file.as_os_str(), "--data".as_ref(), target.as_os_str()]);
        assert_eq!(code, Some(2), "{}: refused as bad input\n{out}\n{err}", file.display());
        assert!(err.contains(message), "{}: the message should say {message:?}:\n{err}", file.display());
        let left: Vec<_> = std::fs::read_dir(&parent).expect("read").flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{}: a refused restore left {left:?}", file.display());
    }
    assert!(!root.join("evil.txt").exists() && !Path::new("/tmp/evil.txt").exists());

    // A folder in use is never overwritten.
    let (code, _, err) =
        relais_cli(["restore".as_ref(), good.as_os_str(), "--data".as_ref(), relais.data_dir().as_os_str()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not empty") && err.contains("reset --factory"), "{err}");

    // The good one restores.
    let target = parent.join("box");
    cli_ok(&[&"restore", &good, &"--data", &target]);
    assert!(target.join("meta").is_dir());
}

#[test]
fn status_is_the_same_whether_the_daemon_runs_or_not() {
    let mut relais = Relais::start("");
    let admin = relais.admin();
    admin.put("me/a.txt", b"bonjour").expect_status(201);
    let api = admin.call("GET", "/api/admin/status").expect_status(200).json();
    for key in ["role", "uai", "version", "enrolled", "certificate", "uplink", "replication", "disk"] {
        assert!(api.get(key).is_some(), "GET /api/admin/status lacks {key}: {api}");
    }
    assert_eq!(api["role"], "box");
    assert_eq!(api["uplink"], "offline", "a standalone box has no uplink");
    assert!(api["disk"]["used"].as_u64() >= Some(7) && api["disk"]["free"].as_u64() > Some(0), "{api}");
    let pupil = relais.user(&admin, "lea.martin", "pupil", &["CM2"], &[]);
    assert_eq!(pupil.call("GET", "/api/admin/status").status, 403);

    let socket = relais.data_dir().join("relais.sock");
    assert_eq!(std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777, 0o600);
    let running = status_json(&relais.data_dir());
    assert_eq!(running["running"], true);
    assert_eq!(running["replica_id"], api["replica_id"]);
    let text = cli_ok(&[&"status", &"--data", &relais.data_dir()]);
    assert!(text.contains("daemon        running") && text.contains("accounts      2"), "{text}");

    relais.stop();
    assert!(!socket.exists(), "the socket goes with the daemon");
    let stopped = status_json(&relais.data_dir());
    assert_eq!(stopped["running"], false);
    for key in ["replica_id", "accounts", "role", "enrolled", "uai"] {
        assert_eq!(stopped[key], running[key], "{key} differs between the running and the stopped status");
    }
    // A killed daemon leaves its socket behind: status still reads the folder.
    relais.respawn();
    wait_until("the control socket", Duration::from_secs(10), || socket.exists());
    relais.kill9();
    assert!(socket.exists());
    assert_eq!(status_json(&relais.data_dir())["running"], false);
    relais.respawn();
    assert_eq!(status_json(&relais.data_dir())["running"], true, "the next daemon replaces the stale socket");
}

#[test]
fn factory_reset_asks_refuses_while_running_and_erases_everything() {
    let mut relais = Relais::start("");
    relais.admin().put("me/a.txt", b"bonjour").expect_status(201);
    let data = relais.data_dir();
    let replica = status_json(&data)["replica_id"].clone();
    let (code, _, err) =
        relais_cli(["reset".as_ref(), "--factory".as_ref(), "--yes".as_ref(), "--data".as_ref(), data.as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("stop the service"), "{err}");
    relais.stop();
    // No terminal to ask on and no --yes: nothing happens.
    let (code, _, err) = relais_cli(["reset".as_ref(), "--factory".as_ref(), "--data".as_ref(), data.as_os_str()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--yes"), "{err}");
    assert!(data.join("meta").is_dir(), "nothing erased without confirmation");
    let out = cli_ok(&[&"reset", &"--factory", &"--yes", &"--data", &data]);
    assert!(out.contains("erased"), "{out}");
    let left: Vec<_> = std::fs::read_dir(&data).expect("read").flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("lock")]);
    relais.respawn();
    let admin = relais.admin();
    assert_eq!(admin.get("me/a.txt").status, 404, "the files are gone");
    assert_ne!(status_json(&data)["replica_id"], replica, "a new store, a new replica");
}

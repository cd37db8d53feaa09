//! Files over `/api/files/`: byte-exact uploads and downloads from 0 B to 200 MiB, ranges, ETags, listings,
//! mkdir and delete, quotas, dedup, what survives a restart, Unicode names and zip downloads.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use crate::util::*;

/// blake3 of "", "a", "abc" and "bonjour\n" (computed with the blake3 crate, 1.8).
const B3_EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
const B3_A: &str = "17762fddd969a453925d65717ac3eea21320b66b54342fde15128d6caf21215f";
const B3_ABC: &str = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85";
const B3_BONJOUR: &str = "a65461bde35b08d54062cd7fa3e0a4a271c4b5878e13a7287817a80e9d10e461";

fn quoted(hash: &str) -> String {
    format!("\"{hash}\"")
}

/// `Tue, 25 Nov 2025 03:31:00 GMT` (IMF-fixdate, as HTTP wants it).
#[track_caller]
fn assert_http_date(value: &str) {
    let b = value.as_bytes();
    let ok = value.len() == 29
        && value.ends_with(" GMT")
        && b[3] == b','
        && b[4] == b' '
        && b[7] == b' '
        && b[11] == b' '
        && b[16] == b' '
        && b[19] == b':'
        && b[22] == b':';
    assert!(ok, "{value:?} is not an HTTP date");
}

/// `2025-11-25T03:31:00Z` or with an offset and/or fractional seconds.
#[track_caller]
fn assert_rfc3339(value: &str) {
    let b = value.as_bytes();
    let shape = value.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':';
    let zone = value.ends_with('Z') || value.ends_with('z') || {
        let tail = &b[b.len() - 6..];
        (tail[0] == b'+' || tail[0] == b'-') && tail[3] == b':'
    };
    assert!(shape && zone, "{value:?} is not an RFC 3339 date-time");
    let year: u32 = value[..4].parse().expect("digits");
    assert!((2024..2100).contains(&year), "implausible year in {value:?}");
}

#[test]
fn small_files_round_trip_with_blake3_etags() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    assert!(admin.list("me/").is_empty(), "a new space is empty");
    for (name, body, hash) in
        [("vide.txt", &b""[..], B3_EMPTY), ("un.txt", &b"a"[..], B3_A), ("abc.txt", &b"abc"[..], B3_ABC)]
    {
        let path = format!("me/{name}");
        let put = admin.put(&path, body).expect_status(201);
        assert_eq!(put.etag(), quoted(hash), "ETag of the PUT of {name}");
        let get = admin.get(&path).expect_status(200);
        assert_eq!(get.body, body, "content of {name}");
        assert_eq!(get.etag(), quoted(hash), "ETag of the GET of {name}");
        assert_eq!(get.header("accept-ranges"), Some("bytes"), "{get:?}");
        assert_http_date(get.header("last-modified").unwrap_or_else(|| panic!("no Last-Modified: {get:?}")));
        if let Some(len) = get.header("content-length") {
            assert_eq!(len, body.len().to_string());
        }
    }
    // Replacing a file answers 204 with the new content's ETag.
    let put = admin.put("me/abc.txt", b"bonjour\n").expect_status(204);
    assert_eq!(put.etag(), quoted(B3_BONJOUR));
    assert_eq!(admin.get("me/abc.txt").expect_status(200).body, b"bonjour\n");
    let sizes: Vec<(String, u64)> = admin.list("me/").into_iter().map(|e| (e.name, e.size)).collect();
    assert_eq!(sizes, [("abc.txt".to_string(), 8), ("un.txt".to_string(), 1), ("vide.txt".to_string(), 0)]);
    assert_eq!(admin.quota_used(), 9);
    // A missing file is a 404 with a JSON error.
    admin.get("me/absent.txt").expect_status(404).error_message();
}

#[test]
fn five_mib_round_trip_with_and_without_content_length() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let len = 5 * MIB;
    let sized = content(5, len);
    admin.put("me/sized.bin", &sized).expect_status(201);
    admin.put_reader("me/chunked.bin", Gen::new(6, len), None).expect_status(201);
    let got = admin.get("me/sized.bin").expect_status(200);
    assert!(got.body == sized, "me/sized.bin differs ({} bytes back)", got.body.len());
    let (status, _, reader) = admin.get_stream("me/chunked.bin");
    assert_eq!(status, 200);
    assert_stream_matches(reader, 6, len, "me/chunked.bin");
    assert_eq!(admin.quota_used(), 2 * len);
    let listing = admin.list("me/");
    assert!(listing.iter().all(|e| e.size == len && !e.dir), "{listing:?}");
}

#[test]
fn two_hundred_mib_stream_both_ways() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let prof = relais.user(&admin, "prof", "teacher", &["6A"], &[]);
    let len = 200 * MIB;
    let started = Instant::now();
    let put = prof.put_reader("me/video.mp4", Gen::new(200, len), Some(len)).expect_status(201);
    let etag = put.etag();
    let upload = started.elapsed();

    let started = Instant::now();
    let (status, headers, reader) = prof.get_stream("me/video.mp4");
    assert_eq!(status, 200);
    let header = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    assert_eq!(header("etag"), Some(etag.clone()));
    if let Some(cl) = header("content-length") {
        assert_eq!(cl, len.to_string());
    }
    assert_stream_matches(reader, 200, len, "me/video.mp4");
    let download = started.elapsed();
    eprintln!("200 MiB: upload {upload:?}, download {download:?}");

    let listing = prof.list("me/");
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].size, len);
    assert_eq!(listing[0].etag.as_deref().map(|e| e.trim_matches('"')), Some(etag.trim_matches('"')));
    assert_eq!(prof.quota_used(), len);
    // Streamed, not buffered: the server never held the file in memory.
    if let Some(peak) = peak_rss_kib(relais.pid()) {
        eprintln!("server peak RSS: {peak} KiB");
        assert!(peak < 160 * 1024, "server peak RSS {peak} KiB after a 200 MiB upload and download");
    }
}

#[test]
fn range_requests() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let data = content(9, 1000);
    admin.put("me/r.bin", &data).expect_status(201);
    admin.put("me/vide.bin", b"").expect_status(201);
    for (range, from, to) in [
        ("bytes=0-9", 0, 9),
        ("bytes=500-599", 500, 599),
        ("bytes=-10", 990, 999),
        ("bytes=100-", 100, 999),
        ("bytes=990-5000", 990, 999),
        ("bytes=0-0", 0, 0),
        ("bytes=999-999", 999, 999),
    ] {
        let resp = admin.get_with("me/r.bin", &[("Range", range)]);
        assert_eq!(resp.status, 206, "Range: {range}: {resp:?}");
        assert_eq!(resp.header("content-range"), Some(format!("bytes {from}-{to}/1000").as_str()), "Range: {range}");
        assert!(resp.body == data[from..=to], "Range: {range}: wrong bytes ({} of them)", resp.body.len());
        if let Some(cl) = resp.header("content-length") {
            assert_eq!(cl, (to - from + 1).to_string(), "Range: {range}");
        }
    }
    for (path, range) in [("me/r.bin", "bytes=1000-1010"), ("me/r.bin", "bytes=5000-"), ("me/vide.bin", "bytes=0-0")] {
        let resp = admin.get_with(path, &[("Range", range)]);
        assert_eq!(resp.status, 416, "{path} Range: {range}: {resp:?}");
        let size = if path == "me/r.bin" { 1000 } else { 0 };
        assert_eq!(resp.header("content-range"), Some(format!("bytes */{size}").as_str()), "{resp:?}");
    }
    // Without Range, the whole file.
    assert!(admin.get("me/r.bin").expect_status(200).body == data);
}

#[test]
fn if_none_match_gives_304_until_the_content_changes() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let etag = admin.put("me/a.txt", b"abc").expect_status(201).etag();
    let resp = admin.get_with("me/a.txt", &[("If-None-Match", &etag)]);
    assert_eq!(resp.status, 304, "{resp:?}");
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("etag"), Some(etag.as_str()), "a 304 carries the ETag: {resp:?}");
    let other = quoted(&"0".repeat(64));
    assert_eq!(admin.get_with("me/a.txt", &[("If-None-Match", &other)]).expect_status(200).body, b"abc");

    let new_etag = admin.put("me/a.txt", b"bonjour\n").expect_status(204).etag();
    assert_ne!(new_etag, etag);
    let resp = admin.get_with("me/a.txt", &[("If-None-Match", &etag)]).expect_status(200);
    assert_eq!(resp.body, b"bonjour\n");
    assert_eq!(admin.get_with("me/a.txt", &[("If-None-Match", &new_etag)]).status, 304);
}

#[test]
fn listing_describes_files_and_folders() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let etag_a = admin.put("me/a.txt", b"abc").expect_status(201).etag();
    admin.mkdir("me/sub").expect_status(201);
    let etag_b = admin.put("me/sub/b.txt", b"bonjour\n").expect_status(201).etag();

    let listing = admin.list("me/");
    assert_eq!(listing.len(), 2, "{listing:?}");
    let (a, sub) = (&listing[0], &listing[1]);
    assert_eq!((a.name.as_str(), a.size, a.dir), ("a.txt", 3, false));
    assert_eq!(a.etag.as_ref().map(|e| quoted(e.trim_matches('"'))), Some(etag_a), "listing etag of a.txt");
    assert_rfc3339(&a.modified);
    assert_eq!((sub.name.as_str(), sub.dir), ("sub", true));
    assert_rfc3339(&sub.modified);

    let listing = admin.list("me/sub/");
    assert_eq!(listing.len(), 1, "{listing:?}");
    assert_eq!((listing[0].name.as_str(), listing[0].size, listing[0].dir), ("b.txt", 8, false));
    assert_eq!(listing[0].etag.as_ref().map(|e| quoted(e.trim_matches('"'))), Some(etag_b));

    // Folder listings come back as JSON; missing folders are 404.
    let resp = admin.get("me/sub/").expect_status(200);
    assert!(resp.header("content-type").unwrap_or_default().starts_with("application/json"), "{resp:?}");
    admin.get("me/nulle-part/").expect_status(404).error_message();
}

#[test]
fn mkdir_then_delete_is_recursive() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    admin.mkdir("me/d").expect_status(201);
    assert!(admin.list("me/d/").is_empty());
    // Parents are created by a PUT.
    admin.put("me/d/e/f.txt", b"abc").expect_status(201);
    admin.put("me/d/g.txt", b"bonjour\n").expect_status(201);
    admin.put("me/garde.txt", b"a").expect_status(201);
    assert_eq!(admin.names("me/d/"), ["e", "g.txt"]);
    assert_eq!(admin.quota_used(), 12);

    admin.delete("me/d").expect_status(204);
    assert_eq!(admin.names("me/"), ["garde.txt"]);
    admin.get("me/d/e/f.txt").expect_status(404);
    admin.get("me/d/").expect_status(404);
    admin.delete("me/d").expect_status(404).error_message();
    admin.delete("me/absent.txt").expect_status(404).error_message();
    assert_eq!(admin.quota_used(), 1, "deleted bytes no longer count");

    admin.delete("me/garde.txt").expect_status(204);
    admin.get("me/garde.txt").expect_status(404);
    assert!(admin.list("me/").is_empty());
    assert_eq!(admin.quota_used(), 0);
}

#[test]
fn quota_refuses_with_507_and_stores_nothing() {
    let relais = Relais::start("[quota]\npupil = \"64KiB\"\nteacher = \"none\"\nadmin = \"none\"\n");
    let admin = relais.admin();
    let alice = relais.user(&admin, "alice", "pupil", &["6A"], &[]);
    let me = alice.me();
    assert_eq!(me["quota"]["limit"], 65536, "{me}");
    assert_eq!(me["quota"]["used"], 0, "{me}");

    alice.put("me/a.bin", &content(1, 40 * KIB)).expect_status(201);
    assert_eq!(alice.quota_used(), 40 * KIB);

    let refuse = |path: &str, len: u64, what: &str| {
        let before = Snapshot::take(&relais, &alice, "me/");
        let resp = alice.put(path, &content(2, len));
        assert_eq!(resp.status, 507, "{what}: {resp:?}");
        resp.error_message();
        before.assert_unchanged(&relais, &alice, "me/", what);
        assert_eq!(alice.get(path).status, 404, "{what}: {path} exists");
    };
    refuse("me/b.bin", 30 * KIB, "40 KiB + 30 KiB over 64 KiB");

    // Replacing a file counts the new size instead of the old one.
    alice.put("me/a.bin", &content(3, 60 * KIB)).expect_status(204);
    assert_eq!(alice.quota_used(), 60 * KIB);
    // Up to the limit exactly, then not one byte more.
    alice.put("me/c.bin", &content(4, 4 * KIB)).expect_status(201);
    assert_eq!(alice.quota_used(), 64 * KIB);
    refuse("me/d.bin", 1, "one byte over a full quota");
    // Hand-ins are the pupil's bytes too.
    let before = Snapshot::take(&relais, &alice, "me/");
    let resp = alice.put("classes/6A/rendus/alice/devoir.bin", &content(5, 8 * KIB));
    assert_eq!(resp.status, 507, "hand-in over quota: {resp:?}");
    before.assert_unchanged(&relais, &alice, "me/", "hand-in over quota");
    // A chunked upload (no Content-Length) is counted as it arrives. Sent raw: the server may answer
    // and close before taking the whole body, which an HTTP library reports as a broken pipe.
    let before = Snapshot::take(&relais, &alice, "me/");
    let cookie = alice.cookie().expect("logged in").to_string();
    let head =
        raw_head("PUT", &files_url("me/chunked.bin"), &[("Cookie", cookie), ("Transfer-Encoding", "chunked".into())]);
    let resp = raw_exchange(relais.addr(), &head, &chunked(&content(6, 20 * KIB))).expect("an answer");
    assert_eq!(resp.status, 507, "chunked upload over quota: {resp:?}");
    before.assert_unchanged(&relais, &alice, "me/", "chunked upload over quota");

    // Deleting frees room.
    alice.delete("me/c.bin").expect_status(204);
    assert_eq!(alice.quota_used(), 60 * KIB);
    alice.put("me/d.bin", b"x").expect_status(201);
    assert_eq!(alice.quota_used(), 60 * KIB + 1);
}

#[test]
fn same_content_is_stored_once() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let alice = relais.user(&admin, "alice", "pupil", &["6A"], &[]);
    let bob = relais.user(&admin, "bob", "pupil", &["6A"], &[]);
    let data = content(55, 5 * MIB);

    let b0 = relais.blob_bytes();
    alice.put("me/cours.pdf", &data).expect_status(201);
    let b1 = relais.blob_bytes();
    let growth = b1 - b0;
    assert!(
        (5 * MIB..=5 * MIB + 64 * KIB).contains(&growth),
        "the first 5 MiB upload grew data/blobs by {growth} bytes"
    );
    bob.put("me/copie du cours.pdf", &data).expect_status(201);
    assert_eq!(relais.blob_bytes(), b1, "a second user's identical upload was stored again");
    alice.put("me/encore.pdf", &data).expect_status(201);
    assert_eq!(relais.blob_bytes(), b1, "the same user's identical upload was stored again");
    // Each user is charged for what they wrote, shared or not.
    assert_eq!(alice.quota_used(), 10 * MIB);
    assert_eq!(bob.quota_used(), 5 * MIB);

    // One owner deleting their copies does not take the content from the other.
    alice.delete("me/cours.pdf").expect_status(204);
    alice.delete("me/encore.pdf").expect_status(204);
    assert!(bob.get("me/copie du cours.pdf").expect_status(200).body == data, "bob's copy changed");
    assert!(relais.blob_bytes() >= 5 * MIB, "the shared blob was collected");
}

#[test]
fn restart_keeps_files_users_and_sessions() {
    let mut relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let prof = relais.user(&admin, "prof", "teacher", &["6A"], &[]);
    let alice = relais.user(&admin, "alice", "pupil", &["6A"], &[]);
    let cours = content(11, 300 * KIB);
    alice.put("me/notes.txt", b"abc").expect_status(201);
    alice.put("classes/6A/rendus/alice/devoir.txt", b"bonjour\n").expect_status(201);
    prof.put("classes/6A/cours.pdf", &cours).expect_status(201);
    let alice_tree = alice.tree("me/");
    let alice_used = alice.quota_used();
    let listing = prof.list("classes/6A/");
    let users = admin.call("GET", "/api/admin/users").expect_status(200).json();

    relais.restart();

    // The same cookies still work, and everything reads back the same.
    assert_eq!(alice.me()["login"], "alice");
    assert_eq!(alice.tree("me/"), alice_tree);
    assert_eq!(alice.quota_used(), alice_used);
    assert_eq!(prof.list("classes/6A/"), listing);
    assert_eq!(alice.get("me/notes.txt").expect_status(200).body, b"abc");
    assert_eq!(prof.get("classes/6A/rendus/alice/devoir.txt").expect_status(200).body, b"bonjour\n");
    assert!(alice.get("classes/6A/cours.pdf").expect_status(200).body == cours);
    assert_eq!(admin.call("GET", "/api/admin/users").expect_status(200).json(), users);
    relais.login("prof", &password_of("prof"));
    relais.login("admin", ADMIN_PASSWORD);

    // An acknowledged upload also survives SIGKILL right after its answer.
    let last = content(12, MIB);
    alice.put("me/juste-avant.bin", &last).expect_status(201);
    relais.kill9();
    relais.respawn();
    let alice = relais.login("alice", &password_of("alice"));
    assert!(alice.get("me/juste-avant.bin").expect_status(200).body == last, "acknowledged upload lost by SIGKILL");
    assert_eq!(alice.get("me/notes.txt").expect_status(200).body, b"abc");
}

#[test]
fn unicode_names_nfc_and_nfd_are_the_same_file() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let folder_nfc = "Devoirs d'\u{e9}t\u{e9}";
    let folder_nfd = "Devoirs d'e\u{301}te\u{301}";
    let name_nfc = "expos\u{e9} \u{e9}t\u{e9}.pdf";
    let name_nfd = "expose\u{301} e\u{301}te\u{301}.pdf";
    assert_ne!(name_nfc, name_nfd);

    admin.put(&format!("me/{folder_nfc}/{name_nfc}"), b"abc").expect_status(201);
    // Read back through the decomposed spelling (as macOS sends it).
    let resp = admin.get(&format!("me/{folder_nfd}/{name_nfd}")).expect_status(200);
    assert_eq!(resp.body, b"abc");
    // Writing through the decomposed spelling replaces the same file.
    admin.put(&format!("me/{folder_nfd}/{name_nfd}"), b"bonjour\n").expect_status(204);
    assert_eq!(admin.get(&format!("me/{folder_nfc}/{name_nfc}")).expect_status(200).body, b"bonjour\n");
    assert_eq!(admin.names("me/"), [folder_nfc]);
    assert_eq!(admin.names(&format!("me/{folder_nfc}/")), [name_nfc]);
    assert_eq!(admin.quota_used(), 8);

    // Other names that must travel intact.
    let names = [
        "expos\u{e9} final #2?.pdf",
        "100% s\u{fb}r.txt",
        "a+b=c&d;e,f.txt",
        "\u{65e5}\u{672c}\u{8a9e}.txt",
        "cartable \u{1f392}.txt",
        " espace devant.txt",
        "l'\u{e9}l\u{e8}ve (copie) [2].txt",
    ];
    for (i, name) in names.iter().enumerate() {
        let body = format!("fichier {i}");
        admin.put(&format!("me/noms/{name}"), body.as_bytes()).expect_status(201);
        assert_eq!(admin.get(&format!("me/noms/{name}")).expect_status(200).body, body.as_bytes(), "{name:?}");
    }
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(admin.names("me/noms/"), expected);
}

#[test]
fn teacher_downloads_the_hand_ins_as_a_zip() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let prof = relais.user(&admin, "prof", "teacher", &["6A"], &[]);
    let alice = relais.user(&admin, "alice", "pupil", &["6A"], &[]);
    let bob = relais.user(&admin, "bob", "pupil", &["6A"], &[]);
    let schema = content(21, 300 * KIB);
    let expose = content(22, MIB);
    alice.put("classes/6A/rendus/alice/devoir.txt", b"bonjour\n").expect_status(201);
    alice.put("classes/6A/rendus/alice/annexes/sch\u{e9}ma.png", &schema).expect_status(201);
    bob.put("classes/6A/rendus/bob/expos\u{e9}.pdf", &expose).expect_status(201);
    bob.put("classes/6A/rendus/bob/vide.txt", b"").expect_status(201);

    let resp = prof.call("GET", &format!("{}?zip", files_url("classes/6A/rendus/"))).expect_status(200);
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/zip"), "Content-Type {content_type:?}");
    let files = unzip(&resp.body);
    // Members are named relative to the zipped folder (a leading `rendus/` is tolerated).
    let files: BTreeMap<String, Vec<u8>> = files
        .into_iter()
        .map(|(name, data)| (name.strip_prefix("rendus/").unwrap_or(&name).to_string(), data))
        .collect();
    let mut expected = BTreeMap::new();
    expected.insert("alice/devoir.txt".to_string(), b"bonjour\n".to_vec());
    expected.insert("alice/annexes/sch\u{e9}ma.png".to_string(), schema);
    expected.insert("bob/expos\u{e9}.pdf".to_string(), expose);
    expected.insert("bob/vide.txt".to_string(), Vec::new());
    assert_eq!(files.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "zip members");
    for (name, data) in &expected {
        assert!(files[name] == *data, "zip member {name} differs");
    }

    // A pupil may not zip another pupil's hand-in.
    let resp = alice.call("GET", &format!("{}?zip", files_url("classes/6A/rendus/bob/")));
    assert_eq!(resp.status, 403, "{resp:?}");
}

#[test]
fn two_hundred_small_files_in_bounded_time() {
    // A guard against accidental O(n²) or per-request sleeps: 200 small uploads and reads in a bounded time.
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let started = Instant::now();
    for i in 0..200 {
        let body = format!("petit fichier {i}");
        admin.put(&format!("me/petits/{i}.txt"), body.as_bytes()).expect_status(201);
        assert_eq!(admin.get(&format!("me/petits/{i}.txt")).expect_status(200).body, body.as_bytes());
    }
    assert_eq!(admin.list("me/petits/").len(), 200);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "400 small requests took {took:?}");
}

#[test]
fn files_and_folders_do_not_overwrite_each_other() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    admin.put("me/a.txt", b"abc").expect_status(201);
    admin.put("me/sub/b.txt", b"bonjour\n").expect_status(201);
    let before = Snapshot::take(&relais, &admin, "me/");
    let tree = admin.tree("me/");
    let attempts: Vec<(&str, Resp)> = vec![
        ("PUT under a file", admin.put("me/a.txt/c.txt", b"x")),
        ("mkdir under a file", admin.mkdir("me/a.txt/d")),
        ("mkdir over a file", admin.mkdir("me/a.txt")),
        ("PUT over a folder", admin.put("me/sub", b"x")),
    ];
    for (what, resp) in attempts {
        assert!((400..500).contains(&resp.status), "{what}: expected a 4xx, got {resp:?}");
        resp.error_message();
    }
    before.assert_unchanged(&relais, &admin, "me/", "file/folder clashes");
    assert_eq!(admin.tree("me/"), tree);
    assert_eq!(admin.get("me/a.txt").expect_status(200).body, b"abc");
}

#[test]
fn concurrent_writes_to_one_path_leave_one_whole_version() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let writers = 6;
    let len = 512 * KIB;
    for round in 0..5u64 {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let client = admin.clone();
                std::thread::spawn(move || client.put("me/disputé.bin", &content(round * 100 + w, len)).status)
            })
            .collect();
        for h in handles {
            let status = h.join().expect("writer thread");
            assert!(matches!(status, 201 | 204), "round {round}: concurrent PUT answered {status}");
        }
        let got = admin.get("me/disputé.bin").expect_status(200).body;
        let whole = (0..writers).any(|w| got == content(round * 100 + w, len));
        assert!(whole, "round {round}: the file is not exactly one writer's version ({} bytes)", got.len());
        assert_eq!(admin.quota_used(), len, "round {round}: quota counts one copy");
        assert_eq!(admin.list("me/").len(), 1);
    }
}

#[test]
fn concurrent_uploads_never_exceed_the_quota() {
    let relais = Relais::start("[quota]\npupil = \"1MiB\"\n");
    let admin = relais.admin();
    let alice = relais.user(&admin, "alice", "pupil", &["6A"], &[]);
    let len = 200 * KIB; // five fit in 1 MiB, not six
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let client = alice.clone();
            std::thread::spawn(move || (i, client.put(&format!("me/f{i}.bin"), &content(i, len)).status))
        })
        .collect();
    let mut accepted = Vec::new();
    for h in handles {
        let (i, status) = h.join().expect("upload thread");
        match status {
            201 => accepted.push(i),
            507 => {}
            other => panic!("concurrent upload #{i} answered {other}"),
        }
    }
    accepted.sort();
    assert!(!accepted.is_empty() && accepted.len() <= 5, "accepted uploads: {accepted:?}");
    let used = alice.quota_used();
    assert!(used <= MIB, "quota used {used} over the 1 MiB limit");
    assert_eq!(used, accepted.len() as u64 * len, "quota used vs the {} accepted uploads", accepted.len());
    let stored: Vec<String> = alice.names("me/");
    let expected: Vec<String> = accepted.iter().map(|i| format!("f{i}.bin")).collect();
    assert_eq!(stored, expected, "stored files vs accepted uploads");
    for i in accepted {
        assert!(alice.get(&format!("me/f{i}.bin")).expect_status(200).body == content(i, len));
    }
}

#[test]
fn a_blob_damaged_on_disk_is_never_served_as_good() {
    let relais = Relais::start(NO_QUOTAS);
    let admin = relais.admin();
    let small = b"petit fichier".to_vec();
    let big: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    let small_tag = admin.put("me/petit.txt", &small).etag();
    let big_tag = admin.put("me/gros.bin", &big).etag();
    // Flip one byte of each blob behind the server's back (what a failing disk does).
    for tag in [&small_tag, &big_tag] {
        let hex = tag.trim_matches('"');
        let path = relais.data_dir().join("blobs").join(&hex[..2]).join(hex);
        let mut bytes = std::fs::read(&path).expect("blob on disk");
        bytes[0] ^= 0xff;
        std::fs::write(&path, bytes).expect("damage blob");
    }
    assert_eq!(admin.get("me/petit.txt").status, 500, "a small damaged file is refused");
    let (status, _, mut reader) = admin.get_stream("me/gros.bin");
    assert_eq!(status, 200);
    let mut received = Vec::new();
    let read = reader.read_to_end(&mut received);
    assert!(read.is_err() || received.len() < big.len(), "a large damaged file's transfer must be cut, not completed");
    // Ranges are served as stored (they cannot be checked without reading the whole file).
    assert_eq!(admin.get_with("me/gros.bin", &[("Range", "bytes=10-19")]).status, 206);
}

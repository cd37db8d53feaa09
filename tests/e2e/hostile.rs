//! Hostile paths and requests, sent over raw sockets (an HTTP library would normalise `..` away or refuse
//! to send them): traversal, control characters, over-long names, huge headers, bodies over quota, and
//! clients that stall. After each, the user's space, quota and the blob store are unchanged.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::util::*;

const CONFIG: &str = r#"
[quota]
pupil = "1MiB"
[limits]
header_timeout = "2s"
body_idle_timeout = "2s"
max_header_bytes = "16KiB"
"#;

/// A server with the pupil `alice` (class 6A, quota 1 MiB) logged in, holding `me/garde.txt` ("abc").
struct Target {
    relais: Relais,
    alice: Client,
    cookie: String,
}

impl Target {
    fn new() -> Target {
        let relais = Relais::start(CONFIG);
        let admin = relais.admin();
        let alice = relais.user(&admin, "alice", "pupil", &["6A"], &[]);
        alice.put("me/garde.txt", b"abc").expect_status(201);
        let cookie = alice.cookie().expect("logged in").to_string();
        Target { relais, alice, cookie }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::take(&self.relais, &self.alice, "me/")
    }

    #[track_caller]
    fn assert_unchanged(&self, before: &Snapshot, after: &str) {
        before.assert_unchanged(&self.relais, &self.alice, "me/", after);
        assert_eq!(self.alice.get("me/garde.txt").expect_status(200).body, b"abc", "after {after}");
    }

    /// A request head with alice's cookie.
    fn head(&self, method: &str, target: &str, headers: &[(&str, String)]) -> String {
        let mut all = vec![("Cookie", self.cookie.clone())];
        all.extend(headers.iter().cloned());
        raw_head(method, target, &all)
    }

    #[track_caller]
    fn exchange(&self, head: &str, body: &[u8]) -> RawResp {
        raw_exchange(self.relais.addr(), head, body).unwrap_or_else(|e| panic!("{e}\nrequest head:\n{head}"))
    }

    #[track_caller]
    fn assert_healthy(&self) {
        self.relais.anonymous().call("GET", "/healthz").expect_status(200);
    }
}

#[test]
fn hostile_paths_get_400_and_change_nothing() {
    let t = Target::new();
    let before = t.snapshot();
    let long_ascii = "a".repeat(256);
    let long_accents = "%C3%A9".repeat(128); // 128 × "é" = 256 bytes
                                             // Raw request targets after `/api/files/`, exactly as they go on the wire.
    let paths: Vec<(&str, String)> = vec![
        ("dot-dot", "me/../etc/passwd".into()),
        ("deep dot-dot", "me/../../../../../../etc/passwd".into()),
        ("dot-dot into another space", "me/../classes/6A/rendus/bob/x".into()),
        ("encoded dot-dot", "me/%2e%2e/%2e%2e/etc/passwd".into()),
        ("upper-case encoded dot-dot", "me/%2E%2E/x".into()),
        ("half-encoded dot-dot", "me/.%2e/x".into()),
        ("dot-dot and encoded slash", "me/..%2f..%2fetc%2fpasswd".into()),
        ("encoded slash in a name", "me/a%2fb".into()),
        ("dot", "me/./x".into()),
        ("encoded dot", "me/%2e".into()),
        ("absolute", "/etc/passwd".into()),
        ("empty segment", "me//x".into()),
        ("backslash traversal", "me/..%5c..%5cetc%5cpasswd".into()),
        ("NUL", "me/a%00b".into()),
        ("lone NUL", "me/%00".into()),
        ("newline", "me/a%0ab".into()),
        ("CRLF", "me/a%0d%0aSet-Cookie:%20x".into()),
        ("tab", "me/a%09b".into()),
        ("escape", "me/a%1bb".into()),
        ("DEL", "me/a%7fb".into()),
        ("C1 control", "me/a%c2%85b".into()),
        ("invalid UTF-8", "me/%ff%fe".into()),
        ("256-byte name", format!("me/{long_ascii}")),
        ("256-byte accented name", format!("me/{long_accents}")),
    ];
    let mut failures = Vec::new();
    for (what, path) in &paths {
        let target = format!("/api/files/{path}");
        for method in ["GET", "PUT", "DELETE", "MKDIR"] {
            let (verb, target, body): (&str, String, &[u8]) = match method {
                "PUT" => ("PUT", target.clone(), b"pwned"),
                "MKDIR" => ("POST", format!("{target}?op=mkdir"), b""),
                m => (m, target.clone(), b""),
            };
            let head = t.head(verb, &target, &[("Content-Length", body.len().to_string())]);
            let resp = t.exchange(&head, body);
            let json_error = serde_json::from_slice::<serde_json::Value>(&resp.body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(|s| !s.is_empty()))
                .unwrap_or(false);
            if resp.status != 400 || !json_error {
                failures.push(format!(
                    "{what}: {method} {target} → expected 400 with a JSON error, got {} {:?}",
                    resp.status,
                    resp.text()
                ));
            }
            assert!(!resp.text().contains("root:"), "{what}: {method} {target} leaked /etc/passwd");
        }
    }
    assert!(failures.is_empty(), "{} refusals wrong:\n{}", failures.len(), failures.join("\n"));
    t.assert_unchanged(&before, "hostile paths");
    // Nothing appeared next to the data folder either.
    let mut beside: Vec<String> = std::fs::read_dir(t.relais.root())
        .expect("read root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    beside.sort();
    assert_eq!(beside, ["data", "relais.toml"]);
    t.assert_healthy();
}

#[test]
fn double_encoded_dots_are_a_plain_name() {
    let t = Target::new();
    // `%252e%252e` decodes once, to the three-character-pair name `%2e%2e`: a legal, harmless name.
    let head = t.head("PUT", "/api/files/me/%252e%252e%252fpasswd", &[("Content-Length", "3".into())]);
    let resp = t.exchange(&head, b"xyz");
    assert_eq!(resp.status, 201, "{resp:?}");
    assert_eq!(t.alice.names("me/"), ["%2e%2e%2fpasswd", "garde.txt"]);
    assert_eq!(t.alice.get("me/%2e%2e%2fpasswd").expect_status(200).body, b"xyz");
}

#[test]
fn a_255_byte_name_is_the_longest_accepted() {
    let t = Target::new();
    let ascii = "a".repeat(255);
    let accents = format!("{}a", "\u{e9}".repeat(127)); // 254 + 1 bytes
    assert_eq!(accents.len(), 255);
    for name in [&ascii, &accents] {
        t.alice.put(&format!("me/{name}"), b"ok").expect_status(201);
        assert_eq!(t.alice.get(&format!("me/{name}")).expect_status(200).body, b"ok");
    }
    let before = t.snapshot();
    t.alice.put(&format!("me/{ascii}b"), b"no").expect_status(400).error_message();
    t.assert_unchanged(&before, "a 256-byte name");
}

#[test]
fn oversized_headers_get_431() {
    let t = Target::new();
    let before = t.snapshot();
    // Just under the limit passes.
    let head = raw_head("GET", "/healthz", &[("X-Remplissage", "a".repeat(8 * 1024))]);
    assert_eq!(t.exchange(&head, b"").status, 200, "an 8 KiB header under a 16 KiB limit");
    // One huge header, many medium ones, a huge cookie: 431.
    let many: Vec<(String, String)> = (0..400).map(|i| (format!("X-Entete-{i}"), "b".repeat(50))).collect();
    let many: Vec<(&str, String)> = many.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let heads = [
        ("one 20 KiB header", raw_head("GET", "/healthz", &[("X-Enorme", "a".repeat(20 * 1024))])),
        ("400 headers of 60 bytes", raw_head("GET", "/healthz", &many)),
        (
            "a 1 MiB cookie on a PUT",
            raw_head(
                "PUT",
                &files_url("me/x.txt"),
                &[("Cookie", format!("{}; pad={}", t.cookie, "c".repeat(1 << 20))), ("Content-Length", "3".into())],
            ),
        ),
    ];
    for (what, head) in heads {
        let resp = t.exchange(&head, b"abc");
        assert_eq!(resp.status, 431, "{what}: {resp:?}");
    }
    t.assert_unchanged(&before, "oversized headers");
    t.assert_healthy();
}

#[test]
fn bodies_over_quota_get_507_and_store_nothing() {
    let t = Target::new();
    let body = content(3, 3 * MIB);
    let before = t.snapshot();

    // Declared length, body sent in full (as far as the server reads it).
    let head = t.head("PUT", &files_url("me/gros.bin"), &[("Content-Length", body.len().to_string())]);
    let resp = t.exchange(&head, &body);
    assert_eq!(resp.status, 507, "3 MiB with Content-Length over a 1 MiB quota: {resp:?}");
    t.assert_unchanged(&before, "a 3 MiB upload over quota");

    // Chunked: the server only finds out while reading.
    let head = t.head("PUT", &files_url("me/gros.bin"), &[("Transfer-Encoding", "chunked".into())]);
    let resp = t.exchange(&head, &chunked(&body));
    assert_eq!(resp.status, 507, "3 MiB chunked over a 1 MiB quota: {resp:?}");
    t.assert_unchanged(&before, "a 3 MiB chunked upload over quota");

    // Replacing the kept file with something too big keeps the old content.
    let head = t.head("PUT", &files_url("me/garde.txt"), &[("Content-Length", body.len().to_string())]);
    assert_eq!(t.exchange(&head, &body).status, 507);
    t.assert_unchanged(&before, "replacing a file with one over quota");
    t.assert_healthy();
}

#[test]
fn a_content_length_over_quota_is_refused_before_the_body() {
    let t = Target::new();
    let before = t.snapshot();
    let remaining = MIB - 3; // alice holds 3 bytes of her 1 MiB
    for (what, length, expect_continue) in [
        ("10 GiB declared", 10 * 1024 * MIB, false),
        ("one byte more than the room left", remaining + 1, false),
        ("10 GiB declared with Expect: 100-continue", 10 * 1024 * MIB, true),
    ] {
        let mut headers = vec![("Content-Length", length.to_string())];
        if expect_continue {
            headers.push(("Expect", "100-continue".into()));
        }
        let head = t.head("PUT", &files_url("me/annonce.bin"), &headers);
        let mut stream = raw_connect(t.relais.addr());
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        stream.write_all(head.as_bytes()).expect("write head");
        // No body is sent: the answer must come from the headers alone.
        let resp =
            RawReader::new(stream).response().unwrap_or_else(|e| panic!("{what}: no answer without the body: {e}"));
        assert_eq!(resp.status, 507, "{what}: {resp:?}");
    }
    t.assert_unchanged(&before, "declared lengths over quota");
    // Exactly the room left is accepted.
    t.alice.put("me/pile.bin", &content(4, remaining)).expect_status(201);
    assert_eq!(t.alice.quota_used(), MIB);
}

#[test]
fn a_stalled_body_gets_408_and_stores_nothing() {
    let t = Target::new();
    let before = t.snapshot();
    let body = content(5, 100_000);
    let head = t.head("PUT", &files_url("me/lent.bin"), &[("Content-Length", body.len().to_string())]);
    let mut stream = raw_connect(t.relais.addr());
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(&body[..50_000]).expect("write half the body");
    let stalled = Instant::now();
    let resp = RawReader::new(stream).response().unwrap_or_else(|e| panic!("no 408 after a stall: {e}"));
    let waited = stalled.elapsed();
    assert_eq!(resp.status, 408, "stalled body: {resp:?}");
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_secs(8),
        "408 came {waited:?} after the stall, with body_idle_timeout = 2s"
    );
    t.assert_unchanged(&before, "a stalled upload");
    assert_eq!(t.alice.get("me/lent.bin").status, 404);
    t.assert_healthy();
}

#[test]
fn headers_sent_byte_by_byte_are_cut_off() {
    let t = Target::new();
    let head = raw_head("GET", "/healthz", &[("X-Lent", "a".repeat(400))]);
    let stream = raw_connect(t.relais.addr());
    let mut writer = stream.try_clone().expect("clone socket");
    let mut reader = RawReader::new(stream);
    let started = Instant::now();
    let mut closed = false;
    // One byte every 100 ms: the whole head would take 45 s; header_timeout = 2s must end it long before.
    for byte in head.as_bytes() {
        if writer.write_all(std::slice::from_ref(byte)).is_err() || reader.closed_within(Duration::from_millis(100)) {
            closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "a slow-loris client still connected after {took:?} with header_timeout = 2s");
    assert!(took >= Duration::from_millis(1500), "connection cut after only {took:?}: before header_timeout");
    assert!(took <= Duration::from_secs(7), "connection cut only after {took:?} with header_timeout = 2s");
    let said = String::from_utf8_lossy(reader.pending()).into_owned();
    assert!(said.is_empty() || said.starts_with("HTTP/1.1 408"), "answer to a slow head: {said:?}");
    t.assert_healthy();
}

#[test]
fn malformed_lengths_get_400() {
    let t = Target::new();
    let before = t.snapshot();
    for (what, headers) in [
        ("negative length", vec![("Content-Length", "-1".to_string())]),
        ("non-numeric length", vec![("Content-Length", "beaucoup".to_string())]),
        ("two different lengths", vec![("Content-Length", "3".to_string()), ("Content-Length", "5".to_string())]),
    ] {
        let head = t.head("PUT", &files_url("me/bizarre.bin"), &headers);
        let resp = t.exchange(&head, b"abcde");
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
    }
    t.assert_unchanged(&before, "malformed lengths");
    t.assert_healthy();
}

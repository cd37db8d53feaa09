//! The server as a process: health check, metrics, and the way it stops (SIGTERM/SIGINT drain, then exit 0).

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

#[test]
fn healthz_answers_ok_without_login() {
    let relais = Relais::start("");
    let resp = relais.anonymous().call("GET", "/healthz").expect_status(200);
    assert_eq!(resp.text().trim(), "ok", "{resp:?}");
}

#[test]
fn metrics_are_prometheus_text_from_loopback() {
    let relais = Relais::start("");
    let admin = relais.admin();
    admin.put("me/a.txt", b"abc").expect_status(201);
    let resp = relais.anonymous().call("GET", "/metrics").expect_status(200);
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "Content-Type {content_type:?}");
    let text = resp.text();
    assert!(text.lines().any(|l| l.starts_with("# TYPE ")), "no `# TYPE` line in:\n{text}");
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        // name{labels} value [timestamp]
        let (name_and_labels, rest) = match line.find('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim()),
            None => line.split_once(' ').map(|(a, b)| (a, b.trim())).unwrap_or((line, "")),
        };
        let name = name_and_labels.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        let value = rest.split_whitespace().next().unwrap_or_default();
        let ok = value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN");
        assert!(ok, "bad sample value in {line:?}");
        samples += 1;
    }
    assert!(samples > 0, "no samples in:\n{text}");
}

#[test]
fn sigterm_and_sigint_exit_zero() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut relais = Relais::start("");
        relais.anonymous().call("GET", "/healthz").expect_status(200);
        relais.signal(signal);
        let status = relais.wait_exit(Duration::from_secs(15));
        assert_eq!(status.code(), Some(0), "exit status after {signal}: {status:?}");
    }
}

#[test]
fn idle_connection_does_not_hold_shutdown_past_the_grace() {
    let mut relais = Relais::start("[limits]\nshutdown_grace = \"2s\"\n");
    // A keep-alive connection that made one request and then sits idle, and one that never spoke.
    let mut idle = raw_connect(relais.addr());
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
    let mut reader = RawReader::new(idle);
    assert_eq!(reader.response().expect("healthz").status, 200);
    let _silent = raw_connect(relais.addr());

    let started = Instant::now();
    relais.signal(Signal::SIGTERM);
    let status = relais.wait_exit(Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "exit status: {status:?}");
    assert!(took < Duration::from_secs(6), "exit took {took:?} with shutdown_grace = 2s");
}

#[test]
fn shutdown_drains_an_upload_in_flight() {
    let config = format!("{NO_QUOTAS}\n[limits]\nshutdown_grace = \"15s\"\nbody_idle_timeout = \"15s\"\n");
    let mut relais = Relais::start(&config);
    let admin = relais.admin();
    let cookie = admin.cookie().expect("logged in").to_string();
    let body = content(7, 4000);

    // `Expect: 100-continue`: the server says "100 Continue" once its handler reads the body, which proves
    // the upload is in flight (an idle keep-alive connection may rightly be closed at once on SIGTERM).
    let stream = raw_connect(relais.addr());
    let mut writer = stream.try_clone().expect("clone socket");
    let mut reader = RawReader::new(stream);
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        files_url("me/drain.bin"),
        body.len()
    );
    writer.write_all(head.as_bytes()).expect("write head");
    let interim = reader.response().expect("an answer to Expect: 100-continue");
    assert_eq!(interim.status, 100, "{interim:?}");
    writer.write_all(&body[..2000]).expect("write the first half");

    relais.signal(Signal::SIGTERM);
    // The server stops accepting: new connections are refused while the upload is still open.
    let addr = relais.addr();
    wait_until("the listener to close after SIGTERM", Duration::from_secs(5), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
    });
    assert!(relais.is_running(), "relais exited with an upload in flight");

    writer.write_all(&body[2000..]).expect("write the second half");
    let resp = reader.response().expect("response to the drained upload");
    assert_eq!(resp.status, 201, "drained upload: {resp:?}");
    let status = relais.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit status: {status:?}");

    relais.respawn();
    let resp = relais.admin().get("me/drain.bin").expect_status(200);
    assert!(resp.body == body, "the drained upload was not stored whole");
}

/// A technician's `relais config check FILE`: 0 on a good file (the example shipped in `firmware-config/`), 2 on a
/// bad one with the file, line, key and accepted values; `relais serve` refuses the same file and says why.
#[test]
fn config_check_and_serve_refuse_a_bad_file_and_say_why() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware-config/relais.example.toml");
    let mut check = Command::new(BIN);
    check.args(["config", "check", example]);
    let (status, out, err) = run_bounded(check, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out}{err}");

    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("relais.toml");
    std::fs::write(&bad, "[identity]\nuai = \"0123456A\"\n\n[hardware]\nprofile = \"pdp11\"\n").expect("write");
    let mut check = Command::new(BIN);
    check.arg("config").arg("check").arg(&bad);
    let (status, out, err) = run_bounded(check, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{out}{err}");
    for what in [bad.to_str().expect("utf-8"), "line 5", "hardware.profile", "x86_64-minipc", "arm64-rpi5"] {
        assert!(err.contains(what), "config check does not say {what}: {err}");
    }

    let mut serve = Command::new(BIN);
    serve.arg("serve").arg("--config").arg(&bad).arg("--data").arg(dir.path().join("data"));
    serve.args(["--listen", "127.0.0.1:0"]);
    let (status, out, err) = run_bounded(serve, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(2), "serve started on a bad file: {out}{err}");
    assert!(err.contains("line 5") && err.contains("hardware.profile"), "{err}");
    assert!(!out.contains("listening on"), "{out}");

    // The profile's defaults show in `config show`.
    std::fs::write(&bad, "[hardware]\nprofile = \"arm64-rpi4\"\n").expect("write");
    let mut show = Command::new(BIN);
    show.args(["config", "show", "--config"]).arg(&bad);
    let (status, out, err) = run_bounded(show, Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out}{err}");
    assert!(out.contains("size = \"4GiB\"") && out.contains("workers = 2"), "{out}");
}

//! The LAN cache (issue 6) against a programmable origin ([`crate::origin`]): what `/cache/<name>/…` serves
//! and when it asks the origin (RFC 9111 freshness, validation, what is never stored or shared, Vary),
//! ranges from the cache, one origin request for thirty clients with bytes flowing during the fill, entries
//! that survive restarts and SIGKILL, the origin down or lying (stale copies with a warning, errors, nothing
//! bad kept), damaged entries on disk, the disk budget, the forward proxy with CONNECT and `/proxy.pac`, an
//! HTTPS upstream trusted through `ca_files`, and prefetch.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::origin::{free_port, Fault, Origin, Route};
use crate::util::*;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// A box configuration: `[cache]` with the tests' defaults (64 MiB, a 2 s upstream timeout, no forward proxy:
/// its default port 3128 would be shared by every test) overridden by `keys` (TOML values), and one
/// `[[cache.upstream]]` per `(name, url)`.
fn config(upstreams: &[(&str, String)], keys: &[(&str, String)]) -> String {
    let mut settings: Vec<(String, String)> =
        [("size", "\"64MiB\""), ("upstream_timeout", "\"2s\""), ("proxy_listen", "\"off\"")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    for (key, value) in keys {
        match settings.iter_mut().find(|(k, _)| k == key) {
            Some(setting) => setting.1 = value.clone(),
            None => settings.push((key.to_string(), value.clone())),
        }
    }
    let mut toml = String::from("[cache]\n");
    for (key, value) in settings {
        toml.push_str(&format!("{key} = {value}\n"));
    }
    for (name, url) in upstreams {
        toml.push_str(&format!("\n[[cache.upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n"));
    }
    toml
}

/// [`config`] with `origin` as the upstream named `origin`.
fn config_for(origin: &Origin, keys: &[(&str, String)]) -> String {
    config(&[("origin", origin.base())], keys)
}

/// A TOML string.
fn quoted(text: &str) -> String {
    format!("\"{text}\"")
}

/// `GET /cache/origin<path>` with `headers`; transport errors (a cut connection) come back as `Err`.
fn try_get(relais: &Relais, path: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let client = relais.anonymous();
    let mut req = client.request("GET", &format!("/cache/origin{path}"));
    for (name, value) in headers {
        req = req.set(name, value);
    }
    Client::try_send(req, None)
}

#[track_caller]
fn get(relais: &Relais, path: &str, headers: &[(&str, &str)]) -> Resp {
    try_get(relais, path, headers).unwrap_or_else(|e| panic!("GET /cache/origin{path}: {e}"))
}

fn x_cache(resp: &Resp) -> &str {
    resp.header("x-cache").unwrap_or("(no X-Cache)")
}

#[track_caller]
fn assert_x_cache(resp: &Resp, expected: &str, what: &str) {
    assert_eq!(x_cache(resp), expected, "{what}: X-Cache: {resp:?}");
}

/// A response that came from the origin and may not be kept: `BYPASS` ("not cacheable, passed through").
#[track_caller]
fn assert_passed_through(resp: &Resp, what: &str) {
    assert_x_cache(resp, "BYPASS", what);
}

/// A response served from the cache carries `Age`, a number of seconds.
#[track_caller]
fn assert_age(resp: &Resp, what: &str) -> u64 {
    let age = resp.header("age").unwrap_or_else(|| panic!("{what}: no Age header: {resp:?}"));
    age.trim().parse().unwrap_or_else(|_| panic!("{what}: Age {age:?} is not a number of seconds"))
}

/// Compares bodies without printing megabytes.
#[track_caller]
fn assert_body(resp: &Resp, expected: &[u8], what: &str) {
    if resp.body != expected {
        let at = resp.body.iter().zip(expected).position(|(a, b)| a != b);
        panic!(
            "{what}: body differs ({} bytes, expected {}; first difference at {at:?}); status {} headers {:?}",
            resp.body.len(),
            expected.len(),
            resp.status,
            resp.headers
        );
    }
}

/// An error page of the box must speak French.
#[track_caller]
fn assert_french(resp: &Resp, what: &str) {
    let text = resp.text().to_lowercase();
    let markers =
        ["é", "è", "ê", "à", "ç", "injoignable", "indisponible", "impossible", "serveur", "site", " pas ", "erreur"];
    assert!(
        !text.trim().is_empty() && markers.iter().any(|m| text.contains(m)),
        "{what}: expected a message in French, got {resp:?}"
    );
}

/// The sum of the samples of metric `name` whose labels contain every one of `labels` (e.g. `result="hit"`),
/// from `GET /metrics` (no login on loopback); `None` when no sample matches.
fn metric(relais: &Relais, name: &str, labels: &[&str]) -> Option<f64> {
    let resp = relais.anonymous().call("GET", "/metrics");
    assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
    let mut total = None;
    for line in resp.text().lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name || !labels.iter().all(|l| series_labels.split(',').any(|s| s.trim() == *l)) {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// `GET url` (a path on the box) read as a stream: status, X-Cache, the bytes that came, and the error that
/// cut them short if any.
fn get_streamed(relais: &Relais, path: &str) -> (u16, String, Vec<u8>, Option<String>) {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .build();
    let resp = match agent.get(&relais.url(path)).call() {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => return (0, String::new(), Vec::new(), Some(e.to_string())),
    };
    let status = resp.status();
    let x_cache = resp.header("x-cache").unwrap_or("(no X-Cache)").to_string();
    let mut reader = resp.into_reader();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return (status, x_cache, got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (status, x_cache, got, Some(e.to_string())),
        }
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                todo.push(entry.path());
            } else if meta.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// The file under `dir` that holds `needle` verbatim, and where.
fn find_in_files(dir: &Path, needle: &[u8]) -> Option<(PathBuf, usize)> {
    files_under(dir).into_iter().find_map(|path| {
        let bytes = std::fs::read(&path).ok()?;
        let at = bytes.windows(needle.len()).position(|w| w == needle)?;
        Some((path, at))
    })
}

// ---------------------------------------------------------------------------------------------------------
// Reverse proxy basics and RFC 9111
// ---------------------------------------------------------------------------------------------------------

/// Anyone (no login) gets an upstream's object through `/cache/<name>/…`: the first time fetched (MISS), then
/// from the cache (HIT, with Age) without the origin hearing of it. The query is part of the object; encoded
/// names reach the origin intact; the box's cookies never leave it while `Authorization` does; an unknown
/// upstream name is a 404 that reaches nobody.
#[test]
fn an_object_is_fetched_once_then_served_from_the_cache_to_anyone() {
    let origin = Origin::start();
    origin.set("/doc.txt", Route::ok("Bonjour de l'origine").cache_control("max-age=3600"));
    origin.set("/dossier/café noir.txt", Route::ok("un café, noir").cache_control("max-age=3600"));
    origin.set("/qui", Route::ok("auth=").cache_control("max-age=3600").echo("Authorization"));
    let relais = Relais::start(&config_for(&origin, &[]));

    let first = get(&relais, "/doc.txt?page=1", &[("Cookie", "relais_session=secret-de-la-boite; autre=1")]);
    let first = first.expect_status(200);
    assert_eq!(first.text(), "Bonjour de l'origine");
    assert_x_cache(&first, "MISS", "the first request");
    let seen = origin.last("/doc.txt");
    assert_eq!(seen.target, "/doc.txt?page=1", "the origin gets the path and query as the client sent them");
    assert!(seen.header("cookie").is_none(), "the box's cookies must not reach the origin: {seen:?}");

    let second = get(&relais, "/doc.txt?page=1", &[]).expect_status(200);
    assert_eq!(second.body, first.body);
    assert_x_cache(&second, "HIT", "the same URL again");
    assert!(assert_age(&second, "a HIT") < 3600);
    assert_eq!(origin.count("/doc.txt"), 1, "a HIT must not reach the origin");

    let other = get(&relais, "/doc.txt?page=2", &[]).expect_status(200);
    assert_x_cache(&other, "MISS", "another query string is another object");
    assert_eq!(origin.count("/doc.txt"), 2);
    assert_eq!(origin.last("/doc.txt").target, "/doc.txt?page=2");

    let cafe = get(&relais, "/dossier/caf%C3%A9%20noir.txt", &[]).expect_status(200);
    assert_eq!(cafe.text(), "un café, noir");
    assert_eq!(
        origin.count("/dossier/café noir.txt"),
        1,
        "the encoded name reaches the origin: {:?}",
        origin.all_requests()
    );
    let cafe = get(&relais, "/dossier/caf%C3%A9%20noir.txt", &[]).expect_status(200);
    assert_x_cache(&cafe, "HIT", "the encoded name again");

    let who = get(&relais, "/qui", &[("Authorization", "Bearer jeton-alice")]).expect_status(200);
    assert_eq!(who.text(), "auth=Bearer jeton-alice", "Authorization must be forwarded to the origin");

    let before = origin.all_requests().len();
    let unknown = relais.anonymous().call("GET", "/cache/inconnu/doc.txt");
    assert_eq!(unknown.status, 404, "an unknown upstream name: {unknown:?}");
    assert_eq!(origin.all_requests().len(), before, "an unknown upstream reaches no origin");
}

/// What the second request for an object does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Then {
    /// Fresh: served from the cache, the origin hears nothing.
    Hit,
    /// Stale: a conditional request, answered 304, and the stored body served.
    Revalidated,
    /// Never stored: both requests go to the origin.
    NotStored,
}

/// RFC 9111 freshness decides between HIT and revalidation: max-age, s-maxage over max-age, max-age over
/// Expires, Expires (an invalid one means expired), the origin's Age and Date, the heuristic (a tenth of the
/// Last-Modified age), no-cache (stored, revalidated every time, by ETag or by date) and no-store (never kept).
#[test]
fn freshness_follows_rfc_9111() {
    let origin = Origin::start();
    let now = SystemTime::now();
    let cases: Vec<(&str, Route, Then)> = vec![
        ("/max-age", Route::ok("max-age").cache_control("max-age=3600").etag("\"a\""), Then::Hit),
        ("/s-maxage", Route::ok("s-maxage").cache_control("max-age=0, s-maxage=3600").etag("\"b\""), Then::Hit),
        ("/expires", Route::ok("expires").expires(now + HOUR).etag("\"c\""), Then::Hit),
        (
            "/max-age-over-expires",
            Route::ok("max-age wins").cache_control("max-age=3600").expires(now - HOUR).etag("\"d\""),
            Then::Hit,
        ),
        ("/heuristic-old", Route::ok("old page").last_modified(now - 30 * DAY).etag("\"e\""), Then::Hit),
        ("/max-age-0", Route::ok("max-age 0").cache_control("max-age=0").etag("\"f\""), Then::Revalidated),
        ("/expired", Route::ok("expired").expires(now - HOUR).etag("\"g\""), Then::Revalidated),
        ("/expires-0", Route::ok("invalid expires").header("Expires", "0").etag("\"h\""), Then::Revalidated),
        (
            "/aged",
            Route::ok("aged upstream").cache_control("max-age=600").header("Age", "3600").etag("\"i\""),
            Then::Revalidated,
        ),
        ("/dated", Route::ok("dated").cache_control("max-age=600").date(now - HOUR).etag("\"j\""), Then::Revalidated),
        // Modified as it was sent: a tenth of no time is no freshness; validated by date (no ETag).
        ("/heuristic-new", Route::ok("just changed").last_modified(now).date(now), Then::Revalidated),
        ("/no-cache", Route::ok("no-cache").cache_control("no-cache").etag("\"k\""), Then::Revalidated),
        ("/no-store", Route::ok("no-store").cache_control("no-store, max-age=3600").etag("\"l\""), Then::NotStored),
    ];
    for (path, route, _) in &cases {
        origin.set(path, route.clone());
    }
    let relais = Relais::start(&config_for(&origin, &[]));

    for (path, route, _) in &cases {
        let first = get(&relais, path, &[]).expect_status(200);
        assert_eq!(first.body, route.body, "{path}: first body");
        if path == &"/no-store" {
            assert_passed_through(&first, path);
        } else {
            assert_x_cache(&first, "MISS", &format!("{path}, first request"));
        }
    }
    for (path, route, then) in &cases {
        let rounds = if path == &"/no-cache" { 2 } else { 1 };
        for round in 1..=rounds {
            let what = format!("{path}, request {}", round + 1);
            let resp = get(&relais, path, &[]).expect_status(200);
            assert_eq!(resp.body, route.body, "{what}: body");
            let stats = origin.stats(path);
            match then {
                Then::Hit => {
                    assert_x_cache(&resp, "HIT", &what);
                    assert_age(&resp, &what);
                    assert_eq!(stats.requests, 1, "{what}: a fresh object must not reach the origin");
                }
                Then::Revalidated => {
                    assert_x_cache(&resp, "REVALIDATED", &what);
                    assert_eq!(stats.requests, 1 + round, "{what}: a stale object is checked with the origin");
                    assert_eq!(stats.conditional, round, "{what}: the check is a conditional request");
                    assert_eq!(stats.not_modified, round, "{what}: the origin answered 304");
                    assert_eq!(stats.body_bytes, route.body.len() as u64, "{what}: the body crossed the uplink once");
                    let seen = origin.last(path);
                    match route.headers.iter().find(|(n, _)| n == "ETag") {
                        Some((_, etag)) => {
                            assert_eq!(seen.header("if-none-match"), Some(etag.as_str()), "{what}: {seen:?}")
                        }
                        None => assert!(seen.header("if-modified-since").is_some(), "{what}: {seen:?}"),
                    }
                }
                Then::NotStored => {
                    assert_passed_through(&resp, &what);
                    assert_eq!(stats.requests, 2, "{what}: never stored, so fetched every time");
                    assert_eq!(stats.conditional, 0, "{what}: nothing to validate");
                }
            }
        }
    }
}

/// A stale object is checked with its ETag (or Last-Modified) and a 304's headers replace the stored ones (its
/// new max-age makes the object fresh again); a client's `Cache-Control: no-cache` forces a check even on a
/// fresh object; a changed object replaces the stored one.
#[test]
fn revalidation_uses_validators_and_a_304_updates_the_stored_object() {
    let origin = Origin::start();
    let now = SystemTime::now();
    let v1 = content(31, 40 * KIB);
    // Stale from the start: sent an hour ago, fresh for a minute.
    origin.set("/v", Route::ok(v1.clone()).cache_control("max-age=60").date(now - HOUR).etag("\"v1\""));
    origin.set("/lm", Route::ok("by date").cache_control("max-age=0").last_modified(now - DAY));
    let relais = Relais::start(&config_for(&origin, &[]));

    let first = get(&relais, "/v", &[]).expect_status(200);
    assert_body(&first, &v1, "first");
    assert_x_cache(&first, "MISS", "first");

    // The origin now says: still "v1", fresh for an hour from now.
    origin.set("/v", Route::ok(v1.clone()).cache_control("max-age=3600").etag("\"v1\""));
    let second = get(&relais, "/v", &[]).expect_status(200);
    assert_body(&second, &v1, "revalidated");
    assert_x_cache(&second, "REVALIDATED", "a stale object");
    let seen = origin.last("/v");
    assert_eq!(seen.header("if-none-match"), Some("\"v1\""), "the check carries the stored ETag: {seen:?}");
    assert_eq!(origin.stats("/v").not_modified, 1);
    assert_eq!(origin.bytes_sent("/v"), v1.len() as u64, "a 304 sends no body");

    let third = get(&relais, "/v", &[]).expect_status(200);
    assert_x_cache(&third, "HIT", "after a 304 that brought max-age=3600 and a new Date");
    assert_body(&third, &v1, "HIT after 304");
    let cc = third.header("cache-control").unwrap_or_default();
    assert!(cc.contains("max-age=3600"), "the 304's Cache-Control replaces the stored one: {third:?}");
    assert_eq!(origin.count("/v"), 2);

    // A client that asks for a check gets one, even on a fresh object.
    let forced = get(&relais, "/v", &[("Cache-Control", "no-cache")]).expect_status(200);
    assert_x_cache(&forced, "REVALIDATED", "request Cache-Control: no-cache");
    assert_body(&forced, &v1, "no-cache request");
    assert_eq!(
        (origin.count("/v"), origin.conditional("/v")),
        (3, 2),
        "no-cache in the request: one conditional request"
    );

    // The object changed at the origin: the check brings the new one, which then replaces the old.
    let v2 = content(32, 50 * KIB);
    origin.set("/v", Route::ok(v2.clone()).cache_control("max-age=3600").etag("\"v2\""));
    let changed = get(&relais, "/v", &[("Cache-Control", "no-cache")]).expect_status(200);
    assert_body(&changed, &v2, "after the change");
    assert_ne!(x_cache(&changed), "HIT", "{changed:?}");
    let after = get(&relais, "/v", &[]).expect_status(200);
    assert_x_cache(&after, "HIT", "the new version, stored");
    assert_body(&after, &v2, "the new version from the cache");
    assert_eq!(after.header("etag"), Some("\"v2\""));
    assert_eq!(origin.count("/v"), 4);

    // Without an ETag, the check is by date.
    let lm = origin.requests("/lm");
    assert!(lm.is_empty());
    get(&relais, "/lm", &[]).expect_status(200);
    let again = get(&relais, "/lm", &[]).expect_status(200);
    assert_x_cache(&again, "REVALIDATED", "max-age=0 with Last-Modified");
    assert_eq!(again.text(), "by date");
    let seen = origin.last("/lm");
    let since = seen.header("if-modified-since").unwrap_or_else(|| panic!("no If-Modified-Since: {seen:?}"));
    assert_eq!(
        httpdate::parse_http_date(since).ok(),
        httpdate::parse_http_date(&httpdate::fmt_http_date(now - DAY)).ok(),
        "If-Modified-Since is the stored Last-Modified"
    );
}

/// What belongs to one person never reaches another: `private` is never stored (each user sees their own
/// page), a response to a request with Authorization is shared only when it says public, s-maxage or
/// must-revalidate, a response that sets a cookie is not stored, `Vary` keeps one entry per value of the
/// varied header (and `Vary: *` matches nothing).
#[test]
fn private_and_per_user_responses_are_never_served_to_someone_else() {
    let origin = Origin::start();
    let alice = [("Authorization", "Basic YWxpY2U6YQ==")];
    let bob = [("Authorization", "Basic Ym9iOmI=")];
    origin.set("/private", Route::ok("page de ").cache_control("private, max-age=3600").echo("Authorization"));
    origin.set("/auth-plain", Route::ok("page de ").cache_control("max-age=3600").echo("Authorization"));
    for (path, cc) in [
        ("/auth-public", "public, max-age=3600"),
        ("/auth-smaxage", "s-maxage=3600"),
        ("/auth-must", "must-revalidate, max-age=3600"),
    ] {
        origin.set(path, Route::ok("page de ").cache_control(cc).echo("Authorization"));
    }
    origin.set(
        "/cookie",
        Route::ok("avec cookie").cache_control("max-age=3600").header("Set-Cookie", "panier=42; Path=/"),
    );
    origin.set(
        "/vary",
        Route::ok("langue=").cache_control("max-age=3600").header("Vary", "Accept-Language").echo("Accept-Language"),
    );
    origin.set("/vary-star", Route::ok("tout varie").cache_control("max-age=3600").header("Vary", "*"));
    let relais = Relais::start(&config_for(&origin, &[]));

    // private: never stored, with or without Authorization.
    for (who, headers, expected) in
        [("alice", &alice, "page de Basic YWxpY2U6YQ=="), ("bob", &bob, "page de Basic Ym9iOmI=")]
    {
        let resp = get(&relais, "/private", headers).expect_status(200);
        assert_eq!(resp.text(), expected, "{who} sees their own private page");
        assert_passed_through(&resp, "private");
    }
    let resp = get(&relais, "/private", &alice).expect_status(200);
    assert_eq!(resp.text(), "page de Basic YWxpY2U6YQ==", "alice again");
    assert_eq!(origin.count("/private"), 3, "private is never stored");
    get(&relais, "/private", &[]).expect_status(200);
    get(&relais, "/private", &[]).expect_status(200);
    assert_eq!(origin.count("/private"), 5, "private is never stored, even without Authorization");

    // Authorization with a plain max-age: not shared.
    assert_eq!(get(&relais, "/auth-plain", &alice).text(), "page de Basic YWxpY2U6YQ==");
    let resp = get(&relais, "/auth-plain", &bob).expect_status(200);
    assert_eq!(resp.text(), "page de Basic Ym9iOmI=", "bob must not get alice's page: {resp:?}");
    assert_eq!(origin.count("/auth-plain"), 2);

    // Authorization with public, s-maxage or must-revalidate: the origin says it may be shared.
    for path in ["/auth-public", "/auth-smaxage", "/auth-must"] {
        let first = get(&relais, path, &alice).expect_status(200);
        assert_eq!(first.text(), "page de Basic YWxpY2U6YQ==", "{path}");
        let second = get(&relais, path, &bob).expect_status(200);
        assert_x_cache(&second, "HIT", &format!("{path}: shareable by the origin's word"));
        assert_eq!(second.body, first.body, "{path}");
        assert_eq!(origin.count(path), 1, "{path}");
    }

    // Set-Cookie: not stored.
    for _ in 0..2 {
        let resp = get(&relais, "/cookie", &[]).expect_status(200);
        assert_eq!(resp.text(), "avec cookie");
        assert_passed_through(&resp, "a response with Set-Cookie");
    }
    assert_eq!(origin.count("/cookie"), 2, "a response that sets a cookie is not stored");

    // Vary: one entry per language.
    for (lang, then) in [("fr", "MISS"), ("en", "MISS"), ("fr", "HIT"), ("en", "HIT")] {
        let resp = get(&relais, "/vary", &[("Accept-Language", lang)]).expect_status(200);
        assert_eq!(resp.text(), format!("langue={lang}"), "Vary: Accept-Language {lang}");
        assert_x_cache(&resp, then, &format!("Vary, {lang}"));
    }
    let none = get(&relais, "/vary", &[]).expect_status(200);
    assert_eq!(none.text(), "langue=", "no Accept-Language is a value of its own");
    assert_eq!(origin.count("/vary"), 3);

    for _ in 0..2 {
        let resp = get(&relais, "/vary-star", &[]).expect_status(200);
        assert_ne!(x_cache(&resp), "HIT", "Vary: * never matches: {resp:?}");
    }
    assert_eq!(origin.count("/vary-star"), 2, "Vary: * is never served from the cache");
}

/// Byte ranges of a cached object come from the cache (206, exactly those bytes, no origin request), as do
/// answers to a client's own validators (304); an unsatisfiable range is a 416.
#[test]
fn ranges_and_client_validators_are_answered_from_the_cache() {
    let origin = Origin::start();
    let len = MIB as usize;
    let body = content(41, MIB);
    origin.set("/film.mp4", Route::ok(body.clone()).cache_control("max-age=3600").etag("\"film\""));
    origin.set("/cold.mp4", Route::ok(body.clone()).cache_control("max-age=3600").ranges());
    let relais = Relais::start(&config_for(&origin, &[]));

    let full = get(&relais, "/film.mp4", &[]).expect_status(200);
    assert_body(&full, &body, "whole object");
    for (range, start, end) in [
        ("bytes=1000-1999", 1000, 2000),
        ("bytes=0-0", 0, 1),
        ("bytes=-500", len - 500, len),
        ("bytes=1048000-", 1_048_000, len),
        ("bytes=700000-9999999", 700_000, len),
    ] {
        let resp = get(&relais, "/film.mp4", &[("Range", range)]);
        assert_eq!(resp.status, 206, "{range}: {resp:?}");
        assert_body(&resp, &body[start..end], range);
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {start}-{}/{len}", end - 1).as_str()),
            "{range}: {resp:?}"
        );
        assert_x_cache(&resp, "HIT", range);
    }
    let unsatisfiable = get(&relais, "/film.mp4", &[("Range", "bytes=2000000-")]);
    assert_eq!(unsatisfiable.status, 416, "a range past the end: {unsatisfiable:?}");

    let not_modified = get(&relais, "/film.mp4", &[("If-None-Match", "\"film\"")]);
    assert_eq!(not_modified.status, 304, "the client's ETag matches the stored one: {not_modified:?}");
    assert_eq!(origin.count("/film.mp4"), 1, "ranges and validators of a cached object never reach the origin");

    // A range of an object not yet cached: the right bytes, whichever way the cache gets them.
    let resp = get(&relais, "/cold.mp4", &[("Range", "bytes=100-199")]);
    match resp.status {
        206 => assert_body(&resp, &body[100..200], "range of a cold object"),
        200 => assert_body(&resp, &body, "whole cold object"),
        other => panic!("a range of a cold object: {other} {resp:?}"),
    }
    let whole = get(&relais, "/cold.mp4", &[]).expect_status(200);
    assert_body(&whole, &body, "the cold object, whole, afterwards");
}

// ---------------------------------------------------------------------------------------------------------
// Coalescing, restarts
// ---------------------------------------------------------------------------------------------------------

/// Thirty clients ask for the same object at once while it is not cached: the origin gets ONE request, and
/// every client already has the first half while the origin holds the second; then all thirty get the same,
/// complete bytes.
#[test]
fn thirty_clients_on_a_cold_object_make_one_origin_request_and_read_during_the_fill() {
    const CLIENTS: usize = 30;
    let origin = Origin::start();
    let len = 4 * MIB as usize;
    let half = len / 2;
    let body = Arc::new(content(61, len as u64));
    origin.set("/video.mp4", Route::ok(body.to_vec()).cache_control("max-age=3600").hold_at(half));
    // The hold lasts as long as the test needs: it must not count as an upstream gone silent.
    let relais = Relais::start(&config_for(&origin, &[("upstream_timeout", quoted("60s"))]));

    let url = relais.url("/cache/origin/video.mp4");
    let progress: Arc<Vec<AtomicUsize>> = Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (url, progress) = (url.clone(), progress.clone());
            std::thread::spawn(move || -> Result<(u16, Vec<u8>), String> {
                let agent = ureq::AgentBuilder::new()
                    .timeout_connect(Duration::from_secs(10))
                    .timeout_read(Duration::from_secs(90))
                    .build();
                let resp = match agent.get(&url).call() {
                    Ok(resp) => resp,
                    Err(ureq::Error::Status(_, resp)) => resp,
                    Err(e) => return Err(e.to_string()),
                };
                let status = resp.status();
                let mut reader = resp.into_reader();
                let mut out = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = reader.read(&mut buf).map_err(|e| format!("after {} bytes: {e}", out.len()))?;
                    if n == 0 {
                        return Ok((status, out));
                    }
                    out.extend_from_slice(&buf[..n]);
                    progress[i].store(out.len(), Ordering::SeqCst);
                }
            })
        })
        .collect();

    origin.wait_held("/video.mp4", 1, Duration::from_secs(30));
    let mut clients: Vec<_> = clients.into_iter().map(Some).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let with_half = progress.iter().filter(|p| p.load(Ordering::SeqCst) >= half).count();
        if with_half == CLIENTS {
            break;
        }
        // No client can be done while the origin holds half the object: one that is has failed.
        let ended: Vec<String> = clients
            .iter_mut()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.is_finished()))
            .filter_map(|(i, c)| {
                let result = c.take()?.join().expect("client thread");
                Some(format!("client {i}: {:?}", result.map(|(status, bytes)| (status, bytes.len()))))
            })
            .collect();
        if !ended.is_empty() || Instant::now() > deadline {
            let got: Vec<usize> = progress.iter().map(|p| p.load(Ordering::SeqCst)).collect();
            panic!(
                "while the origin held the second half, only {with_half} of {CLIENTS} clients had the first \
                 {half} bytes (bytes per client: {got:?}; origin requests: {}); clients that ended meanwhile: {ended:?}",
                origin.count("/video.mp4")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        origin.count("/video.mp4"),
        1,
        "thirty clients, one origin request: {:?}",
        origin.requests("/video.mp4")
    );
    origin.release("/video.mp4");

    for (i, client) in clients.into_iter().enumerate() {
        let client = client.expect("every client still running");
        let (status, bytes) = client.join().expect("client thread").unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(status, 200, "client {i}");
        assert!(bytes == *body, "client {i}: {} bytes that differ from the origin's {len}", bytes.len());
    }
    assert_eq!(origin.count("/video.mp4"), 1, "thirty clients, one origin request");
    assert_eq!(origin.bytes_sent("/video.mp4"), len as u64, "the object crossed the uplink once");
    let after = get(&relais, "/video.mp4", &[]).expect_status(200);
    assert_x_cache(&after, "HIT", "after the fill");
    assert!(after.body == *body, "the stored object");
}

/// Entries survive a restart and a SIGKILL (HIT afterwards, no origin request); an object whose fill a
/// SIGKILL cut is never served half: after the restart it comes whole and right, whether the origin serves
/// the missing part as a range (206) or, as RFC 9110 allows, ignores the range and sends it all (200).
#[test]
fn cached_objects_survive_restart_and_sigkill_and_a_cut_fill_is_never_served_half() {
    let origin = Origin::start();
    let objects: Vec<(String, Vec<u8>)> =
        (0..3u64).map(|i| (format!("/objet-{i}.bin"), content(70 + i, 300 * KIB + i * 1000))).collect();
    for (path, body) in &objects {
        origin.set(path, Route::ok(body.clone()).cache_control("max-age=86400").etag(&format!("\"{path}\"")));
    }
    // Two objects whose fills the SIGKILL cuts after 20 MiB (enough for a cache to keep a part and resume from
    // it): one origin serves ranges, one does not.
    let cut_len = 24 * MIB as usize;
    let cut_at = 20 * MIB as usize;
    let cuts: Vec<(&str, Vec<u8>, bool)> = vec![
        ("/coupe-206.bin", content(79, cut_len as u64), true),
        ("/coupe-200.bin", content(78, cut_len as u64), false),
    ];
    let cut_route = |body: &Vec<u8>, ranges: bool| {
        let route = Route::ok(body.clone()).cache_control("max-age=86400").etag("\"coupe\"");
        if ranges {
            route.ranges()
        } else {
            route
        }
    };
    for (path, body, ranges) in &cuts {
        origin.set(path, cut_route(body, *ranges).hold_at(cut_at));
    }
    let mut relais = Relais::start(&config_for(&origin, &[("upstream_timeout", quoted("30s"))]));

    for (path, body) in &objects[..2] {
        assert_body(&get(&relais, path, &[]).expect_status(200), body, path);
    }
    relais.restart();
    let resp = get(&relais, &objects[0].0, &[]).expect_status(200);
    assert_x_cache(&resp, "HIT", "after a restart");
    assert_body(&resp, &objects[0].1, "after a restart");
    assert_eq!(origin.count(&objects[0].0), 1, "fetched once over a restart");
    assert_body(&get(&relais, &objects[2].0, &[]).expect_status(200), &objects[2].1, "a third object");
    // Stored for sure once the cache serves it as a HIT.
    wait_until("the third object served as a HIT", Duration::from_secs(10), || {
        x_cache(&get(&relais, &objects[2].0, &[])) == "HIT"
    });

    // Every problem below is collected, so that one failure does not hide the next.
    let mut problems: Vec<String> = Vec::new();
    relais.kill9();
    relais.respawn();
    for (path, body) in &objects {
        let what = format!("{path}, cached before the SIGKILL");
        match try_get(&relais, path, &[]) {
            Err(e) => problems.push(format!("{what}: the connection was cut ({e})")),
            Ok(resp) if resp.status != 200 || resp.body != *body => {
                problems.push(format!("{what}: status {} with {} wrong bytes", resp.status, resp.body.len()))
            }
            Ok(resp) if x_cache(&resp) != "HIT" || origin.count(path) != 1 => problems.push(format!(
                "{what}: X-Cache {} and {} origin requests (expected a HIT, fetched once)",
                x_cache(&resp),
                origin.count(path)
            )),
            Ok(_) => {}
        }
    }
    let entries = metric(&relais, "relais_cache_entries", &[]);
    if !entries.is_some_and(|n| n >= 3.0) {
        problems.push(format!("relais_cache_entries after the restarts: {entries:?}"));
    }

    // SIGKILL in the middle of two fills, once their clients have 18 MiB (so the box has had them).
    let progress: Arc<Vec<AtomicUsize>> = Arc::new(cuts.iter().map(|_| AtomicUsize::new(0)).collect());
    let readers: Vec<_> = cuts
        .iter()
        .enumerate()
        .map(|(i, (path, _, _))| {
            let url = relais.url(&format!("/cache/origin{path}"));
            let progress = progress.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout_read(Duration::from_secs(60)).build();
                let mut got = 0;
                if let Ok(resp) = agent.get(&url).call() {
                    let mut reader = resp.into_reader();
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = reader.read(&mut buf) {
                        got += n;
                        progress[i].store(got, Ordering::SeqCst);
                    }
                }
                got
            })
        })
        .collect();
    for (path, _, _) in &cuts {
        origin.wait_held(path, 1, Duration::from_secs(30));
    }
    wait_until("the clients of the cut fills at 18 MiB", Duration::from_secs(30), || {
        progress.iter().all(|p| p.load(Ordering::SeqCst) >= 18 * MIB as usize)
    });
    relais.kill9();
    for reader in readers {
        let got = reader.join().expect("reader thread");
        assert!(got < cut_len, "the client of a killed box cannot have had the whole object ({got} bytes)");
    }
    for (path, body, ranges) in &cuts {
        origin.set(path, cut_route(body, *ranges));
        origin.release(path);
    }
    relais.respawn();
    for (path, body, ranges) in &cuts {
        let what =
            format!("{path} (origin {} ranges), whose fill was cut", if *ranges { "serving" } else { "ignoring" });
        let resp = try_get(&relais, path, &[]);
        let seen: Vec<_> =
            origin.requests(path).iter().map(|r| (r.target.clone(), r.header("range").map(str::to_string))).collect();
        match resp {
            Err(e) => problems.push(format!("{what}: the connection was cut ({e}); origin requests {seen:?}")),
            Ok(resp) if resp.status != 200 || resp.body != *body => problems.push(format!(
                "{what}: status {} with {} wrong bytes; origin requests {seen:?}",
                resp.status,
                resp.body.len()
            )),
            Ok(_) if seen.len() < 2 => {
                problems.push(format!("{what}: the rest cannot have come from nowhere: {seen:?}"))
            }
            Ok(resp) if x_cache(&resp) == "HIT" => problems.push(format!(
                "{what}: right bytes, but X-Cache HIT although the origin was asked for the rest ({seen:?}); a HIT \
                 is served without contacting the origin"
            )),
            Ok(_) => {}
        }
        match try_get(&relais, path, &[]) {
            Ok(again) if again.status == 200 && again.body == *body => {}
            Ok(again) => problems.push(format!("{what}, once more: status {} with wrong bytes", again.status)),
            Err(e) => problems.push(format!("{what}, once more: the connection was cut ({e})")),
        }
    }
    assert!(problems.is_empty(), "after SIGKILLs:\n{}", problems.join("\n"));
}

/// What the school sees of a cut uplink: the admin's status says the uplink is offline and gives the cache's
/// figures, and every user's home page says the connection is down; both recover once the origin answers.
#[test]
fn the_portal_says_when_the_uplink_is_down_and_shows_the_cache_figures() {
    let mut origin = Origin::start();
    origin.set("/video.mp4", Route::ok(vec![7u8; 300_000]).cache_control("max-age=3600"));
    let relais = Relais::start(&config_for(&origin, &[]));
    let admin = relais.admin();
    let pupil = relais.user(&admin, "eleve.hors-ligne", "pupil", &["6A"], &[]);
    for _ in 0..3 {
        get(&relais, "/video.mp4", &[]).expect_status(200);
    }
    let status = admin.call("GET", "/api/admin/status").expect_status(200).json();
    let cache = &status["cache"];
    assert_eq!(cache["entries"], 1, "{status}");
    assert_eq!(cache["requests"], 3, "{status}");
    let ratio = cache["byte_hit_ratio"].as_f64().unwrap_or(0.0);
    assert!((0.6..0.7).contains(&ratio), "2 of 3 downloads from the cache: {status}");
    assert_eq!(cache["saved_bytes"], 600_000, "{status}");
    assert_eq!(cache["upstream_down"], false, "{status}");
    let home = pupil.call("GET", "/accueil").expect_status(200).text();
    assert!(!home.contains("connexion internet de l'école est coupée"), "uplink up, yet: {home}");
    let home = admin.call("GET", "/accueil").expect_status(200).text();
    assert!(home.contains("Cache internet") && home.contains("économisés"), "the admin sees the cache: {home}");

    origin.stop();
    let resp = get(&relais, "/jamais-vu", &[]);
    assert!(matches!(resp.status, 502 | 504), "{resp:?}");
    let status = admin.call("GET", "/api/admin/status").expect_status(200).json();
    assert_eq!(status["uplink"], "offline", "{status}");
    assert_eq!(status["cache"]["upstream_down"], true, "{status}");
    let home = pupil.call("GET", "/accueil").expect_status(200).text();
    assert!(home.contains("connexion internet de l'école est coupée"), "the pupil is not told: {home}");
    // Still served from the cache meanwhile.
    assert_x_cache(&get(&relais, "/video.mp4", &[]).expect_status(200), "HIT", "uplink down");

    origin.start_again();
    origin.set("/jamais-vu", Route::ok("enfin").cache_control("max-age=60"));
    assert_eq!(get(&relais, "/jamais-vu", &[]).expect_status(200).text(), "enfin");
    let status = admin.call("GET", "/api/admin/status").expect_status(200).json();
    assert_eq!(status["cache"]["upstream_down"], false, "{status}");
    let home = pupil.call("GET", "/accueil").expect_status(200).text();
    assert!(!home.contains("connexion internet de l'école est coupée"), "the uplink is back: {home}");
}

// ---------------------------------------------------------------------------------------------------------
// The origin down or lying
// ---------------------------------------------------------------------------------------------------------

/// With the origin down (port closed, or silent past `upstream_timeout`, or answering 5xx): a fresh object is
/// a plain HIT, a stale one is served as STALE with a Warning, one stale for longer than `max_stale` or
/// marked must-revalidate is a 504, and an object never cached is a 502/504 in French. Once the origin is
/// back, stale objects are checked again.
#[test]
fn with_the_origin_down_stale_copies_are_served_with_a_warning() {
    let mut origin = Origin::start();
    let now = SystemTime::now();
    let stale = |body: &str, tag: &str| Route::ok(body).cache_control("max-age=60").date(now - HOUR).etag(tag);
    origin.set("/frais", Route::ok("frais").cache_control("max-age=3600").etag("\"frais\""));
    origin.set("/rassis", stale("rassis", "\"rassis\""));
    origin.set("/trop-vieux", Route::ok("trop vieux").cache_control("max-age=60").date(now - 10 * DAY).etag("\"tv\""));
    origin.set(
        "/strict",
        Route::ok("strict").cache_control("max-age=60, must-revalidate").date(now - HOUR).etag("\"s\""),
    );
    origin.set("/panne", stale("avant la panne", "\"p\""));
    origin.set("/lent", stale("avant la lenteur", "\"l\""));
    origin.set("/jamais", Route::ok("jamais vu").cache_control("max-age=3600"));
    let relais = Relais::start(&config_for(&origin, &[]));
    for path in ["/frais", "/rassis", "/trop-vieux", "/strict", "/panne", "/lent"] {
        assert_x_cache(&get(&relais, path, &[]).expect_status(200), "MISS", path);
    }

    origin.stop();
    let fresh = get(&relais, "/frais", &[]).expect_status(200);
    assert_x_cache(&fresh, "HIT", "a fresh object, origin down");
    assert_eq!(fresh.text(), "frais");

    let resp = get(&relais, "/rassis", &[]).expect_status(200);
    assert_x_cache(&resp, "STALE", "a stale object, origin down");
    assert_eq!(resp.text(), "rassis");
    let warning = resp.header("warning").unwrap_or_else(|| panic!("STALE without Warning: {resp:?}"));
    assert!(warning.starts_with("110") || warning.starts_with("111"), "Warning: {warning}");
    assert!(assert_age(&resp, "STALE") >= 3600, "a copy sent an hour ago is at least an hour old: {resp:?}");

    let resp = get(&relais, "/trop-vieux", &[]);
    assert!(matches!(resp.status, 502 | 504), "stale for 10 days, beyond max_stale (7d): {resp:?}");
    assert_ne!(resp.text(), "trop vieux");
    let resp = get(&relais, "/strict", &[]);
    assert_eq!(resp.status, 504, "must-revalidate forbids serving stale: {resp:?}");
    assert_ne!(resp.text(), "strict");
    let resp = get(&relais, "/jamais", &[]);
    assert!(matches!(resp.status, 502 | 504), "never cached, origin down: {resp:?}");
    assert_french(&resp, "never cached, origin down");

    origin.start_again();
    // Up again but failing: a 5xx is no better than silence.
    origin.set("/panne", Route::status(503, "en maintenance").cache_control("no-store"));
    let resp = get(&relais, "/panne", &[]).expect_status(200);
    assert_x_cache(&resp, "STALE", "origin answering 503");
    assert_eq!(resp.text(), "avant la panne");
    assert!(resp.header("warning").is_some_and(|w| w.starts_with("110") || w.starts_with("111")), "{resp:?}");
    assert_eq!(origin.count("/panne"), 2, "the origin was asked");

    // Up but silent past upstream_timeout (2 s): unreachable too.
    origin.set("/lent", stale("avant la lenteur", "\"l\"").delay(Duration::from_secs(8)));
    let started = Instant::now();
    let resp = get(&relais, "/lent", &[]).expect_status(200);
    assert_x_cache(&resp, "STALE", "an origin silent past upstream_timeout");
    assert_eq!(resp.text(), "avant la lenteur");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "served after {:?}: the box waited for the origin",
        started.elapsed()
    );

    // Back for good: stale objects are checked with the origin again; the never-cached one is fetched (the box
    // may remember the failure a few seconds before asking again).
    let resp = get(&relais, "/rassis", &[]).expect_status(200);
    assert_x_cache(&resp, "REVALIDATED", "the origin back");
    assert!(resp.header("warning").is_none(), "no Warning once revalidated: {resp:?}");
    let mut last = None;
    wait_until("/jamais fetched once the origin is back", Duration::from_secs(20), || {
        let resp = get(&relais, "/jamais", &[]);
        let done = resp.status == 200;
        last = Some(resp);
        if !done {
            std::thread::sleep(Duration::from_millis(200));
        }
        done
    });
    assert_eq!(last.expect("a response").text(), "jamais vu");
}

/// An origin that cuts its body short (Content-Length or chunks), sends garbage or closes at once: the client
/// gets an error (502, or a cut connection), and nothing is kept: the next request goes to the origin and
/// gets the whole object.
#[test]
fn truncated_or_garbage_responses_are_errors_and_never_cached() {
    let origin = Origin::start();
    let body = content(81, 200 * KIB);
    let good = || Route::ok(body.clone()).cache_control("max-age=3600");
    origin.set("/tronque", good().fault(Fault::Truncate(100 * 1024)));
    origin.set("/tronque-chunks", good().chunked().fault(Fault::Truncate(100 * 1024)));
    origin.set("/charabia", good().fault(Fault::Garbage));
    origin.set("/muet", good().fault(Fault::Close));
    let relais = Relais::start(&config_for(&origin, &[]));

    for path in ["/tronque", "/tronque-chunks", "/charabia", "/muet"] {
        // A cut connection comes back as Err (ureq checks Content-Length and chunk framing).
        if let Ok(resp) = try_get(&relais, path, &[]) {
            assert!(matches!(resp.status, 502 | 504), "{path}: expected a 502/504 or a cut connection, got {resp:?}");
        }
        let before = origin.count(path);
        origin.set(path, good());
        let resp = get(&relais, path, &[]).expect_status(200);
        assert_ne!(x_cache(&resp), "HIT", "{path}: the broken response must not have been kept: {resp:?}");
        assert_body(&resp, &body, path);
        assert_eq!(origin.count(path), before + 1, "{path}: the next request goes to the origin");
        let resp = get(&relais, path, &[]).expect_status(200);
        assert_x_cache(&resp, "HIT", &format!("{path}, once the origin answers well"));
        assert_body(&resp, &body, path);
    }
}

/// A cache entry damaged on disk while the box was stopped (a byte flipped, a file cut short) is caught by
/// its hash and dropped: the next request fetches it again and gets the right bytes, never damaged ones;
/// undamaged entries are still HITs.
#[test]
fn a_damaged_entry_on_disk_is_detected_and_fetched_again() {
    let origin = Origin::start();
    let bodies: Vec<Vec<u8>> = (0..3u64).map(|i| content(90 + i, 600 * KIB)).collect();
    for (i, body) in bodies.iter().enumerate() {
        origin.set(&format!("/c{i}"), Route::ok(body.clone()).cache_control("max-age=86400"));
    }
    let mut relais = Relais::start(&config_for(&origin, &[]));
    for (i, body) in bodies.iter().enumerate() {
        assert_body(&get(&relais, &format!("/c{i}"), &[]).expect_status(200), body, "fill");
    }
    relais.stop();

    let cache_dir = relais.data_dir().join("cache");
    // c0: one byte flipped in the middle of its body.
    let window = &bodies[0][300_000..300_064];
    let (file, at) = find_in_files(&cache_dir, window).unwrap_or_else(|| {
        panic!("no file under {} holds c0's bytes: {:?}", cache_dir.display(), files_under(&cache_dir))
    });
    let mut bytes = std::fs::read(&file).expect("read the entry");
    bytes[at + 32] ^= 0x5a;
    std::fs::write(&file, &bytes).expect("damage the entry");
    // c1: its body file cut short.
    let window = &bodies[1][100_000..100_064];
    let (file, at) = find_in_files(&cache_dir, window).expect("a file holds c1's bytes");
    let cut = std::fs::OpenOptions::new().write(true).open(&file).expect("open the entry");
    cut.set_len((at + 10_000) as u64).expect("cut the entry short");
    drop(cut);

    relais.respawn();
    let mut problems = Vec::new();
    for (i, body) in bodies.iter().enumerate().take(2) {
        let path = format!("/c{i}");
        // The first request after the restart, read as a stream: the bytes before a cut are checked too.
        let (status, x_cache_first, got, error) = get_streamed(&relais, &format!("/cache/origin{path}"));
        if !body.starts_with(&got) {
            let at = got.iter().zip(body).position(|(a, b)| a != b);
            panic!("{path}: damaged bytes reached the client (first difference at {at:?})");
        }
        match error {
            Some(e) => problems.push(format!(
                "{path}, damaged on disk: the first request after the restart got {status} (X-Cache {x_cache_first}) \
                 and its connection cut after {} of {} bytes ({e}), instead of the object fetched again",
                got.len(),
                body.len()
            )),
            None if status != 200 || got != *body => problems.push(format!(
                "{path}, damaged on disk: the first request after the restart got {status} with {} wrong bytes",
                got.len()
            )),
            None if x_cache_first == "HIT" => {
                problems.push(format!("{path}, damaged on disk: the right bytes, but X-Cache HIT"))
            }
            None => {}
        }
        // Fetched again (by the first request, or at the latest the next) and stored again.
        let mut hit = false;
        for _ in 0..3 {
            let resp = get(&relais, &path, &[]).expect_status(200);
            assert_body(&resp, body, &format!("{path}, after the damage"));
            hit = x_cache(&resp) == "HIT";
            if hit {
                break;
            }
        }
        assert!(hit, "{path}: never stored again");
        assert_eq!(origin.count(&path), 2, "{path}: fetched again, once");
    }
    let resp = get(&relais, "/c2", &[]).expect_status(200);
    assert_x_cache(&resp, "HIT", "an undamaged entry");
    assert_body(&resp, &bodies[2], "/c2");
    assert_eq!(origin.count("/c2"), 1);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Filling more than `size` evicts older entries: the cache's bytes (metrics) never exceed the budget, the
/// newest objects are still HITs and the oldest are fetched again; the request counters follow.
#[test]
fn the_disk_budget_evicts_older_entries_and_the_metrics_follow() {
    const BUDGET: u64 = 2 * MIB;
    const OBJECTS: u64 = 12;
    let origin = Origin::start();
    let bodies: Vec<Vec<u8>> = (0..OBJECTS).map(|i| content(100 + i, 256 * KIB)).collect();
    for (i, body) in bodies.iter().enumerate() {
        origin.set(&format!("/o{i}"), Route::ok(body.clone()).cache_control("max-age=86400"));
    }
    let relais = Relais::start(&config_for(&origin, &[("size", quoted("2MiB"))]));
    let hits_at_start = metric(&relais, "relais_cache_requests_total", &["result=\"hit\""]).unwrap_or(0.0);
    let misses_at_start = metric(&relais, "relais_cache_requests_total", &["result=\"miss\""]).unwrap_or(0.0);

    for (i, body) in bodies.iter().enumerate() {
        let resp = get(&relais, &format!("/o{i}"), &[]).expect_status(200);
        assert_body(&resp, body, &format!("/o{i}"));
        let mut bytes = None;
        wait_until("the cache back within its budget", Duration::from_secs(10), || {
            bytes = metric(&relais, "relais_cache_bytes", &[]);
            bytes.is_some_and(|b| b <= BUDGET as f64)
        });
    }
    let entries = metric(&relais, "relais_cache_entries", &[]).expect("relais_cache_entries");
    assert!(
        (1.0..OBJECTS as f64).contains(&entries),
        "{OBJECTS} objects of 256 KiB in a 2 MiB budget: {entries} entries"
    );
    let misses = metric(&relais, "relais_cache_requests_total", &["result=\"miss\""]).unwrap_or(0.0);
    assert_eq!(misses - misses_at_start, OBJECTS as f64, "relais_cache_requests_total{{result=\"miss\"}}");

    let newest = get(&relais, &format!("/o{}", OBJECTS - 1), &[]).expect_status(200);
    assert_x_cache(&newest, "HIT", "the newest object");
    let hits = metric(&relais, "relais_cache_requests_total", &["result=\"hit\""]).unwrap_or(0.0);
    assert_eq!(hits - hits_at_start, 1.0, "relais_cache_requests_total{{result=\"hit\"}} after one HIT");

    // Which objects are still stored, asked without fetching anything (RFC 9111 `only-if-cached`: 504 if not).
    let stored: Vec<bool> = (0..OBJECTS)
        .map(|i| {
            let resp = get(&relais, &format!("/o{i}"), &[("Cache-Control", "only-if-cached")]);
            assert!(matches!(resp.status, 200 | 504), "/o{i} only-if-cached: {resp:?}");
            resp.status == 200
        })
        .collect();
    assert_eq!(
        (0..OBJECTS as usize).map(|i| origin.count(&format!("/o{i}"))).sum::<usize>(),
        OBJECTS as usize,
        "only-if-cached never reaches the origin"
    );
    let newest = OBJECTS as usize - 3..OBJECTS as usize;
    assert!(
        stored[newest.clone()].iter().all(|s| *s),
        "the newest objects must stay, older ones go first: stored {stored:?}"
    );
    let evicted = stored.iter().position(|s| !s).unwrap_or_else(|| panic!("nothing evicted: {stored:?}"));
    let refetched = get(&relais, &format!("/o{evicted}"), &[]).expect_status(200);
    assert_body(&refetched, &bodies[evicted], "an evicted object");
    assert_x_cache(&refetched, "MISS", &format!("/o{evicted}, evicted"));
    assert_eq!(origin.count(&format!("/o{evicted}")), 2);
    let bytes = metric(&relais, "relais_cache_bytes", &[]).expect("relais_cache_bytes");
    assert!(bytes <= BUDGET as f64, "relais_cache_bytes {bytes} over the {BUDGET} budget");
    // And on disk: the bodies within the budget, plus a little room for the objects' heads.
    let cache_dir = relais.data_dir().join("cache");
    let mut on_disk = 0;
    wait_until("DATA/cache within the budget", Duration::from_secs(10), || {
        on_disk = dir_bytes(&cache_dir);
        on_disk <= BUDGET + 64 * KIB
    });
    assert!(on_disk > 0, "nothing under {}", cache_dir.display());
}

// ---------------------------------------------------------------------------------------------------------
// Forward proxy, HTTPS upstreams, prefetch
// ---------------------------------------------------------------------------------------------------------

/// What a curl run showed.
#[derive(Debug)]
struct Curl {
    exit: Option<i32>,
    /// The final response's status (0 if none).
    status: u16,
    /// The proxy's answer to CONNECT (0 if none).
    connect: u16,
    /// The final response's head.
    head: String,
    body: Vec<u8>,
    /// Shown by `Debug` in failure messages.
    #[allow(dead_code)]
    stderr: String,
}

impl Curl {
    fn header(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    }
}

fn curl_present() -> bool {
    let mut cmd = Command::new("curl");
    cmd.arg("--version");
    matches!(run_bounded(cmd, Duration::from_secs(10)).0, Some(status) if status.success())
}

/// `curl -sS -m 20 ARGS…` with no proxy from the environment or a curlrc.
fn curl(args: &[&str]) -> Curl {
    let dir = tempfile::tempdir().expect("temp folder");
    let (head_file, body_file) = (dir.path().join("head"), dir.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.arg("-q").args(["-sS", "-m", "20", "-w", "%{http_code} %{http_connect}"]);
    cmd.arg("-D").arg(&head_file).arg("-o").arg(&body_file).args(args);
    for var in
        ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"]
    {
        cmd.env_remove(var);
    }
    let (status, out, stderr) = run_bounded(cmd, Duration::from_secs(30));
    let mut codes = out.split_whitespace().map(|c| c.parse().unwrap_or(0));
    let heads = std::fs::read_to_string(&head_file).unwrap_or_default();
    let head = heads.split("\r\n\r\n").filter(|h| !h.trim().is_empty()).last().unwrap_or_default().to_string();
    Curl {
        exit: status.and_then(|s| s.code()),
        status: codes.next().unwrap_or(0),
        connect: codes.next().unwrap_or(0),
        head,
        body: std::fs::read(&body_file).unwrap_or_default(),
        stderr,
    }
}

/// The forward proxy, driven by the real curl: plain HTTP through it is cached like the reverse proxy (the
/// origin sees one request for two), HTTPS goes through a CONNECT tunnel the box does not decrypt (curl
/// checks the origin's own certificate against the test CA alone), CONNECT to a port outside `connect_ports`
/// is refused with 403, and `/proxy.pac` tells browsers where the proxy is.
#[test]
fn the_forward_proxy_caches_http_and_tunnels_https() {
    if !curl_present() {
        eprintln!("SKIPPED the_forward_proxy_caches_http_and_tunnels_https: no curl on this machine");
        return;
    }
    let origin = Origin::start();
    origin.set("/x", Route::ok("par le proxy").cache_control("max-age=3600"));
    let tls = Origin::start_tls();
    tls.set("/secret", Route::ok("chiffré de bout en bout").cache_control("max-age=3600"));
    let proxy_port = free_port();
    let relais = Relais::start(&config_for(
        &origin,
        &[("proxy_listen", quoted(&format!("127.0.0.1:{proxy_port}"))), ("connect_ports", format!("[{}]", tls.port()))],
    ));
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    wait_until("the forward proxy listening", Duration::from_secs(15), || {
        TcpStream::connect(("127.0.0.1", proxy_port)).is_ok()
    });

    let url = origin.url("/x");
    for round in 0..2 {
        let run = curl(&["-x", &proxy, &url]);
        assert_eq!((run.exit, run.status), (Some(0), 200), "curl -x {proxy} {url}: {run:?}");
        assert_eq!(run.body, "par le proxy".as_bytes(), "{run:?}");
        if round == 1 {
            assert_eq!(run.header("x-cache").as_deref(), Some("HIT"), "the second time through the proxy: {run:?}");
        }
    }
    assert_eq!(origin.count("/x"), 1, "two requests through the proxy, one at the origin");
    // The key is the absolute URL, whichever way the request came: the reverse proxy's copy serves the proxy.
    let shared = relais.anonymous().call("GET", "/cache/origin/x").expect_status(200);
    assert_x_cache(&shared, "HIT", "/cache/origin/x after the same URL through the proxy");
    assert_eq!(shared.text(), "par le proxy");
    assert_eq!(origin.count("/x"), 1, "one object for one absolute URL");

    let ca = tls.ca_file().to_str().expect("UTF-8 path").to_string();
    let secret = tls.url("/secret");
    for _ in 0..2 {
        let run = curl(&["-x", &proxy, "--cacert", &ca, &secret]);
        assert_eq!((run.exit, run.connect, run.status), (Some(0), 200, 200), "curl -x {proxy} {secret}: {run:?}");
        assert_eq!(run.body, "chiffré de bout en bout".as_bytes(), "{run:?}");
    }
    assert_eq!(tls.count("/secret"), 2, "a tunnel is not decrypted, so not cached: each request reaches the origin");

    // The plain origin's port is not in connect_ports.
    let refused = curl(&["-x", &proxy, &format!("https://127.0.0.1:{}/", origin.port())]);
    assert_eq!(refused.connect, 403, "CONNECT to a port outside connect_ports: {refused:?}");
    assert_ne!(refused.exit, Some(0));

    let pac = relais.anonymous().call("GET", "/proxy.pac").expect_status(200);
    let content_type = pac.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/x-ns-proxy-autoconfig"), "{pac:?}");
    let text = pac.text();
    assert!(text.contains("FindProxyForURL"), "{text}");
    let says_proxy = text.split("PROXY ").skip(1).any(|rest| {
        let target: String = rest.chars().take_while(|c| !matches!(c, ';' | '"' | '\'' | ' ')).collect();
        target.ends_with(&format!(":{proxy_port}"))
    });
    assert!(says_proxy, "/proxy.pac must name PROXY <host>:{proxy_port}: {text}");
}

/// An HTTPS upstream whose CA is in `ca_files` is fetched and cached; one whose certificate nothing vouches
/// for is refused (502) without its response ever being read.
#[test]
fn an_https_upstream_is_trusted_through_ca_files_only() {
    let tls = Origin::start_tls();
    let stranger = Origin::start_tls();
    let body = content(111, 100 * KIB);
    tls.set("/doc.pdf", Route::ok(body.clone()).cache_control("max-age=3600"));
    stranger.set("/doc.pdf", Route::ok(body.clone()).cache_control("max-age=3600"));
    let ca = tls.ca_file().to_str().expect("UTF-8 path").to_string();
    let relais = Relais::start(&config(
        &[("ent", tls.base()), ("inconnu", stranger.base())],
        &[("ca_files", format!("[{}]", quoted(&ca)))],
    ));

    let client = relais.anonymous();
    let first = client.call("GET", "/cache/ent/doc.pdf").expect_status(200);
    assert_body(&first, &body, "over HTTPS");
    assert_x_cache(&first, "MISS", "HTTPS upstream, first");
    let second = client.call("GET", "/cache/ent/doc.pdf").expect_status(200);
    assert_x_cache(&second, "HIT", "HTTPS upstream, again");
    assert_eq!(tls.count("/doc.pdf"), 1);

    let refused = client.call("GET", "/cache/inconnu/doc.pdf");
    assert!(matches!(refused.status, 502 | 504), "an upstream with an unknown CA: {refused:?}");
    assert!(refused.body != body, "{refused:?}");
    assert_eq!(stranger.count("/doc.pdf"), 0, "no request may be sent over an unverified connection");
}

/// `prefetch` URLs and the URLs of `prefetch_lists` are fetched in the background (no `[uplink] windows`:
/// at any time), so the first client gets a HIT; with `prefetch_interval` they are revalidated again and
/// the lists read again.
#[test]
fn prefetched_objects_are_fetched_and_revalidated_in_the_background() {
    let origin = Origin::start();
    let warm = content(121, 300 * KIB);
    let listed = content(122, 200 * KIB);
    origin.set("/chaud.mp4", Route::ok(warm.clone()).cache_control("max-age=3600").etag("\"chaud\""));
    origin.set("/liste.txt", Route::ok(format!("# la semaine\n\n{}\n", origin.url("/liste/video.mp4"))));
    origin.set("/liste/video.mp4", Route::ok(listed.clone()).cache_control("max-age=3600"));
    // Fresh for one second: revalidated at each round.
    origin.set("/court.txt", Route::ok("court").cache_control("max-age=1").etag("\"court\""));
    let prefetch = format!("[{}, {}]", quoted(&origin.url("/chaud.mp4")), quoted(&origin.url("/court.txt")));
    let relais = Relais::start(&config_for(
        &origin,
        &[
            ("prefetch", prefetch),
            ("prefetch_lists", format!("[{}]", quoted(&origin.url("/liste.txt")))),
            ("prefetch_interval", quoted("1s")),
        ],
    ));

    for (path, body) in [("/chaud.mp4", &warm), ("/liste/video.mp4", &listed)] {
        // Wait for the origin to have sent the whole object, before any client asks.
        wait_until(&format!("the prefetch of {path}"), Duration::from_secs(30), || {
            origin.bytes_sent(path) >= body.len() as u64
        });
    }
    for (path, body) in [("/chaud.mp4", &warm), ("/liste/video.mp4", &listed)] {
        // The fill may still be committing: ask until it is a HIT (a request during the fill joins it).
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let resp = get(&relais, path, &[]).expect_status(200);
            assert_body(&resp, body, path);
            let hit = x_cache(&resp) == "HIT";
            last = Some(resp);
            if hit {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let last = last.expect("one request");
        assert_x_cache(&last, "HIT", &format!("{path}, prefetched"));
        assert_eq!(origin.count(path), 1, "{path}: only the prefetch reached the origin");
    }

    wait_until("a background revalidation of /court.txt", Duration::from_secs(30), || {
        origin.conditional("/court.txt") >= 1
    });
    wait_until("the prefetch list read again", Duration::from_secs(30), || origin.count("/liste.txt") >= 2);
}

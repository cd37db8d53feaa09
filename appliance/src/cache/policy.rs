//! HTTP caching rules (RFC 9111) for a shared cache: what may be stored, how long it stays fresh, when a stored
//! response may answer a request, and when it may still be served stale because the upstream is unreachable.
//!
//! Pure functions over headers and times, so every rule is tested here without a network.

use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

/// Heuristic freshness (RFC 9111 §4.2.2) is capped: a page that last changed a year ago is still checked daily.
const HEURISTIC_CAP: u64 = 86_400;

/// The directives of one `Cache-Control` header set (request or response). Unknown directives are ignored,
/// as the RFC requires.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Directives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    pub stale_if_error: Option<u64>,
    /// Request only: `max-stale` with its bound (`Some(None)`: any staleness).
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

impl Directives {
    pub fn parse(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for item in split_list(value) {
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    // A malformed delta is treated as 0 (stale), the safe reading.
                    "max-age" => d.max_age = Some(seconds().unwrap_or(0)),
                    "s-maxage" => d.s_maxage = Some(seconds().unwrap_or(0)),
                    "no-store" => d.no_store = true,
                    // The qualified forms (`no-cache="Set-Cookie"`) are read as the whole directive: safe.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "immutable" => d.immutable = true,
                    "stale-if-error" => d.stale_if_error = seconds(),
                    "max-stale" => d.max_stale = Some(seconds()),
                    "min-fresh" => d.min_fresh = seconds(),
                    "only-if-cached" => d.only_if_cached = true,
                    _ => {}
                }
            }
        }
        d
    }

    /// The request's directives, with HTTP/1.0's `Pragma: no-cache` read as `no-cache` when there is no
    /// `Cache-Control` (RFC 9111 §5.4).
    pub fn of_request(headers: &HeaderMap) -> Directives {
        let mut d = Directives::parse(headers);
        if !headers.contains_key(header::CACHE_CONTROL)
            && headers.get_all(header::PRAGMA).iter().any(|v| v.to_str().is_ok_and(|v| v.contains("no-cache")))
        {
            d.no_cache = true;
        }
        d
    }
}

/// Splits a comma-separated header list, keeping commas inside quoted strings.
fn split_list(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&value[start..]);
    items.into_iter().map(str::trim).filter(|s| !s.is_empty()).collect()
}

/// The names a response varies on, lowercased and sorted; `None` for `Vary: *` (never reusable).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        for name in split_list(value.to_str().unwrap_or("*")) {
            if name == "*" {
                return None;
            }
            names.push(name.to_ascii_lowercase());
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// The request's values of the varied headers, in the order of `names` (absent header: empty).
pub fn vary_values(names: &[String], request: &HeaderMap) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let values: Vec<&str> = request.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
            values.join(", ").split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1), among those we keep; 206 is not
/// stored as such (partial content lives in the slices of the full object).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Why a response is not stored; `None` when it may be.
pub fn not_storable(
    status: StatusCode,
    request: &HeaderMap,
    response: &HeaderMap,
    req: &Directives,
    res: &Directives,
) -> Option<&'static str> {
    if req.no_store || res.no_store {
        return Some("no-store");
    }
    if res.private {
        return Some("private");
    }
    if request.contains_key(header::AUTHORIZATION) && !(res.public || res.s_maxage.is_some() || res.must_revalidate) {
        return Some("authorization");
    }
    // Our rule, not the RFC's: a response that sets a cookie is someone's (nginx does the same).
    if response.contains_key(header::SET_COOKIE) {
        return Some("set-cookie");
    }
    if vary_names(response).is_none() {
        return Some("vary *");
    }
    let explicit = res.max_age.is_some()
        || res.s_maxage.is_some()
        || response.contains_key(header::EXPIRES)
        || res.public
        || res.no_cache;
    let status_ok = if explicit { matches!(status.as_u16(), 200..=299 | 300..=399 | 404 | 410) } else { false };
    if !(status_ok || heuristically_cacheable(status)) || status == StatusCode::PARTIAL_CONTENT {
        return Some("status");
    }
    if !explicit && !response.contains_key(header::LAST_MODIFIED) && !matches!(status.as_u16(), 301 | 308 | 404 | 410) {
        // No explicit freshness and nothing to base a heuristic on: it would be stale at once, and without a
        // validator it could never be revalidated either.
        if !response.contains_key(header::ETAG) {
            return Some("no freshness and no validator");
        }
    }
    None
}

/// Times of one stored response, in seconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Times {
    pub request: u64,
    pub response: u64,
}

fn date(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    let value = headers.get(name)?.to_str().ok()?;
    let time = httpdate::parse_http_date(value.trim()).ok()?;
    Some(time.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// Freshness lifetime for a shared cache (RFC 9111 §4.2.1), seconds.
pub fn freshness_lifetime(status: StatusCode, headers: &HeaderMap, res: &Directives) -> u64 {
    if let Some(s) = res.s_maxage {
        return s;
    }
    if let Some(s) = res.max_age {
        return s;
    }
    if headers.contains_key(header::EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired.
        let Some(expires) = date(headers, header::EXPIRES) else { return 0 };
        let date = date(headers, header::DATE).unwrap_or(expires);
        return expires.saturating_sub(date);
    }
    if heuristically_cacheable(status) || res.public {
        if let (Some(modified), Some(date)) = (date(headers, header::LAST_MODIFIED), date(headers, header::DATE)) {
            return (date.saturating_sub(modified) / 10).min(HEURISTIC_CAP);
        }
    }
    0
}

/// The response's current age (RFC 9111 §4.2.3), seconds.
pub fn current_age(headers: &HeaderMap, times: Times, now: u64) -> u64 {
    let date = date(headers, header::DATE).unwrap_or(times.response);
    let age_value = headers.get(header::AGE).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()).unwrap_or(0);
    let apparent_age = times.response.saturating_sub(date);
    let response_delay = times.response.saturating_sub(times.request);
    let corrected_initial_age = apparent_age.max(age_value + response_delay);
    corrected_initial_age + now.saturating_sub(times.response)
}

/// What to do with a stored response for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it as it is.
    Fresh,
    /// Ask the upstream first (a conditional request when it has validators).
    Revalidate,
}

/// Whether a stored response answers a request as it is (RFC 9111 §4, §5.2.1).
pub fn reuse(stored: &Stored<'_>, req: &Directives, now: u64) -> Reuse {
    let res = Directives::parse(stored.headers);
    let lifetime = freshness_lifetime(stored.status, stored.headers, &res);
    let age = current_age(stored.headers, stored.times, now);
    let fresh = lifetime > age;
    if res.no_cache {
        return Reuse::Revalidate;
    }
    if req.no_cache && !(res.immutable && fresh) {
        return Reuse::Revalidate;
    }
    if fresh {
        if let Some(max_age) = req.max_age {
            // A reload sends max-age=0; an immutable response stays as it is (RFC 8246).
            if age > max_age && !res.immutable {
                return Reuse::Revalidate;
            }
        }
        if let Some(min_fresh) = req.min_fresh {
            if lifetime - age < min_fresh {
                return Reuse::Revalidate;
            }
        }
        return Reuse::Fresh;
    }
    if let Some(bound) = req.max_stale {
        if !(res.must_revalidate || res.proxy_revalidate || res.s_maxage.is_some())
            && bound.is_none_or(|b| age - lifetime <= b)
        {
            return Reuse::Fresh;
        }
    }
    Reuse::Revalidate
}

/// Whether a stale response may be served because the upstream failed (RFC 9111 §4.2.4, RFC 5861
/// `stale-if-error`), given the box's own bound for a cut uplink.
pub fn may_serve_stale(stored: &Stored<'_>, max_stale: u64, now: u64) -> bool {
    let res = Directives::parse(stored.headers);
    if res.must_revalidate || res.proxy_revalidate || res.no_cache || res.s_maxage.is_some() {
        return false;
    }
    let lifetime = freshness_lifetime(stored.status, stored.headers, &res);
    let age = current_age(stored.headers, stored.times, now);
    let allowed = max_stale.max(res.stale_if_error.unwrap_or(0));
    age.saturating_sub(lifetime) <= allowed
}

/// Whether the stored response is past its freshness (for the `Warning` of a stale answer).
pub fn is_stale(stored: &Stored<'_>, now: u64) -> bool {
    let res = Directives::parse(stored.headers);
    freshness_lifetime(stored.status, stored.headers, &res) <= current_age(stored.headers, stored.times, now)
}

/// A stored response as the rules see it.
pub struct Stored<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    pub times: Times,
}

/// Whether a request's own validators match the stored response, so a 304 answers it (RFC 9110 §13.1).
pub fn not_modified(request: &HeaderMap, response: &HeaderMap) -> bool {
    if let Some(inm) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = response.get(header::ETAG).and_then(|v| v.to_str().ok()) else { return false };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        return inm.trim() == "*" || split_list(inm).iter().any(|t| weak(t) == weak(etag));
    }
    if let (Some(since), Some(modified)) =
        (date(request, header::IF_MODIFIED_SINCE), date(response, header::LAST_MODIFIED))
    {
        return modified <= since;
    }
    false
}

/// The validator an `If-Range` of a resumed fill carries: a strong ETag, else the Last-Modified date.
pub fn if_range_validator(response: &HeaderMap) -> Option<String> {
    if let Some(etag) = response.get(header::ETAG).and_then(|v| v.to_str().ok()) {
        if !etag.starts_with("W/") {
            return Some(etag.to_string());
        }
    }
    response.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Headers that concern one connection, never forwarded nor stored (RFC 9110 §7.6.1), besides those a
/// `Connection` header names.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        h
    }

    fn http_date(secs: u64) -> String {
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    const T0: u64 = 1_750_000_000;

    fn stored(h: &HeaderMap) -> Stored<'_> {
        Stored { status: StatusCode::OK, headers: h, times: Times { request: T0, response: T0 } }
    }

    #[test]
    fn directives_parse_with_quotes_case_and_junk() {
        let d = Directives::parse(&headers(&[
            ("cache-control", "Max-Age=60, no-cache=\"set-cookie, x\", PUBLIC"),
            ("cache-control", "stale-if-error=300, immutable, x-unknown=1, s-maxage=bad"),
        ]));
        assert_eq!(d.max_age, Some(60));
        assert!(d.no_cache && d.public && d.immutable);
        assert_eq!(d.stale_if_error, Some(300));
        assert_eq!(d.s_maxage, Some(0), "a malformed delta reads as 0");
        let r = Directives::of_request(&headers(&[("pragma", "no-cache")]));
        assert!(r.no_cache);
        let r = Directives::of_request(&headers(&[("cache-control", "max-stale")]));
        assert_eq!(r.max_stale, Some(None));
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires_then_heuristic() {
        let date = http_date(T0);
        let h = headers(&[("cache-control", "max-age=60, s-maxage=120"), ("date", &date)]);
        assert_eq!(freshness_lifetime(StatusCode::OK, &h, &Directives::parse(&h)), 120);
        let expires = http_date(T0 + 3600);
        let h = headers(&[("expires", &expires), ("date", &date)]);
        assert_eq!(freshness_lifetime(StatusCode::OK, &h, &Directives::parse(&h)), 3600);
        let h = headers(&[("expires", "0"), ("date", &date)]);
        assert_eq!(freshness_lifetime(StatusCode::OK, &h, &Directives::parse(&h)), 0);
        let modified = http_date(T0 - 10_000);
        let h = headers(&[("last-modified", &modified), ("date", &date)]);
        assert_eq!(freshness_lifetime(StatusCode::OK, &h, &Directives::parse(&h)), 1000);
        let modified = http_date(T0 - 100 * 86_400);
        let h = headers(&[("last-modified", &modified), ("date", &date)]);
        assert_eq!(freshness_lifetime(StatusCode::OK, &h, &Directives::parse(&h)), HEURISTIC_CAP);
        // No heuristic for a status that is not heuristically cacheable.
        assert_eq!(freshness_lifetime(StatusCode::FOUND, &h, &Directives::parse(&h)), 0);
    }

    #[test]
    fn age_counts_the_upstream_age_the_delay_and_the_time_resident() {
        let date = http_date(T0 - 5);
        let h = headers(&[("date", &date), ("age", "30")]);
        let times = Times { request: T0 - 2, response: T0 };
        // apparent 5, corrected 30 + 2 → 32, plus 10 s resident.
        assert_eq!(current_age(&h, times, T0 + 10), 42);
    }

    #[test]
    fn what_is_not_stored() {
        let none = HeaderMap::new();
        let check = |req: &HeaderMap, res: &HeaderMap, status: u16| {
            not_storable(
                StatusCode::from_u16(status).expect("status"),
                req,
                res,
                &Directives::of_request(req),
                &Directives::parse(res),
            )
        };
        assert_eq!(check(&none, &headers(&[("cache-control", "max-age=60")]), 200), None);
        assert_eq!(check(&none, &headers(&[("cache-control", "no-store")]), 200), Some("no-store"));
        assert_eq!(check(&none, &headers(&[("cache-control", "private, max-age=60")]), 200), Some("private"));
        let auth = headers(&[("authorization", "Basic eDp5")]);
        assert_eq!(check(&auth, &headers(&[("cache-control", "max-age=60")]), 200), Some("authorization"));
        assert_eq!(check(&auth, &headers(&[("cache-control", "public, max-age=60")]), 200), None);
        assert_eq!(check(&auth, &headers(&[("cache-control", "s-maxage=60")]), 200), None);
        let cookie = headers(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]);
        assert_eq!(check(&none, &cookie, 200), Some("set-cookie"));
        assert_eq!(check(&none, &headers(&[("cache-control", "max-age=60"), ("vary", "*")]), 200), Some("vary *"));
        assert_eq!(check(&none, &headers(&[("cache-control", "max-age=60")]), 500), Some("status"));
        assert_eq!(check(&none, &headers(&[("cache-control", "max-age=60")]), 206), Some("status"));
        assert_eq!(check(&none, &HeaderMap::new(), 200), Some("no freshness and no validator"));
        assert_eq!(check(&none, &headers(&[("etag", "\"a\"")]), 200), None, "revalidated every time");
        assert_eq!(
            check(&headers(&[("cache-control", "no-store")]), &headers(&[("cache-control", "max-age=9")]), 200),
            Some("no-store")
        );
    }

    #[test]
    fn reuse_follows_freshness_and_the_request() {
        let date = http_date(T0);
        let h = headers(&[("cache-control", "max-age=100"), ("date", &date)]);
        let s = stored(&h);
        let req = |v: &str| Directives::of_request(&headers(&[("cache-control", v)]));
        let plain = Directives::default();
        assert_eq!(reuse(&s, &plain, T0 + 50), Reuse::Fresh);
        assert_eq!(reuse(&s, &plain, T0 + 150), Reuse::Revalidate);
        assert_eq!(reuse(&s, &req("no-cache"), T0 + 50), Reuse::Revalidate);
        assert_eq!(reuse(&s, &req("max-age=10"), T0 + 50), Reuse::Revalidate);
        assert_eq!(reuse(&s, &req("min-fresh=80"), T0 + 50), Reuse::Revalidate);
        assert_eq!(reuse(&s, &req("max-stale=100"), T0 + 150), Reuse::Fresh);
        assert_eq!(reuse(&s, &req("max-stale=10"), T0 + 150), Reuse::Revalidate);

        let h = headers(&[("cache-control", "max-age=100, immutable"), ("date", &date)]);
        assert_eq!(reuse(&stored(&h), &req("max-age=0"), T0 + 50), Reuse::Fresh, "a reload keeps immutable");
        assert_eq!(reuse(&stored(&h), &req("no-cache"), T0 + 50), Reuse::Fresh);
        let h = headers(&[("cache-control", "no-cache, max-age=100"), ("date", &date)]);
        assert_eq!(reuse(&stored(&h), &plain, T0 + 1), Reuse::Revalidate);
        let h = headers(&[("cache-control", "max-age=100, must-revalidate"), ("date", &date)]);
        assert_eq!(reuse(&stored(&h), &req("max-stale"), T0 + 150), Reuse::Revalidate);
    }

    #[test]
    fn stale_on_error_within_bounds_unless_forbidden() {
        let date = http_date(T0);
        let h = headers(&[("cache-control", "max-age=100"), ("date", &date)]);
        assert!(may_serve_stale(&stored(&h), 1000, T0 + 500));
        assert!(!may_serve_stale(&stored(&h), 1000, T0 + 5000));
        let h = headers(&[("cache-control", "max-age=100, stale-if-error=10000"), ("date", &date)]);
        assert!(may_serve_stale(&stored(&h), 1000, T0 + 5000));
        let h = headers(&[("cache-control", "max-age=100, must-revalidate"), ("date", &date)]);
        assert!(!may_serve_stale(&stored(&h), 1000, T0 + 500));
        let h = headers(&[("cache-control", "no-cache"), ("date", &date)]);
        assert!(!may_serve_stale(&stored(&h), 1000, T0 + 1));
    }

    #[test]
    fn vary_and_validators() {
        let h = headers(&[("vary", "Accept-Language, accept-encoding"), ("vary", "Accept-Language")]);
        assert_eq!(vary_names(&h), Some(vec!["accept-encoding".into(), "accept-language".into()]));
        assert_eq!(vary_names(&headers(&[("vary", "*")])), None);
        let req = headers(&[("accept-language", "fr,  en"), ("accept-language", "de")]);
        assert_eq!(
            vary_values(&["accept-language".into(), "x".into()], &req),
            vec!["fr, en, de".to_string(), String::new()]
        );

        let res = headers(&[("etag", "\"v1\""), ("last-modified", &http_date(T0))]);
        assert!(not_modified(&headers(&[("if-none-match", "\"v0\", W/\"v1\"")]), &res));
        assert!(!not_modified(&headers(&[("if-none-match", "\"v0\"")]), &res));
        assert!(not_modified(&headers(&[("if-modified-since", &http_date(T0 + 1))]), &res));
        assert!(!not_modified(&headers(&[("if-modified-since", &http_date(T0 - 1))]), &res));
        assert_eq!(if_range_validator(&res).as_deref(), Some("\"v1\""));
        let weak = headers(&[("etag", "W/\"v1\""), ("last-modified", &http_date(T0))]);
        assert_eq!(if_range_validator(&weak), Some(http_date(T0)));

        let mut h =
            headers(&[("connection", "close, x-secret"), ("x-secret", "1"), ("keep-alive", "5"), ("etag", "\"a\"")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}

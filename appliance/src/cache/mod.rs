//! The LAN cache: what the school fetches from outside (the regional ENT's resources, publishers' sites)
//! crosses the uplink once, is served at LAN speed after that, and stays readable while the uplink is down.
//!
//! Requests reach it from the reverse proxy (`/cache/<upstream>/…`, `http::cache`), from the forward proxy
//! (`proxy`) and from the prefetcher (`prefetch`); all three key objects by absolute URL, so they share
//! entries. HTTP caching follows RFC 9111 (`policy`); bodies are stored in hashed slices (`entry`); concurrent
//! misses for one object wait on one gate and then read the one download as it arrives (`fill`); the
//! budget is kept by LFU-DA eviction (`index`). Every upstream byte goes through the uplink scheduler.

pub mod entry;
pub mod fill;
pub mod index;
pub mod policy;
pub mod prefetch;
pub mod proxy;
pub mod upstream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};

use crate::http::{empty, with_status, Body, Response};
use crate::uplink::{Class, Scheduler};
use entry::{Key, Meta, SLICE};
use index::{Index, Object};
use policy::{Directives, Reuse};
use upstream::{Upstream, UpstreamError};

/// The cache gives disk back before the filesystem's free space falls under this share of it (or
/// `MIN_FREE_BYTES`, whichever is larger): users' files come first.
const FREE_SHARE: u64 = 10;
const MIN_FREE_BYTES: u64 = 256 << 20;
/// After an uncacheable answer, requests for the same object go straight to the upstream this long instead of
/// queueing behind each other for a chance to share a download (Varnish's hit-for-pass).
const PASS_FOR: Duration = Duration::from_secs(30);
/// After an upstream failed to answer for an object, the requests that queued behind that attempt get the same
/// answer (for at most this long) instead of each waiting out its own timeout in turn.
const FAILED_FOR: Duration = Duration::from_secs(5);
/// Objects up to this size are checked whole before their first answer after a start (see `Cache::intact`).
const VERIFY_FIRST: u64 = 64 << 20;
/// Eviction brings the cache down to this share of its budget, so it does not run at each new object.
const EVICT_TO_PERCENT: u64 = 90;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache setup: {0}")]
    Setup(#[from] UpstreamError),
    #[error("cache folder {path}: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("{url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("{url}: {cause}")]
    Invalid { url: String, cause: String },
    #[error("{url}: not in the cache (only-if-cached)")]
    NotCached { url: String },
}

impl CacheError {
    pub fn status(&self) -> StatusCode {
        match self {
            CacheError::Unreachable { .. } | CacheError::NotCached { .. } => StatusCode::GATEWAY_TIMEOUT,
            CacheError::Invalid { .. } => StatusCode::BAD_GATEWAY,
            CacheError::Setup(_) | CacheError::Folder { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the person in front of the browser reads.
    pub fn message(&self) -> String {
        match self {
            CacheError::Unreachable { url, .. } => format!(
                "{} ne répond pas et cette page n'est pas dans le cache de l'école : la connexion internet est peut-être coupée, réessayez plus tard",
                host_of(url)
            ),
            CacheError::NotCached { .. } => "cette page n'est pas dans le cache de l'école".into(),
            CacheError::Invalid { url, .. } => {
                format!("{} a envoyé une réponse invalide : réessayez plus tard", host_of(url))
            }
            CacheError::Setup(_) | CacheError::Folder { .. } => {
                "erreur du cache de l'école : l'administrateur trouvera la cause dans le journal".into()
            }
        }
    }
}

fn host_of(url: &str) -> &str {
    url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or(url)
}

/// How a request was answered, as `X-Cache` says and the counters count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache, without asking the upstream (also: joined a download another request started).
    Hit,
    /// Downloaded for this request.
    Miss,
    /// The upstream confirmed the stored copy (304).
    Revalidated,
    /// The upstream failed; a stale copy was served.
    Stale,
    /// Not cacheable; passed through.
    Bypass,
    /// Could not be answered.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 6] =
        [Outcome::Hit, Outcome::Miss, Outcome::Revalidated, Outcome::Stale, Outcome::Bypass, Outcome::Error];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Revalidated => "revalidated",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
            Outcome::Error => "error",
        }
    }

    fn header(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Revalidated => "REVALIDATED",
            Outcome::Stale => "STALE",
            Outcome::Bypass => "BYPASS",
            Outcome::Error => "ERROR",
        }
    }
}

/// Counters for `/metrics`, the admin page and `relais status`.
#[derive(Default)]
pub struct Stats {
    requests: [AtomicU64; 6],
    /// Body bytes sent to clients by the cache (from storage or passed through).
    pub served_bytes: AtomicU64,
    /// Body bytes received from upstreams (stored or passed through).
    pub upstream_bytes: AtomicU64,
}

impl Stats {
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].load(Ordering::Relaxed)
    }
}

/// What the status and the admin page show of the cache.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub entries: u64,
    pub bytes: u64,
    pub budget: u64,
    pub requests: u64,
    pub request_hit_ratio: f64,
    pub byte_hit_ratio: f64,
    /// Bytes clients got that did not cross the uplink.
    pub saved_bytes: u64,
    /// Whether the last upstream contact failed (no answer at all).
    pub upstream_down: bool,
}

/// One request for the cache.
pub struct Request {
    /// Absolute URL, the key of what is stored.
    pub url: String,
    pub method: Method,
    /// The client's headers, without hop-by-hop ones; the caller removes what must not go upstream.
    pub headers: HeaderMap,
    /// The request body, for methods that are passed through.
    pub body: Option<hyper::body::Incoming>,
    /// The uplink class its download (if any) waits in.
    pub class: Class,
    /// Whether it counts in the hit ratios (prefetches do not).
    pub counted: bool,
}

pub struct Cache {
    pub config: firmware_config::Cache,
    pub index: Index,
    upstream: Upstream,
    pub uplink: Arc<Scheduler>,
    pub stats: Stats,
    /// One gate per object being looked up at the upstream: misses and revalidations queue here, and all but
    /// the first then find the object stored (or its download running).
    gates: Mutex<HashMap<Key, std::sync::Weak<tokio::sync::Mutex<()>>>>,
    /// Objects found uncacheable lately (see `PASS_FOR`).
    passes: Mutex<HashMap<Key, Instant>>,
    /// Objects whose upstream failed lately, with the failure (see `FAILED_FOR`).
    failures: Mutex<HashMap<Key, (Instant, String)>>,
    next_generation: AtomicU64,
    /// When an upstream last failed to answer, and last answered.
    down_since: Mutex<Option<Instant>>,
    data: PathBuf,
}

impl Cache {
    /// Opens the cache in `DATA/cache`, reading what it held.
    pub fn open(
        config: &firmware_config::Cache,
        data: &Path,
        uplink: Arc<Scheduler>,
    ) -> Result<Arc<Cache>, CacheError> {
        let root = data.join("cache");
        let (index, loaded) = Index::load(&root).map_err(|source| CacheError::Folder { path: root.clone(), source })?;
        if loaded.objects > 0 || loaded.dropped > 0 {
            log::info!(
                "cache: {} objects, {} MB{}",
                loaded.objects,
                loaded.bytes / 1_000_000,
                if loaded.dropped > 0 {
                    format!("; dropped {} damaged or orphaned files", loaded.dropped)
                } else {
                    String::new()
                }
            );
        }
        let upstream = Upstream::new(config, data)?;
        let now_ms = crate::store::now_ms().max(0) as u64;
        Ok(Arc::new(Cache {
            config: config.clone(),
            index,
            upstream,
            uplink,
            stats: Stats::default(),
            gates: Mutex::new(HashMap::new()),
            passes: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(now_ms * 1000),
            down_since: Mutex::new(None),
            data: data.to_owned(),
        }))
    }

    /// The URL an upstream path maps to, `None` for an unknown upstream name.
    pub fn upstream_url(&self, name: &str, path_and_query: &str) -> Option<String> {
        let upstream = self.config.upstream.iter().find(|u| u.name == name)?;
        Some(format!("{}/{}", upstream.url.trim_end_matches('/'), path_and_query.trim_start_matches('/')))
    }

    pub fn summary(&self) -> Summary {
        let (entries, bytes) = self.index.usage();
        let counted: u64 = Outcome::ALL.iter().map(|o| self.stats.requests(*o)).sum();
        let hits = self.stats.requests(Outcome::Hit)
            + self.stats.requests(Outcome::Revalidated)
            + self.stats.requests(Outcome::Stale);
        let served = self.stats.served_bytes.load(Ordering::Relaxed);
        let upstream = self.stats.upstream_bytes.load(Ordering::Relaxed);
        let saved = served.saturating_sub(upstream);
        Summary {
            entries,
            bytes,
            budget: self.config.size.0,
            requests: counted,
            request_hit_ratio: if counted == 0 { 0.0 } else { hits as f64 / counted as f64 },
            byte_hit_ratio: if served == 0 { 0.0 } else { saved as f64 / served as f64 },
            saved_bytes: saved,
            upstream_down: self.down_since.lock().unwrap_or_else(|e| e.into_inner()).is_some(),
        }
    }

    fn count(&self, request: &Request, outcome: Outcome) {
        if request.counted {
            self.stats.requests[outcome as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reached(&self, ok: bool) {
        let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        match (ok, down.is_some()) {
            (true, true) => {
                log::info!("cache: upstreams answer again");
                *down = None;
            }
            (false, false) => *down = Some(Instant::now()),
            _ => {}
        }
    }

    /// Answers one request: from the cache, from a download it joins or starts, or passed through.
    pub async fn handle(self: &Arc<Self>, request: Request) -> Result<Response, CacheError> {
        let result = self.lookup(request).await;
        if let Err((request, e)) = &result {
            self.count(request, Outcome::Error);
            log::info!("cache: {e}");
        }
        result.map_err(|(_, e)| e)
    }

    async fn lookup(self: &Arc<Self>, mut request: Request) -> Result<Response, (Request, CacheError)> {
        if request.method != Method::GET && request.method != Method::HEAD {
            return self.pass(request).await;
        }
        let req_directives = Directives::of_request(&request.headers);
        let arrived = Instant::now();
        // A few rounds at most: a round ends early only when the object's Vary changed under us.
        for _ in 0..3 {
            let key = self.key_for(&request);
            if self.passing(&key) {
                return self.pass(request).await;
            }
            if let Some(answer) = self.try_stored(&key, &request, &req_directives).await {
                return Ok(answer);
            }
            if req_directives.only_if_cached {
                let url = request.url.clone();
                return Err((request, CacheError::NotCached { url }));
            }
            let gate = self.gate(&key);
            let guard = gate.lock().await;
            if self.key_for(&request) != key {
                continue;
            }
            if self.passing(&key) {
                drop(guard);
                return self.pass(request).await;
            }
            if let Some(answer) = self.try_stored(&key, &request, &req_directives).await {
                return Ok(answer);
            }
            if let Some(cause) = self.failed_lately(&key, arrived) {
                drop(guard);
                let url = request.url.clone();
                return match self.index.get(&key).filter(|o| self.may_serve_stale(&o.meta())) {
                    Some(object) => {
                        self.count(&request, Outcome::Stale);
                        Ok(self.respond(object, &request, Outcome::Stale, Some(DISCONNECTED)))
                    }
                    None => Err((request, CacheError::Unreachable { url, cause })),
                };
            }
            let stored = self.index.get(&key);
            let result = self.fetch(&mut request, &req_directives, stored).await;
            drop(guard);
            return result.map_err(|e| (request, e));
        }
        self.pass(request).await
    }

    /// The key of the variant a request asks for, given what the URL's stored responses vary on.
    fn key_for(&self, request: &Request) -> Key {
        let names = self.index.vary_names(&request.url);
        entry::key(&request.url, &policy::vary_values(&names, &request.headers))
    }

    fn passing(&self, key: &Key) -> bool {
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        passes.retain(|_, until| *until > Instant::now());
        passes.contains_key(key)
    }

    /// The failure of an upstream attempt that ended while this request (arrived at `arrived`) queued behind
    /// it; a request that arrives later tries the upstream itself.
    fn failed_lately(&self, key: &Key, arrived: Instant) -> Option<String> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.retain(|_, (at, _)| at.elapsed() < FAILED_FOR);
        failures.get(key).filter(|(at, _)| *at >= arrived).map(|(_, cause)| cause.clone())
    }

    fn gate(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.retain(|_, gate| gate.strong_count() > 0);
        if let Some(gate) = gates.get(key).and_then(std::sync::Weak::upgrade) {
            return gate;
        }
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        gates.insert(key.clone(), Arc::downgrade(&gate));
        gate
    }

    /// A stored answer usable as it is, if there is one.
    async fn try_stored(self: &Arc<Self>, key: &Key, request: &Request, req: &Directives) -> Option<Response> {
        let object = self.index.get(key)?;
        let meta = object.meta();
        if !usable_for(&meta, &request.headers) {
            return None;
        }
        let reuse = meta.with_stored(|stored| policy::reuse(stored, req, now()));
        if reuse != Reuse::Fresh || !self.intact(&object).await {
            return None;
        }
        // A stored part of a cut download: the rest comes from the upstream, so it is not a hit.
        let outcome = if meta.complete() || object.lock().fill.is_some() { Outcome::Hit } else { Outcome::Miss };
        self.count(request, outcome);
        if request.counted {
            // Kept in the head when it is next saved, so eviction remembers popularity across restarts.
            object.lock().meta.hits += 1;
        }
        Some(self.respond(object, request, outcome, None))
    }

    /// Checks the slices of an object this process has not read yet against their hashes, before its first
    /// answer after a start: a damaged object is dropped and fetched again for this very request, instead of
    /// being cut in the middle. Objects over `VERIFY_FIRST` are checked slice by slice as they are sent.
    async fn intact(&self, object: &Arc<Object>) -> bool {
        let (meta, todo) = {
            let state = object.lock();
            let todo: Vec<usize> = (0..state.meta.slices.len())
                .filter(|&i| state.meta.slices[i].is_some() && !state.is_verified(i))
                .collect();
            (state.meta.clone(), todo)
        };
        if todo.is_empty() || meta.stored_prefix() > VERIFY_FIRST {
            return true;
        }
        let path = entry::body_path(self.index.root(), &object.key, meta.generation);
        let checked = {
            let todo = todo.clone();
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                todo.iter().try_for_each(|&i| {
                    entry::read_slice(&file, &path, meta.length, i, meta.slices[i].as_deref(), false)
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
        };
        match checked {
            Ok(()) => {
                let mut state = object.lock();
                todo.iter().for_each(|&i| state.set_verified(i));
                true
            }
            Err(e) => {
                log::warn!("cache: {e}; dropping the entry and fetching it again");
                self.drop_object(object).await;
                false
            }
        }
    }

    /// Goes to the upstream for a miss or a revalidation, holding the object's gate.
    async fn fetch(
        self: &Arc<Self>,
        request: &mut Request,
        req: &Directives,
        stored: Option<Arc<Object>>,
    ) -> Result<Response, CacheError> {
        let stored = stored.filter(|o| usable_for(&o.lock().meta, &request.headers));
        let stored_meta = stored.as_ref().map(|o| o.meta());
        let mut headers = upstream_headers(&request.headers);
        if let Some(meta) = &stored_meta {
            let h = meta.header_map();
            if let Some(etag) = h.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = h.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
            }
        }
        let request_time = now();
        let sent = self.send(&request.url, Method::GET, headers, None).await;
        let response_time = now();
        let response = match sent {
            Ok(response) if response.status().is_server_error() => match (&stored, &stored_meta) {
                (Some(object), Some(meta)) if self.may_serve_stale(meta) => {
                    self.count(request, Outcome::Stale);
                    return Ok(self.respond(object.clone(), request, Outcome::Stale, Some(REVALIDATION_FAILED)));
                }
                _ => response,
            },
            Ok(response) => response,
            Err(e) => {
                let unreachable = matches!(e, CacheError::Unreachable { .. });
                match (&stored, &stored_meta) {
                    (Some(object), Some(meta)) if self.may_serve_stale(meta) => {
                        log::info!("cache: {e}; serving the stored copy");
                        self.count(request, Outcome::Stale);
                        let warning = if unreachable { DISCONNECTED } else { REVALIDATION_FAILED };
                        return Ok(self.respond(object.clone(), request, Outcome::Stale, Some(warning)));
                    }
                    _ => {
                        if let CacheError::Unreachable { cause, .. } = &e {
                            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
                            failures.insert(self.key_for(request), (Instant::now(), cause.clone()));
                        }
                        return Err(e);
                    }
                }
            }
        };
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            if let (Some(object), Some(meta)) = (&stored, &stored_meta) {
                self.refresh(object, meta.clone(), response.headers(), request_time, response_time).await;
                self.count(request, Outcome::Revalidated);
                return Ok(self.respond(object.clone(), request, Outcome::Revalidated, None));
            }
        }
        let res = Directives::parse(response.headers());
        let refusal = policy::not_storable(status, &request.headers, response.headers(), req, &res)
            .or_else(|| self.too_big(response.headers()));
        let Some(names_now) = policy::vary_names(response.headers()).filter(|_| refusal.is_none()) else {
            if let Some(object) = &stored {
                self.drop_object(object).await;
            }
            log::debug!("cache: {} not stored: {}", request.url, refusal.unwrap_or("vary"));
            if refusal != Some("authorization") {
                self.passes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(self.key_for(request), Instant::now() + PASS_FOR);
            }
            self.count(request, Outcome::Bypass);
            return Ok(self.relay(response, request.method == Method::HEAD));
        };
        // A new response to store: a new object (a new body generation) in place of the old one.
        let values = policy::vary_values(&names_now, &request.headers);
        let key = entry::key(&request.url, &values);
        let mut response_headers = response.headers().clone();
        policy::strip_hop_by_hop(&mut response_headers);
        response_headers.remove(header::AGE);
        let length = content_length(&response_headers);
        response_headers.remove(header::CONTENT_LENGTH);
        let mut meta = Meta {
            url: request.url.clone(),
            vary: names_now.iter().cloned().zip(values).collect(),
            status: status.as_u16(),
            headers: Vec::new(),
            request_time,
            response_time,
            length,
            slices: Vec::new(),
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
            hits: 0,
        };
        // The upstream's Age counts in the stored copy's age.
        if let Some(age) = response.headers().get(header::AGE) {
            response_headers.insert(header::AGE, age.clone());
        }
        meta.set_headers(&response_headers);
        let object = Object::new(key, meta.clone());
        let fill = fill::Fill::new(0, meta.generation);
        object.lock().fill = Some(fill.clone());
        // Head and body file exist before the object is findable: a request that finds it opens the body at once.
        let (root, key, head) = (self.index.root().to_owned(), object.key.clone(), meta.clone());
        let created = tokio::task::spawn_blocking(move || {
            entry::write_meta(&root, &key, &head).map_err(|e| e.to_string())?;
            std::fs::File::create(entry::body_path(&root, &key, head.generation)).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(e) = created {
            log::warn!("cache: cannot store {}: {e}", request.url);
            self.count(request, Outcome::Bypass);
            return Ok(self.relay(response, request.method == Method::HEAD));
        }
        if let Some(old) = self.index.insert(object.clone(), names_now) {
            let generation = old.meta().generation;
            if generation != meta.generation {
                let _ = std::fs::remove_file(entry::body_path(self.index.root(), &old.key, generation));
            }
        }
        let body = response.into_body();
        tokio::spawn(fill::run(self.clone(), object.clone(), fill, body, request.class));
        self.count(request, Outcome::Miss);
        Ok(self.respond(object, request, Outcome::Miss, None))
    }

    async fn send(
        &self,
        url: &str,
        method: Method,
        headers: HeaderMap,
        body: Option<hyper::body::Incoming>,
    ) -> Result<http::Response<hyper::body::Incoming>, CacheError> {
        let mut builder = http::Request::builder().method(method).uri(url);
        if let Some(h) = builder.headers_mut() {
            *h = headers;
        }
        let body = match body {
            Some(body) => body.map_err(std::io::Error::other).boxed(),
            None => http_body_util::Empty::new().map_err(|never| match never {}).boxed(),
        };
        let request = builder.body(body).map_err(|e| CacheError::Invalid { url: url.into(), cause: e.to_string() })?;
        match self.upstream.send(request).await {
            Ok(response) => {
                self.reached(true);
                Ok(response)
            }
            Err(UpstreamError::Unreachable(cause)) => {
                self.reached(false);
                Err(CacheError::Unreachable { url: url.into(), cause })
            }
            Err(e) => Err(CacheError::Invalid { url: url.into(), cause: e.to_string() }),
        }
    }

    fn may_serve_stale(&self, meta: &Meta) -> bool {
        meta.with_stored(|stored| policy::may_serve_stale(stored, self.config.max_stale.0.as_secs(), now()))
    }

    fn too_big(&self, headers: &HeaderMap) -> Option<&'static str> {
        content_length(headers).filter(|len| *len > self.config.size.0 / 2).map(|_| "larger than half the cache")
    }

    /// Merges a 304's headers into the stored head (RFC 9111 §4.3.4) and saves it.
    async fn refresh(
        &self,
        object: &Arc<Object>,
        mut meta: Meta,
        fresh: &HeaderMap,
        request_time: u64,
        response_time: u64,
    ) {
        let mut headers = meta.header_map();
        let mut update = fresh.clone();
        policy::strip_hop_by_hop(&mut update);
        update.remove(header::CONTENT_LENGTH);
        for name in update.keys() {
            headers.remove(name);
        }
        for (name, value) in update.iter() {
            headers.append(name.clone(), value.clone());
        }
        if !fresh.contains_key(header::AGE) {
            headers.remove(header::AGE);
        }
        {
            let mut state = object.lock();
            state.meta.set_headers(&headers);
            state.meta.request_time = request_time;
            state.meta.response_time = response_time;
            meta = state.meta.clone();
        }
        if meta.complete() {
            self.write_head(object).await;
        }
    }

    async fn write_head(&self, object: &Arc<Object>) {
        let meta = object.meta();
        let root = self.index.root().to_owned();
        let key = object.key.clone();
        let written = tokio::task::spawn_blocking(move || entry::write_meta(&root, &key, &meta)).await;
        if let Ok(Err(e)) = written {
            log::warn!("cache: {e}");
        }
    }

    /// Takes an object out of the cache and removes its files.
    pub async fn drop_object(&self, object: &Arc<Object>) {
        if self.index.remove(object) {
            let generation = object.meta().generation;
            let root = self.index.root().to_owned();
            let key = object.key.clone();
            let _ = tokio::task::spawn_blocking(move || entry::remove(&root, &key, generation)).await;
        }
    }

    /// The budget now: the configured size, less what users' files need of the disk.
    fn budget(&self) -> u64 {
        let (_, used) = self.index.usage();
        match nix::sys::statvfs::statvfs(&self.data) {
            // The field types differ between targets (u64 here, c_ulong on 32-bit ones).
            #[allow(clippy::unnecessary_cast)]
            Ok(fs) => {
                let block = fs.fragment_size() as u64;
                let total = fs.blocks() as u64 * block;
                let free = fs.blocks_available() as u64 * block;
                let reserve = (total / FREE_SHARE).max(MIN_FREE_BYTES);
                self.config.size.0.min((used + free).saturating_sub(reserve))
            }
            Err(_) => self.config.size.0,
        }
    }

    /// Refuses a write that would take the disk under users' reserve and cannot be made room for.
    fn reserve_disk(&self, bytes: u64) -> Result<(), String> {
        let (_, used) = self.index.usage();
        if used + bytes > self.budget() + SLICE * 4 {
            let evicted = self.index.evict_to(self.budget() * EVICT_TO_PERCENT / 100);
            self.remove_files(evicted);
            let (_, used) = self.index.usage();
            if used + bytes > self.budget() + SLICE * 4 {
                return Err("the cache is full of downloads in progress".into());
            }
        }
        Ok(())
    }

    /// Evicts down to the budget if it is exceeded.
    pub async fn make_room(&self) {
        let budget = self.budget();
        if self.index.usage().1 <= budget {
            return;
        }
        let evicted = self.index.evict_to(budget * EVICT_TO_PERCENT / 100);
        if !evicted.is_empty() {
            log::info!("cache: evicted {} objects to stay within {} MB", evicted.len(), budget / 1_000_000);
        }
        self.remove_files(evicted);
    }

    fn remove_files(&self, evicted: Vec<Arc<Object>>) {
        let root = self.index.root().to_owned();
        for object in evicted {
            entry::remove(&root, &object.key, object.meta().generation);
        }
    }

    /// Passes a request through to the upstream, storing nothing.
    async fn pass(self: &Arc<Self>, mut request: Request) -> Result<Response, (Request, CacheError)> {
        let headers = {
            let mut h = request.headers.clone();
            policy::strip_hop_by_hop(&mut h);
            h.remove(header::HOST);
            h
        };
        let body = request.body.take();
        match self.send(&request.url, request.method.clone(), headers, body).await {
            Ok(response) => {
                self.count(&request, Outcome::Bypass);
                Ok(self.relay(response, request.method == Method::HEAD))
            }
            Err(e) => Err((request, e)),
        }
    }

    /// An upstream response sent on as it comes, counted.
    fn relay(self: &Arc<Self>, response: http::Response<hyper::body::Incoming>, head: bool) -> Response {
        let (mut parts, body) = response.into_parts();
        policy::strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(X_CACHE, HeaderValue::from_static(Outcome::Bypass.header()));
        let cache = self.clone();
        let body = if head {
            empty()
        } else {
            body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    cache.stats.upstream_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    cache.stats.served_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            })
            .map_err(std::io::Error::other)
            .boxed()
        };
        hyper::Response::from_parts(parts, body)
    }

    /// Answers from a stored (or downloading) object: validators, ranges, age and the cache's headers.
    fn respond(
        self: &Arc<Self>,
        object: Arc<Object>,
        request: &Request,
        outcome: Outcome,
        warning: Option<&'static str>,
    ) -> Response {
        let meta = object.meta();
        let mut headers = meta.header_map();
        let (age, stale) = {
            let stored = policy::Stored { status: meta.status(), headers: &headers, times: meta.times() };
            let now = now();
            (policy::current_age(&headers, stored.times, now), policy::is_stale(&stored, now))
        };
        headers.insert(header::AGE, HeaderValue::from(age));
        headers.insert(X_CACHE, HeaderValue::from_static(outcome.header()));
        if outcome == Outcome::Stale || (stale && outcome == Outcome::Hit) {
            headers.append(header::WARNING, HeaderValue::from_static(STALE_WARNING));
        }
        if let Some(warning) = warning {
            headers.append(header::WARNING, HeaderValue::from_static(warning));
        }
        let status = meta.status();
        if status == StatusCode::OK && policy::not_modified(&request.headers, &headers) {
            let mut resp = with_status(StatusCode::NOT_MODIFIED, empty());
            for name in [
                header::ETAG,
                header::CACHE_CONTROL,
                header::EXPIRES,
                header::LAST_MODIFIED,
                header::VARY,
                header::AGE,
                X_CACHE,
            ] {
                if let Some(v) = headers.get(&name) {
                    resp.headers_mut().insert(name, v.clone());
                }
            }
            return resp;
        }
        let mut start = 0;
        let mut end = meta.length;
        let mut code = status;
        if let (StatusCode::OK, Some(len), Some(range)) =
            (status, meta.length, request.headers.get(header::RANGE).and_then(|v| v.to_str().ok()))
        {
            let if_range_ok = match request.headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
                None => true,
                Some(v) => policy::if_range_validator(&headers).as_deref() == Some(v),
            };
            if if_range_ok {
                match crate::http::files::parse_range(range, len) {
                    Ok(Some((a, b))) => {
                        start = a;
                        end = Some(b + 1);
                        code = StatusCode::PARTIAL_CONTENT;
                        headers.insert(
                            header::CONTENT_RANGE,
                            HeaderValue::from_str(&format!("bytes {a}-{b}/{len}"))
                                .unwrap_or(HeaderValue::from_static("")),
                        );
                    }
                    Ok(None) => {}
                    Err(_) => {
                        let mut resp = with_status(StatusCode::RANGE_NOT_SATISFIABLE, empty());
                        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                            resp.headers_mut().insert(header::CONTENT_RANGE, v);
                        }
                        return resp;
                    }
                }
            }
        }
        if status == StatusCode::OK {
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        if let Some(end) = end {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        }
        let body = if request.method == Method::HEAD || end == Some(start) {
            empty()
        } else {
            self.body(object, meta.generation, start, end, request.class)
        };
        let mut resp = with_status(code, body);
        *resp.headers_mut() = headers;
        resp
    }

    /// The bytes `[start, end)` of an object (to its end when `end` is unknown), read from verified slices
    /// and from the running download, in a task of their own that stays a slice or two ahead of the client.
    fn body(
        self: &Arc<Self>,
        object: Arc<Object>,
        generation: u64,
        start: u64,
        end: Option<u64>,
        class: Class,
    ) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let cache = self.clone();
        tokio::spawn(async move {
            if let Err(e) = cache.stream(&object, generation, start, end, class, &tx).await {
                log::info!("cache: {}: {e}", object.meta().url);
                let _ = tx.send(Err(e)).await;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item.map(hyper::body::Frame::data), rx))
        });
        StreamBody::new(stream).boxed()
    }

    async fn stream(
        self: &Arc<Self>,
        object: &Arc<Object>,
        generation: u64,
        start: u64,
        end: Option<u64>,
        class: Class,
        tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), std::io::Error> {
        let path = entry::body_path(self.index.root(), &object.key, generation);
        let file = Arc::new(std::fs::File::open(&path)?);
        let mut pos = start;
        loop {
            // Where the object stands now: its slices, its length, its download.
            let slice = (pos / SLICE) as usize;
            // Only what this step needs: the head's headers and other slices are not copied per slice.
            let (current, length, hash, fill, trusted) = {
                let state = object.lock();
                let hash = state.meta.slices.get(slice).cloned().flatten();
                (state.meta.generation, state.meta.length, hash, state.fill.clone(), state.is_verified(slice))
            };
            if current != generation {
                return Err(std::io::Error::other("the object changed upstream while it was being sent"));
            }
            let end_now = end.or(length);
            if end_now.is_some_and(|e| pos >= e) {
                return Ok(());
            }
            if hash.is_some() {
                let (file, path) = (file.clone(), path.clone());
                let data = tokio::task::spawn_blocking(move || {
                    entry::read_slice(&file, &path, length, slice, hash.as_deref(), trusted)
                })
                .await
                .map_err(std::io::Error::other)?;
                let data = match data {
                    Ok(data) => data,
                    Err(e) => {
                        log::warn!("cache: {e}; dropping the entry");
                        self.drop_object(object).await;
                        return Err(std::io::Error::other(e.to_string()));
                    }
                };
                if !trusted {
                    object.lock().set_verified(slice);
                }
                let slice_start = slice as u64 * SLICE;
                let from = (pos - slice_start) as usize;
                let to = end_now.map_or(data.len(), |e| ((e - slice_start) as usize).min(data.len()));
                if from >= to {
                    return Ok(());
                }
                let chunk = Bytes::from(data).slice(from..to);
                pos += chunk.len() as u64;
                self.stats.served_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if tx.send(Ok(chunk)).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            let fill = match fill {
                Some(fill) if fill.start <= pos && fill.generation == generation => fill,
                Some(other) => {
                    // A download elsewhere in the object: let it end, then look again.
                    let mut watch = other.watch();
                    let _ = watch.wait_for(|p| p.done.is_some()).await;
                    if object.lock().fill.as_ref().is_some_and(|f| Arc::ptr_eq(f, &other)) {
                        return Err(std::io::Error::other("a download of another part of the object is stuck"));
                    }
                    continue;
                }
                None => {
                    if length.is_some_and(|len| pos >= len) {
                        return Ok(());
                    }
                    // Nothing stored here and nothing coming: fetch the rest (a download cut earlier).
                    self.resume(object, slice, class).await?;
                    continue;
                }
            };
            let mut watch = fill.watch();
            let progress = watch
                .wait_for(|p| p.end > pos || p.done.is_some())
                .await
                .map_err(|_| std::io::Error::other("download vanished"))?
                .clone();
            if progress.end <= pos {
                match progress.done {
                    Some(Ok(())) => continue,
                    Some(Err(cause)) => return Err(std::io::Error::other(cause)),
                    None => continue,
                }
            }
            let upto = end_now.map_or(progress.end, |e| e.min(progress.end)).min(pos + 4 * SLICE);
            let (file2, at, len) = (file.clone(), pos, (upto - pos) as usize);
            let data = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; len];
                std::os::unix::fs::FileExt::read_exact_at(&*file2, &mut buf, at).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            pos = upto;
            self.stats.served_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            if tx.send(Ok(Bytes::from(data))).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Starts a download of an object's missing part from `slice` on (with `If-Range`, so a changed object is
    /// not stitched to the old one), unless one is already running.
    async fn resume(self: &Arc<Self>, object: &Arc<Object>, slice: usize, class: Class) -> Result<(), std::io::Error> {
        let (meta, fill) = {
            let mut state = object.lock();
            if state.fill.is_some() {
                return Ok(());
            }
            let fill = fill::Fill::new(slice as u64 * SLICE, state.meta.generation);
            state.fill = Some(fill.clone());
            (state.meta.clone(), fill)
        };
        let stored = meta.header_map();
        let mut headers = HeaderMap::new();
        for (name, value) in &meta.vary {
            if let (Ok(n), Ok(v)) = (header::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.insert(n, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&format!("bytes={}-", fill.start)) {
            headers.insert(header::RANGE, v);
        }
        if let Some(v) = policy::if_range_validator(&stored).and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(header::IF_RANGE, v);
        }
        let outcome = self.send(&meta.url, Method::GET, headers, None).await;
        let response = match outcome {
            Ok(r) if r.status() == StatusCode::PARTIAL_CONTENT && range_start(r.headers()) == Some(fill.start) => r,
            Ok(r)
                if r.status() == StatusCode::OK
                    && policy::if_range_validator(r.headers()).is_some()
                    && policy::if_range_validator(r.headers()) == policy::if_range_validator(&stored)
                    && content_length(r.headers()) == meta.length =>
            {
                // The same object from its start (an upstream that ignores ranges): download it again over the
                // part already stored; readers wait for it where they are.
                let whole = fill::Fill::new(0, meta.generation);
                object.lock().fill = Some(whole.clone());
                fill.finish_empty();
                tokio::spawn(fill::run(self.clone(), object.clone(), whole, r.into_body(), class));
                return Ok(());
            }
            Ok(r) => {
                // The object changed (or the upstream ignores ranges): the stored part is of no use.
                let cause = format!("resuming got {} instead of the missing part", r.status());
                fill.fail(cause.clone());
                object.lock().fill = None;
                self.drop_object(object).await;
                return Err(std::io::Error::other(cause));
            }
            Err(e) => {
                fill.fail(e.to_string());
                object.lock().fill = None;
                return Err(std::io::Error::other(e.to_string()));
            }
        };
        tokio::spawn(fill::run(self.clone(), object.clone(), fill, response.into_body(), class));
        Ok(())
    }
}

/// `X-Cache`, as squid and most CDNs name it.
pub const X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
const STALE_WARNING: &str = "110 relais \"Response is Stale\"";
const REVALIDATION_FAILED: &str = "111 relais \"Revalidation Failed\"";
const DISCONNECTED: &str = "112 relais \"Disconnected Operation\"";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn range_start(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// Whether a stored response may answer this request at all: one carrying `Authorization` only gets a response
/// that said it may be shared (RFC 9111 §3.5).
fn usable_for(meta: &Meta, request: &HeaderMap) -> bool {
    if !request.contains_key(header::AUTHORIZATION) {
        return true;
    }
    let d = Directives::parse(&meta.header_map());
    d.public || d.s_maxage.is_some() || d.must_revalidate
}

/// The client's headers as the upstream gets them for a download into the cache: the body is fetched whole
/// (no `Range`) and fresh (the client's own validators are answered by the cache, not the upstream).
fn upstream_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    policy::strip_hop_by_hop(&mut headers);
    for name in [
        header::HOST,
        header::RANGE,
        header::IF_RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::CACHE_CONTROL,
        header::PRAGMA,
    ] {
        headers.remove(name);
    }
    headers
}

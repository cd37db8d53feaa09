//! A programmable origin server for the cache tests: real HTTP/1.1 (plain, or TLS with a certificate from a
//! test CA) on 127.0.0.1, in the test process, one thread per connection.
//!
//! The test says what each path answers ([`Route`]: status, headers, body, a delay before the headers, a
//! rate or a hold in the middle of the body, 304 to matching validators, 206 to ranges, a request header
//! echoed into the body, a truncated body, garbage) and reads back what the origin saw: requests per path,
//! conditional ones, 304s and 206s sent, body bytes sent, and every request's headers. [`Origin::stop`] closes
//! the port (connections refused, as an upstream that is down) and [`Origin::start`] opens it again on the
//! same port. Dropping the origin stops it and joins its threads.

#![allow(dead_code)] // Not every test uses every knob.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The longest a held body waits for [`Origin::release`] before going on by itself.
const HOLD_MAX: Duration = Duration::from_secs(60);
/// Longest request head the origin reads.
const MAX_HEAD: usize = 64 * 1024;

/// What the origin does wrong on purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: a well-formed response.
    None,
    /// Announces the whole body (`Content-Length`, or chunks), sends this many bytes of it, then closes.
    Truncate(usize),
    /// Answers bytes that are not HTTP, then closes.
    Garbage,
    /// Reads the request and closes without a word.
    Close,
}

/// What the origin answers on one path.
#[derive(Clone, Debug)]
pub struct Route {
    pub status: u16,
    /// Sent as given, in order (a `Date` here replaces the origin's own).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Waited before the response head.
    pub delay: Duration,
    /// Body bytes per second (`None`: as fast as the socket takes them).
    pub rate: Option<u64>,
    /// After this many body bytes, waits for [`Origin::release`] of the path (at most [`HOLD_MAX`]).
    pub hold_at: Option<usize>,
    /// After this many body bytes, pauses this long.
    pub pause: Option<(usize, Duration)>,
    /// Answers 304 when `If-None-Match` matches the `ETag` header, or (without `If-None-Match`) when
    /// `If-Modified-Since` is not before the `Last-Modified` header. On by default.
    pub validators: bool,
    /// Answers a single `Range: bytes=…` with 206 (or 416). Off by default: a cache must fetch whole objects.
    pub ranges: bool,
    /// Appends the value of this request header (empty when absent) to the body.
    pub echo: Option<String>,
    pub fault: Fault,
    /// Sends the body chunked instead of with `Content-Length`.
    pub chunked: bool,
    /// Leaves out the `Date` header.
    pub no_date: bool,
}

impl Route {
    /// 200 with `body` and no caching headers.
    pub fn ok(body: impl Into<Vec<u8>>) -> Route {
        Route::status(200, body)
    }

    pub fn status(status: u16, body: impl Into<Vec<u8>>) -> Route {
        Route {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
            rate: None,
            hold_at: None,
            pause: None,
            validators: true,
            ranges: false,
            echo: None,
            fault: Fault::None,
            chunked: false,
            no_date: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Route {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn cache_control(self, value: &str) -> Route {
        self.header("Cache-Control", value)
    }

    /// `ETag: value` (give the quotes: `"\"v1\""`).
    pub fn etag(self, value: &str) -> Route {
        self.header("ETag", value)
    }

    pub fn last_modified(self, time: SystemTime) -> Route {
        self.header("Last-Modified", &httpdate::fmt_http_date(time))
    }

    /// `Date: time` instead of the time of sending.
    pub fn date(self, time: SystemTime) -> Route {
        self.header("Date", &httpdate::fmt_http_date(time))
    }

    pub fn expires(self, time: SystemTime) -> Route {
        self.header("Expires", &httpdate::fmt_http_date(time))
    }

    pub fn delay(mut self, delay: Duration) -> Route {
        self.delay = delay;
        self
    }

    pub fn rate(mut self, bytes_per_second: u64) -> Route {
        self.rate = Some(bytes_per_second.max(1));
        self
    }

    pub fn hold_at(mut self, offset: usize) -> Route {
        self.hold_at = Some(offset);
        self
    }

    pub fn pause(mut self, offset: usize, pause: Duration) -> Route {
        self.pause = Some((offset, pause));
        self
    }

    pub fn no_validators(mut self) -> Route {
        self.validators = false;
        self
    }

    pub fn ranges(mut self) -> Route {
        self.ranges = true;
        self
    }

    pub fn echo(mut self, request_header: &str) -> Route {
        self.echo = Some(request_header.to_string());
        self
    }

    pub fn fault(mut self, fault: Fault) -> Route {
        self.fault = fault;
        self
    }

    pub fn chunked(mut self) -> Route {
        self.chunked = true;
        self
    }

    pub fn no_date(mut self) -> Route {
        self.no_date = true;
        self
    }

    fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request as the origin read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The request target as sent (an absolute-form target is kept as is).
    pub target: String,
    /// The path, percent-decoded, without the query: the key of routes and counters.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether it carried `If-None-Match` or `If-Modified-Since`.
    pub fn is_conditional(&self) -> bool {
        self.header("if-none-match").is_some() || self.header("if-modified-since").is_some()
    }
}

/// What the origin did on one path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: usize,
    pub conditional: usize,
    pub not_modified: usize,
    pub partial: usize,
    pub body_bytes: u64,
}

#[derive(Default)]
struct Gates {
    /// Responses that reached their hold, per path.
    held: HashMap<String, usize>,
    released: HashSet<String>,
}

struct Shared {
    routes: Mutex<HashMap<String, Route>>,
    log: Mutex<Vec<Request>>,
    stats: Mutex<HashMap<String, Stats>>,
    gates: Mutex<Gates>,
    gate_changed: Condvar,
}

/// The open connections of a run: a handle on each socket (to cut it) and its thread.
type Conns = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// One listening period, between `start` and `stop`.
struct Run {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    conns: Conns,
}

/// A running origin; dropping it stops it.
pub struct Origin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The test CA's folder and its root certificate file (TLS only).
    ca: Option<(tempfile::TempDir, PathBuf)>,
    run: Option<Run>,
}

impl Origin {
    /// A plain-HTTP origin on 127.0.0.1 with an ephemeral port.
    pub fn start() -> Origin {
        Self::launch(None, None)
    }

    /// An HTTPS origin on 127.0.0.1 with an ephemeral port, its certificate (for `localhost` and 127.0.0.1)
    /// issued by a CA made for it; [`Origin::ca_file`] is that CA's root, PEM.
    pub fn start_tls() -> Origin {
        let dir = tempfile::Builder::new().prefix("relais-origin-ca-").tempdir().expect("temp folder for the CA");
        let ca_dir = dir.path().join("ca");
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let ca = provisioning::RegionalCa::init(&ca_dir, &names).expect("make a test CA");
        let root = dir.path().join("ca.pem");
        std::fs::write(&root, ca.root_cert_pem()).expect("write the CA file");
        let chain_pem = ca.gateway_cert_chain_pem().expect("the server certificate");
        let key_pem = ca.gateway_key_pem().expect("the server key");
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<_, _>>().expect("PEM certificates");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("PEM key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        Self::launch(Some(Arc::new(config)), Some((dir, root)))
    }

    fn launch(tls: Option<Arc<rustls::ServerConfig>>, ca: Option<(tempfile::TempDir, PathBuf)>) -> Origin {
        let shared = Arc::new(Shared {
            routes: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            stats: Mutex::new(HashMap::new()),
            gates: Mutex::new(Gates::default()),
            gate_changed: Condvar::new(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the origin");
        let addr = listener.local_addr().expect("origin address");
        let mut origin = Origin { shared, addr, tls, ca, run: None };
        origin.listen(listener);
        origin
    }

    fn listen(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, conns, shared, tls) = (stop.clone(), conns.clone(), self.shared.clone(), self.tls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_nodelay(true);
                    // A safety net: a connection nobody talks on for a minute ends by itself.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    // Two more handles on the socket: one for `stop` to cut it, one for the thread to close it
                    // (dropping the stream alone would not: the other handles keep the connection open).
                    let (Ok(handle), Ok(closer)) = (stream.try_clone(), stream.try_clone()) else { continue };
                    let (stop, shared, tls) = (stop.clone(), shared.clone(), tls.clone());
                    let thread = std::thread::spawn(move || {
                        let io: Option<Box<dyn ReadWrite>> = match tls {
                            Some(config) => rustls::ServerConnection::new(config)
                                .ok()
                                .map(|conn| Box::new(rustls::StreamOwned::new(conn, stream)) as Box<dyn ReadWrite>),
                            None => Some(Box::new(stream)),
                        };
                        if let Some(io) = io {
                            serve_connection(io, &shared, &stop);
                        }
                        let _ = closer.shutdown(Shutdown::Both);
                    });
                    conns.lock().expect("conns lock").push((handle, thread));
                }
                // The listener closes here: from now on connections are refused.
            })
        };
        self.run = Some(Run { stop, accept, conns });
    }

    /// Closes the port and cuts every open connection: the upstream is down. Waits for the threads.
    pub fn stop(&mut self) {
        let Some(run) = self.run.take() else { return };
        run.stop.store(true, Ordering::SeqCst);
        let _ = run.accept.join();
        // Wake responses waiting at a hold; they see the stop flag.
        self.shared.gate_changed.notify_all();
        let conns = std::mem::take(&mut *run.conns.lock().expect("conns lock"));
        for (stream, _) in &conns {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for (_, thread) in conns {
            let _ = thread.join();
        }
    }

    /// Listens again on the same port (after [`Origin::stop`]).
    pub fn start_again(&mut self) {
        assert!(self.run.is_none(), "the origin is already listening");
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot listen again on {}: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        self.listen(listener);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` for a TLS origin: what `[[cache.upstream]] url`
    /// takes.
    pub fn base(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// The test CA's root certificate, PEM (TLS origins only).
    pub fn ca_file(&self) -> &Path {
        &self.ca.as_ref().expect("not a TLS origin").1
    }

    /// What `path` answers from now on (a path without a route answers 404).
    pub fn set(&self, path: &str, route: Route) {
        self.shared.routes.lock().expect("routes lock").insert(path.to_string(), route);
    }

    pub fn stats(&self, path: &str) -> Stats {
        self.shared.stats.lock().expect("stats lock").get(path).copied().unwrap_or_default()
    }

    /// Requests received for `path`.
    pub fn count(&self, path: &str) -> usize {
        self.stats(path).requests
    }

    /// Conditional requests (`If-None-Match` or `If-Modified-Since`) received for `path`.
    pub fn conditional(&self, path: &str) -> usize {
        self.stats(path).conditional
    }

    /// Body bytes sent for `path` (304s send none).
    pub fn bytes_sent(&self, path: &str) -> u64 {
        self.stats(path).body_bytes
    }

    /// Every request for `path`, oldest first.
    pub fn requests(&self, path: &str) -> Vec<Request> {
        self.shared.log.lock().expect("log lock").iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The last request for `path`; panics if there was none.
    #[track_caller]
    pub fn last(&self, path: &str) -> Request {
        self.requests(path).pop().unwrap_or_else(|| panic!("the origin got no request for {path}"))
    }

    /// Every request, oldest first.
    pub fn all_requests(&self) -> Vec<Request> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// Waits until `n` responses on `path` have reached their hold; panics after `timeout`.
    #[track_caller]
    pub fn wait_held(&self, path: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut gates = self.shared.gates.lock().expect("gates lock");
        while gates.held.get(path).copied().unwrap_or(0) < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out after {timeout:?} waiting for the origin to hold {path}");
            gates = self.shared.gate_changed.wait_timeout(gates, left).expect("gates lock").0;
        }
    }

    /// Lets held responses on `path` go on, and later ones pass their hold without stopping.
    pub fn release(&self, path: &str) {
        self.shared.gates.lock().expect("gates lock").released.insert(path.to_string());
        self.shared.gate_changed.notify_all();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// Answers requests on one connection until it closes, a response closes it, or the origin stops.
fn serve_connection(io: Box<dyn ReadWrite>, shared: &Shared, stop: &AtomicBool) {
    let mut io = BufReader::new(io);
    while !stop.load(Ordering::SeqCst) {
        let Some(request) = read_request(&mut io) else { return };
        let keep_alive = respond(&mut **io.get_mut(), &request, shared, stop);
        if !keep_alive.unwrap_or(false) {
            let _ = io.get_mut().flush();
            return;
        }
    }
}

/// Reads a request head (and drops its body); `None` at the end of the stream or on anything malformed.
fn read_request(io: &mut BufReader<Box<dyn ReadWrite>>) -> Option<Request> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = io.read_line(&mut line).ok()?;
        if n == 0 {
            return None;
        }
        total += n;
        if total > MAX_HEAD {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // Stray CRLF between requests.
            }
            break;
        }
        lines.push(line);
    }
    let mut parts = lines[0].split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let headers: Vec<(String, String)> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    // An absolute-form target (`http://host/path`) names the same path.
    let origin_form = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target.as_str(),
    };
    let raw_path = origin_form.split(['?', '#']).next().unwrap_or("/");
    let path = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy().into_owned();
    let request = Request { method, target, path, headers };
    let length: u64 = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    if length > 0 {
        std::io::copy(&mut io.take(length), &mut std::io::sink()).ok()?;
    }
    Some(request)
}

/// Sleeps `duration` in small steps; false if the origin stopped meanwhile.
fn nap(duration: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + duration;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// Whether an `If-None-Match` list matches `etag` (weak comparison, as for GET).
fn etag_matches(list: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    list.split(',').any(|t| t.trim() == "*" || strip(t) == strip(etag))
}

/// A single `bytes=a-b`, `bytes=a-` or `bytes=-n` against a body of `len` bytes: `Some(Ok(start..end))`,
/// `Some(Err(()))` when unsatisfiable, `None` when not a range the origin understands.
fn parse_range(value: &str, len: usize) -> Option<Result<std::ops::Range<usize>, ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: usize = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        return Some(Ok(len - n.min(len)..len));
    }
    let start: usize = a.parse().ok()?;
    let end = if b.is_empty() { len } else { b.parse::<usize>().ok()?.saturating_add(1).min(len) };
    if start >= len || end <= start {
        return Some(Err(()));
    }
    Some(Ok(start..end))
}

/// Writes the response to `request`; `Ok(true)` if the connection may carry another request.
fn respond(io: &mut dyn ReadWrite, request: &Request, shared: &Shared, stop: &AtomicBool) -> std::io::Result<bool> {
    let route = shared
        .routes
        .lock()
        .expect("routes lock")
        .get(&request.path)
        .cloned()
        .unwrap_or_else(|| Route::status(404, "pas de route ici").no_validators());
    shared.log.lock().expect("log lock").push(request.clone());
    {
        let mut stats = shared.stats.lock().expect("stats lock");
        let stats = stats.entry(request.path.clone()).or_default();
        stats.requests += 1;
        if request.is_conditional() {
            stats.conditional += 1;
        }
    }
    if !route.delay.is_zero() && !nap(route.delay, stop) {
        return Ok(false);
    }
    match route.fault {
        Fault::Close => return Ok(false),
        Fault::Garbage => {
            io.write_all(b"\x00\x01\x02 ceci n'est pas du HTTP \xff\xfe\r\n\r\n\x16\x03\x01 garbage\r\n")?;
            io.flush()?;
            return Ok(false);
        }
        Fault::None | Fault::Truncate(_) => {}
    }

    let mut body = route.body.clone();
    if let Some(name) = &route.echo {
        body.extend_from_slice(request.header(name).unwrap_or("").as_bytes());
    }
    let mut status = route.status;
    let mut extra: Vec<(String, String)> = Vec::new();
    let mut with_body = request.method != "HEAD";

    if route.validators && status == 200 {
        let etag = route.header_value("etag");
        let last_modified = route.header_value("last-modified").and_then(|v| httpdate::parse_http_date(v).ok());
        let not_modified = match (request.header("if-none-match"), etag) {
            (Some(list), Some(etag)) => etag_matches(list, etag),
            (Some(_), None) => false,
            (None, _) => match (request.header("if-modified-since"), last_modified) {
                (Some(since), Some(modified)) => httpdate::parse_http_date(since).is_ok_and(|since| modified <= since),
                _ => false,
            },
        };
        if not_modified {
            status = 304;
            with_body = false;
            shared.stats.lock().expect("stats lock").entry(request.path.clone()).or_default().not_modified += 1;
        }
    }
    if route.ranges && status == 200 {
        if let Some(range) = request.header("range").and_then(|v| parse_range(v, body.len())) {
            let len = body.len();
            match range {
                Ok(range) => {
                    extra.push(("Content-Range".into(), format!("bytes {}-{}/{len}", range.start, range.end - 1)));
                    body = body[range].to_vec();
                    status = 206;
                }
                Err(()) => {
                    extra.push(("Content-Range".into(), format!("bytes */{len}")));
                    body = Vec::new();
                    status = 416;
                }
            }
            shared.stats.lock().expect("stats lock").entry(request.path.clone()).or_default().partial += 1;
        }
    }
    if route.ranges && status == 200 {
        extra.push(("Accept-Ranges".into(), "bytes".into()));
    }

    let closing = matches!(route.fault, Fault::Truncate(_))
        || request.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if !route.no_date && route.header_value("date").is_none() {
        head.push_str(&format!("Date: {}\r\n", httpdate::fmt_http_date(SystemTime::now())));
    }
    for (name, value) in route.headers.iter().chain(&extra) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let chunked = route.chunked && status != 304;
    if status != 304 {
        if chunked {
            head.push_str("Transfer-Encoding: chunked\r\n");
        } else {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
    }
    if closing {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes())?;
    io.flush()?;
    if !with_body || status == 304 {
        return Ok(!closing);
    }

    let send_len = match route.fault {
        Fault::Truncate(n) => n.min(body.len()),
        _ => body.len(),
    };
    let mut events: Vec<(usize, Option<Duration>)> = Vec::new(); // (offset, Some(pause) | None = hold)
    if let Some(at) = route.hold_at {
        events.push((at.min(send_len), None));
    }
    if let Some((at, pause)) = route.pause {
        events.push((at.min(send_len), Some(pause)));
    }
    events.sort_by_key(|(at, _)| *at);
    let mut sent = 0;
    for (at, what) in events {
        if !send_paced(io, &body[sent..at], chunked, route.rate, &request.path, shared, stop)? {
            return Ok(false);
        }
        sent = at;
        io.flush()?;
        let go_on = match what {
            Some(pause) => nap(pause, stop),
            None => hold(&request.path, shared, stop),
        };
        if !go_on {
            return Ok(false);
        }
    }
    if !send_paced(io, &body[sent..send_len], chunked, route.rate, &request.path, shared, stop)? {
        return Ok(false);
    }
    if send_len < body.len() {
        // Truncated: what was announced never comes; the connection just ends.
        io.flush()?;
        return Ok(false);
    }
    if chunked {
        io.write_all(b"0\r\n\r\n")?;
    }
    io.flush()?;
    Ok(!closing)
}

/// Sends `bytes` of a body (as chunks if `chunked`), at `rate` bytes per second if given, counting them;
/// `Ok(false)` if the origin stopped meanwhile.
fn send_paced(
    io: &mut dyn ReadWrite,
    bytes: &[u8],
    chunked: bool,
    rate: Option<u64>,
    path: &str,
    shared: &Shared,
    stop: &AtomicBool,
) -> std::io::Result<bool> {
    const TICK: Duration = Duration::from_millis(20);
    let piece = match rate {
        Some(rate) => usize::try_from((rate / 50).max(1)).unwrap_or(usize::MAX),
        None => 64 * 1024,
    };
    for part in bytes.chunks(piece) {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        if chunked {
            io.write_all(format!("{:x}\r\n", part.len()).as_bytes())?;
            io.write_all(part)?;
            io.write_all(b"\r\n")?;
        } else {
            io.write_all(part)?;
        }
        shared.stats.lock().expect("stats lock").entry(path.to_string()).or_default().body_bytes += part.len() as u64;
        if rate.is_some() {
            io.flush()?;
            if !nap(TICK, stop) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Waits at a hold until the path is released (or [`HOLD_MAX`], or the origin stops); false if it stopped.
fn hold(path: &str, shared: &Shared, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + HOLD_MAX;
    let mut gates = shared.gates.lock().expect("gates lock");
    *gates.held.entry(path.to_string()).or_default() += 1;
    shared.gate_changed.notify_all();
    while !gates.released.contains(path) {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        gates = shared.gate_changed.wait_timeout(gates, left.min(Duration::from_millis(50))).expect("gates lock").0;
    }
    true
}

/// A port on 127.0.0.1 that was free a moment ago (for a listener the test must name in a config).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

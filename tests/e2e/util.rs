//! Helpers for the end-to-end tests: a real `relais serve` in its own temp folder, HTTP clients that keep
//! a session, raw sockets for what a well-behaved client would never send, and deterministic content.
//!
//! Everything here waits with a deadline and panics with the server's recent stderr when it runs out, so a
//! broken server fails a test instead of hanging the suite.

#![allow(dead_code)] // Not every test module uses every helper.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};

/// The binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_relais");
/// Password given to the `admin` account through `RELAIS_ADMIN_PASSWORD`.
pub const ADMIN_PASSWORD: &str = "mot-de-passe-admin-e2e";

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// How long a server may take to print its `listening on` line (debug build, cold sled).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM (drain plus flush) or SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of the server's stderr are kept to explain a failure.
const STDERR_KEPT: usize = 300;

/// Quotas off for every role, for tests that are not about quotas.
pub const NO_QUOTAS: &str = r#"
[quota]
pupil = "none"
teacher = "none"
parent = "none"
staff = "none"
admin = "none"
"#;

/// The password `Client::create_user` gives a login (at least 8 characters).
pub fn password_of(login: &str) -> String {
    format!("mdp-{login}-e2e")
}

// ---------------------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------------------

/// A running `relais serve` on 127.0.0.1 with an ephemeral port, a temp data folder and a config file.
/// Dropping it kills the process (SIGKILL) and reaps it, then removes the folder.
pub struct Relais {
    root: tempfile::TempDir,
    admin_password: Option<String>,
    child: Option<Child>,
    addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, shared with every `Client` so that they follow a restart to its new port.
    base: Arc<RwLock<String>>,
    /// The stdout lines of the current run.
    stdout: Arc<Mutex<Vec<String>>>,
    /// The last lines of stderr, over all runs.
    stderr: Arc<Mutex<VecDeque<String>>>,
    runs: u32,
    /// The network namespace the server runs in (`None`: the test's own; see [`Relais::set_netns`]).
    netns: Option<String>,
    /// What `--listen` gets: `127.0.0.1:0`, on the loopback of the namespace when there is one.
    listen: String,
    /// The address the current run printed, inside its namespace (the same as `addr` without one).
    inner: SocketAddr,
    /// The host's way into the namespace; `addr` and every client go through it.
    forward: Option<crate::netns::Forward>,
}

impl Relais {
    /// Starts a server with `config_toml` and `RELAIS_ADMIN_PASSWORD` set to [`ADMIN_PASSWORD`].
    pub fn start(config_toml: &str) -> Relais {
        Self::start_with(config_toml, Some(ADMIN_PASSWORD))
    }

    /// Starts a server; without an admin password the server must make one up and print it.
    pub fn start_with(config_toml: &str, admin_password: Option<&str>) -> Relais {
        let root = tempfile::Builder::new().prefix("relais-e2e-").tempdir().expect("create a temp folder");
        std::fs::create_dir(root.path().join("data")).expect("create the data folder");
        std::fs::write(root.path().join("relais.toml"), config_toml).expect("write the config");
        let mut relais = Relais {
            root,
            admin_password: admin_password.map(str::to_string),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base: Arc::new(RwLock::new(String::new())),
            stdout: Arc::new(Mutex::new(Vec::new())),
            stderr: Arc::new(Mutex::new(VecDeque::new())),
            runs: 0,
            netns: None,
            listen: "127.0.0.1:0".to_string(),
            inner: SocketAddr::from(([127, 0, 0, 1], 0)),
            forward: None,
        };
        relais.spawn();
        relais
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.path().join("relais.toml")
    }

    /// The address the current run listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.read().expect("base lock"), path)
    }

    pub fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("the server is not running");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"))
    }

    /// The stdout lines of the current run so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    /// The last lines the server wrote on stderr (all runs), for failure messages.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().expect("stderr lock");
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// A `relais serve` command on this server's data folder and config (in its namespace, if it has one), for
    /// a second instance.
    pub fn serve_command(&self) -> Command {
        let mut cmd = crate::netns::command(self.netns.as_deref(), BIN);
        cmd.arg("serve")
            .arg("--data")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(&self.listen)
            .arg("--config")
            .arg(self.config_path());
        cmd.env_remove("RELAIS_ADMIN_PASSWORD");
        if let Some(password) = &self.admin_password {
            cmd.env("RELAIS_ADMIN_PASSWORD", password);
        }
        cmd
    }

    /// Spawns the server and waits for its `listening on http://…` (or `https://…`) line.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn while a server is running");
        self.runs += 1;
        let mut cmd = self.serve_command();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");

        let lines = Arc::new(Mutex::new(Vec::new()));
        self.stdout = lines.clone();
        let (tx, rx) = mpsc::channel::<Option<String>>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // `listening on SCHEME://ADDR`, sent on as `SCHEME://ADDR`.
                let listening = line.split("listening on ").nth(1).map(|s| s.trim().to_string());
                lines.lock().expect("stdout lock").push(line);
                if let Some(addr) = listening {
                    let _ = tx.send(Some(addr));
                }
            }
            let _ = tx.send(None);
        });
        let tail = self.stderr.clone();
        let run = self.runs;
        let stderr_thread = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut tail = tail.lock().expect("stderr lock");
                if tail.len() == STDERR_KEPT {
                    tail.pop_front();
                }
                tail.push_back(format!("[run {run}] {line}"));
            }
        });

        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(url)) => {
                let (scheme, addr) = url.split_once("://").unwrap_or(("?", &url));
                let addr = addr.trim_end_matches('/');
                assert!(scheme == "http" || scheme == "https", "`listening on {url}`: unknown scheme");
                self.inner =
                    addr.parse().unwrap_or_else(|e| panic!("cannot parse the address in `listening on {url}`: {e}"));
                self.addr = self.reach(self.inner);
                *self.base.write().expect("base lock") = format!("{scheme}://{}", self.addr);
            }
            Ok(None) => {
                let status = self.wait_exit(Duration::from_secs(5));
                // stderr reaches its end once the process is gone; wait for the last lines.
                let _ = stderr_thread.join();
                panic!(
                    "relais exited ({status:?}) before printing `listening on`\nstdout:\n{}\nstderr:\n{}",
                    self.stdout_lines().join("\n"),
                    self.stderr_tail()
                );
            }
            Err(_) => {
                self.kill9();
                panic!("relais did not print `listening on` within {START_TIMEOUT:?}\nstderr:\n{}", self.stderr_tail());
            }
        }
    }

    /// The address the test connects to for a server listening on `inner`: itself, or the forwarder into the
    /// server's namespace (made at the first run, pointed at each new run's port).
    fn reach(&mut self, inner: SocketAddr) -> SocketAddr {
        let Some(ns) = self.netns.clone() else { return inner };
        match &self.forward {
            Some(forward) => forward.retarget(inner),
            None => match crate::netns::Forward::start(&ns, inner) {
                Ok(forward) => self.forward = Some(forward),
                Err(e) => {
                    self.kill9();
                    panic!("cannot reach relais inside namespace {ns}: {e}");
                }
            },
        }
        self.forward.as_ref().map_or(inner, crate::netns::Forward::addr)
    }

    /// Starts the server again on the same data folder and config (after `stop` or `kill9`).
    pub fn respawn(&mut self) {
        self.spawn();
    }

    /// SIGTERM, wait for the exit, start again. Clients follow to the new port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Sends a signal to the running server.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap_or_else(|e| panic!("cannot send {signal} to relais: {e}"));
    }

    /// SIGTERM, then waits for the exit and returns its status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the running server to exit; panics (after killing it) if it outlives `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the server is not running");
        match wait_child(&mut child, timeout) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("relais did not exit within {timeout:?}\nstderr:\n{}", self.stderr_tail());
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A client without a session.
    pub fn anonymous(&self) -> Client {
        Client::new(self.base.clone())
    }

    /// A client logged in as `login`; panics unless the login succeeds.
    pub fn login(&self, login: &str, password: &str) -> Client {
        let mut client = self.anonymous();
        let resp = client.login(login, password);
        assert_eq!(resp.status, 200, "login of {login} failed: {resp:?}");
        client
    }

    /// A client logged in as `admin`.
    pub fn admin(&self) -> Client {
        let password = self.admin_password.clone().expect("this server's admin password is not known");
        self.login("admin", &password)
    }

    /// Creates a user through `admin` and returns a client logged in as them.
    pub fn user(&self, admin: &Client, login: &str, role: &str, classes: &[&str], children: &[&str]) -> Client {
        admin.create_user(login, role, classes, children);
        self.login(login, &password_of(login))
    }

    /// Sum of the sizes of the files under `DATA/blobs`: the bytes the content store holds.
    pub fn blob_bytes(&self) -> u64 {
        dir_bytes(&self.data_dir().join("blobs"))
    }
}

impl Drop for Relais {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- relais stderr (last lines) ----\n{}\n----", self.stderr_tail());
        }
        self.kill9();
    }
}

/// Polls `child` until it exits or `timeout` passes.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion within `timeout` (killing it otherwise) and returns its exit status
/// (`None` if it had to be killed), stdout and stderr.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> (Option<ExitStatus>, String, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn command");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = out_thread.join().unwrap_or_default();
    let err = err_thread.join().unwrap_or_default();
    (status, out, err)
}

/// Sum of the sizes of the regular files under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += dir_bytes(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// Polls `check` every 20 ms until it is true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------------------

/// A response read whole, whatever its status.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.body);
        let shown: String = text.chars().take(500).collect();
        write!(f, "HTTP {} {:?} body({} B): {shown}", self.status, self.headers, self.body.len())
    }
}

impl Resp {
    fn from_ureq(resp: ureq::Response) -> std::io::Result<Resp> {
        let status = resp.status();
        let headers = collect_headers(&resp);
        let mut body = Vec::new();
        resp.into_reader().read_to_end(&mut body)?;
        Ok(Resp { status, headers, body })
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// Asserts the status and returns the response.
    #[track_caller]
    pub fn expect_status(self, status: u16) -> Resp {
        assert_eq!(self.status, status, "unexpected status: {self:?}");
        self
    }

    /// Asserts the body is `{"error": "<non-empty message>"}` and returns the message.
    #[track_caller]
    pub fn error_message(&self) -> String {
        let v = self.json();
        let msg = v.get("error").and_then(Value::as_str).unwrap_or_else(|| panic!("no \"error\" string: {self:?}"));
        assert!(!msg.trim().is_empty(), "empty error message: {self:?}");
        msg.to_string()
    }

    /// The ETag header, which must be a quoted 64-hex-digit blake3 hash.
    #[track_caller]
    pub fn etag(&self) -> String {
        let etag = self.header("etag").unwrap_or_else(|| panic!("no ETag: {self:?}")).to_string();
        assert_valid_etag(&etag);
        etag
    }
}

#[track_caller]
pub fn assert_valid_etag(etag: &str) {
    let hex = etag.strip_prefix('"').and_then(|s| s.strip_suffix('"'));
    let ok = hex.is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert!(ok, "ETag {etag:?} is not a quoted 64-hex-digit blake3 hash");
}

fn collect_headers(resp: &ureq::Response) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for name in resp.headers_names() {
        for value in resp.all(&name) {
            headers.push((name.clone(), value.to_string()));
        }
    }
    headers
}

/// One entry of a folder listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub modified: String,
    pub etag: Option<String>,
    pub dir: bool,
}

impl Entry {
    #[track_caller]
    fn from_json(v: &Value) -> Entry {
        let field = |k: &str| v.get(k).unwrap_or_else(|| panic!("listing entry without {k:?}: {v}"));
        Entry {
            name: field("name").as_str().unwrap_or_else(|| panic!("name is not a string: {v}")).to_string(),
            size: field("size").as_u64().unwrap_or_else(|| panic!("size is not an integer: {v}")),
            modified: field("modified").as_str().unwrap_or_else(|| panic!("modified is not a string: {v}")).to_string(),
            etag: v.get("etag").and_then(Value::as_str).map(str::to_string),
            dir: field("dir").as_bool().unwrap_or_else(|| panic!("dir is not a bool: {v}")),
        }
    }
}

/// Percent-encodes a view path for `/api/files/`, keeping the slashes (each byte outside the unreserved
/// set is encoded, so accents, spaces, `#` and `?` travel as data).
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() * 3);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/api/files/<encoded path>`.
pub fn files_url(path: &str) -> String {
    format!("/api/files/{}", encode_path(path))
}

fn agent_builder() -> ureq::AgentBuilder {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout_read(Duration::from_secs(120))
        .timeout_write(Duration::from_secs(120))
        // No pooled connections: every request is on a fresh socket, so nothing is silently retried on a
        // socket the previous server run left behind.
        .max_idle_connections(0)
        .redirects(0)
}

/// A blocking HTTP client that keeps the `relais_session` cookie and follows the server across restarts.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: Arc<RwLock<String>>,
    cookie: Option<String>,
}

impl Client {
    fn new(base: Arc<RwLock<String>>) -> Client {
        Client { agent: agent_builder().build(), base, cookie: None }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.read().expect("base lock"), path)
    }

    /// `relais_session=…` as sent in the `Cookie` header, if logged in.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// The same client with another `Cookie` header value (or none).
    pub fn with_cookie(&self, cookie: Option<&str>) -> Client {
        Client { cookie: cookie.map(str::to_string), ..self.clone() }
    }

    /// A request with the session cookie; `path` starts with `/`.
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut req = self.agent.request(method, &self.url(path));
        if let Some(cookie) = &self.cookie {
            req = req.set("Cookie", cookie);
        }
        req
    }

    /// Sends a prepared request; transport errors (refused, reset, timeout) come back as `Err`.
    pub fn try_send(req: ureq::Request, body: Option<&[u8]>) -> Result<Resp, String> {
        let result = match body {
            Some(body) => req.send_bytes(body),
            None => req.call(),
        };
        Self::finish(result)
    }

    /// Turns a ureq result into a `Resp` whatever the status.
    pub fn finish(result: Result<ureq::Response, ureq::Error>) -> Result<Resp, String> {
        let resp = match result {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
        };
        Resp::from_ureq(resp).map_err(|e| format!("reading the body: {e}"))
    }

    #[track_caller]
    pub fn send(req: ureq::Request, body: Option<&[u8]>) -> Resp {
        Self::try_send(req, body).unwrap_or_else(|e| panic!("transport error: {e}"))
    }

    /// `method path` with no body.
    #[track_caller]
    pub fn call(&self, method: &str, path: &str) -> Resp {
        Self::send(self.request(method, path), None)
    }

    #[track_caller]
    pub fn post_json(&self, path: &str, body: &Value) -> Resp {
        let req = self.request("POST", path).set("Content-Type", "application/json");
        Self::send(req, Some(body.to_string().as_bytes()))
    }

    /// `POST /api/login`; on 200 keeps the cookie.
    #[track_caller]
    pub fn login(&mut self, login: &str, password: &str) -> Resp {
        let resp = self.post_json("/api/login", &json!({ "login": login, "password": password }));
        if resp.status == 200 {
            let set_cookie =
                session_set_cookie(&resp).unwrap_or_else(|| panic!("login without relais_session cookie: {resp:?}"));
            let pair = set_cookie.split(';').next().expect("split yields one item").trim().to_string();
            self.cookie = Some(pair);
        }
        resp
    }

    #[track_caller]
    pub fn logout(&self) -> Resp {
        self.call("POST", "/api/logout")
    }

    /// `GET /api/me`, which must succeed.
    #[track_caller]
    pub fn me(&self) -> Value {
        self.call("GET", "/api/me").expect_status(200).json()
    }

    #[track_caller]
    pub fn quota_used(&self) -> u64 {
        let me = self.me();
        me["quota"]["used"].as_u64().unwrap_or_else(|| panic!("quota.used is not an integer: {me}"))
    }

    /// `POST /api/admin/users` for `login` with password [`password_of`]; must answer 201.
    #[track_caller]
    pub fn create_user(&self, login: &str, role: &str, classes: &[&str], children: &[&str]) {
        let body = json!({
            "login": login,
            "display_name": format!("Test {login}"),
            "role": role,
            "password": password_of(login),
            "classes": classes,
            "children": children,
        });
        let resp = self.post_json("/api/admin/users", &body);
        assert_eq!(resp.status, 201, "creating {login} ({role}) failed: {resp:?}");
    }

    /// `PUT /api/files/<path>` with the bytes in memory.
    #[track_caller]
    pub fn put(&self, path: &str, body: &[u8]) -> Resp {
        self.try_put(path, body).unwrap_or_else(|e| panic!("PUT {path}: {e}"))
    }

    /// `PUT /api/files/<path>` with `Content-Length`, over a plain socket: a server that refuses on the
    /// headers alone (403, 507…) answers and closes before reading the body, and an HTTP library then
    /// reports the broken pipe instead of the answer. Here the writing stops and the answer is read.
    /// `Err` when there is no answer (server gone, connection cut).
    pub fn try_put(&self, path: &str, body: &[u8]) -> Result<Resp, String> {
        let mut headers = vec![("Content-Length", body.len().to_string())];
        if let Some(cookie) = &self.cookie {
            headers.push(("Cookie", cookie.clone()));
        }
        let head = raw_head("PUT", &files_url(path), &headers);
        let resp = try_raw_exchange(self.addr(), &head, body, Duration::from_secs(120))?;
        Ok(Resp { status: resp.status, headers: resp.headers, body: resp.body })
    }

    /// The server's address, from the base URL.
    pub fn addr(&self) -> SocketAddr {
        let base = self.base.read().expect("base lock");
        let addr = base.split_once("://").map_or(base.as_str(), |(_, addr)| addr);
        addr.parse().unwrap_or_else(|e| panic!("base URL {base}: {e}"))
    }

    /// The same client over TLS connections configured by `tls` (its roots decide what it trusts), for a
    /// server listening on `https://`.
    pub fn with_tls(&self, tls: Arc<rustls::ClientConfig>) -> Client {
        Client { agent: agent_builder().tls_config(tls).build(), ..self.clone() }
    }

    /// `PUT /api/files/<path>` streaming from `reader`: with `Content-Length` when `len` is given, else chunked.
    #[track_caller]
    pub fn put_reader(&self, path: &str, reader: impl Read, len: Option<u64>) -> Resp {
        let mut req = self.request("PUT", &files_url(path));
        if let Some(len) = len {
            req = req.set("Content-Length", &len.to_string());
        }
        Self::finish(req.send(reader)).unwrap_or_else(|e| panic!("transport error: {e}"))
    }

    #[track_caller]
    pub fn get(&self, path: &str) -> Resp {
        self.call("GET", &files_url(path))
    }

    /// `GET /api/files/<path>` with extra headers.
    #[track_caller]
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = self.request("GET", &files_url(path));
        for (name, value) in headers {
            req = req.set(name, value);
        }
        Self::send(req, None)
    }

    /// `GET /api/files/<path>` returning the status, headers and a reader over the body (for big files).
    #[track_caller]
    pub fn get_stream(&self, path: &str) -> (u16, Vec<(String, String)>, Box<dyn Read + Send + Sync>) {
        let resp = match self.request("GET", &files_url(path)).call() {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => panic!("transport error: {e}"),
        };
        (resp.status(), collect_headers(&resp), resp.into_reader())
    }

    #[track_caller]
    pub fn delete(&self, path: &str) -> Resp {
        self.call("DELETE", &files_url(path))
    }

    #[track_caller]
    pub fn mkdir(&self, path: &str) -> Resp {
        self.call("POST", &format!("{}?op=mkdir", files_url(path)))
    }

    /// The listing of a folder (`dir` ends with `/`), sorted by name; must answer 200.
    #[track_caller]
    pub fn list(&self, dir: &str) -> Vec<Entry> {
        assert!(dir.ends_with('/'), "a folder path ends with /: {dir}");
        let resp = self.get(dir).expect_status(200);
        let v = resp.json();
        let items = v.as_array().unwrap_or_else(|| panic!("listing of {dir} is not an array: {v}"));
        let mut entries: Vec<Entry> = items.iter().map(Entry::from_json).collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries
    }

    /// The names in a folder, sorted.
    #[track_caller]
    pub fn names(&self, dir: &str) -> Vec<String> {
        self.list(dir).into_iter().map(|e| e.name).collect()
    }

    /// Every file under `dir`, recursively: path relative to `dir` → size.
    #[track_caller]
    pub fn tree(&self, dir: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let mut todo = vec![String::new()];
        let mut visited = 0;
        while let Some(sub) = todo.pop() {
            visited += 1;
            assert!(visited < 10_000, "tree of {dir} is too deep or cyclic");
            for e in self.list(&format!("{dir}{sub}")) {
                if e.dir {
                    todo.push(format!("{sub}{}/", e.name));
                } else {
                    out.insert(format!("{sub}{}", e.name), e.size);
                }
            }
        }
        out
    }
}

/// The `Set-Cookie` header that sets `relais_session`, if any.
pub fn session_set_cookie(resp: &Resp) -> Option<String> {
    resp.header_all("set-cookie")
        .into_iter()
        .find(|c| c.trim_start().starts_with("relais_session="))
        .map(str::to_string)
}

/// What a user can observe of their space, to prove a refused request changed nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub listing: Vec<Entry>,
    pub used: u64,
    pub blob_bytes: u64,
}

impl Snapshot {
    #[track_caller]
    pub fn take(relais: &Relais, client: &Client, dir: &str) -> Snapshot {
        Snapshot { listing: client.list(dir), used: client.quota_used(), blob_bytes: relais.blob_bytes() }
    }

    /// Asserts nothing changed; the blob total may take a moment to come back if the server cleans up a
    /// half-written temporary blob after answering, so it is polled for up to 2 s.
    #[track_caller]
    pub fn assert_unchanged(&self, relais: &Relais, client: &Client, dir: &str, after: &str) {
        assert_eq!(client.list(dir), self.listing, "listing of {dir} changed after {after}");
        assert_eq!(client.quota_used(), self.used, "quota used changed after {after}");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let now = relais.blob_bytes();
            if now == self.blob_bytes {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "bytes under data/blobs went from {} to {now} after {after}",
                self.blob_bytes
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Raw HTTP over TCP
// ---------------------------------------------------------------------------------------------------------

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request head: request line, `Host`, `Connection: close`, the given headers, blank line.
pub fn raw_head(method: &str, target: &str, headers: &[(&str, String)]) -> String {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Connects with read and write timeouts of 10 s.
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to relais");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set read timeout");
    stream.set_write_timeout(Some(Duration::from_secs(10))).expect("set write timeout");
    stream.set_nodelay(true).expect("set nodelay");
    stream
}

/// Sends `head` then as much of `body` as the server takes (it may answer and close early), then reads
/// the response.
pub fn raw_exchange(addr: SocketAddr, head: &str, body: &[u8]) -> Result<RawResp, String> {
    try_raw_exchange(addr, head, body, Duration::from_secs(10))
}

/// `raw_exchange` with a read/write timeout; a refused connection is an `Err` too.
pub fn try_raw_exchange(addr: SocketAddr, head: &str, body: &[u8], timeout: Duration) -> Result<RawResp, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connecting: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // The server may answer and close before taking everything (a 431 on a huge head, a 507 on a body
    // over quota): stop writing at the first error and read what it said.
    if stream.write_all(head.as_bytes()).is_ok() {
        for chunk in body.chunks(64 * 1024) {
            if stream.write_all(chunk).is_err() {
                break;
            }
        }
    }
    RawReader::new(stream).response()
}

/// Reads HTTP/1.1 responses off a socket, keeping what it read past the current one.
pub struct RawReader {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawReader {
    pub fn new(stream: TcpStream) -> RawReader {
        RawReader { stream, buf: Vec::new() }
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    fn fill(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) => Err(format!("reading the response: {e} (got so far: {:?})", String::from_utf8_lossy(&self.buf))),
        }
    }

    /// The next response (a `100 Continue` counts as one).
    pub fn response(&mut self) -> Result<RawResp, String> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if !self.fill()? {
                return Err(format!(
                    "connection closed before a full response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let body = if (100..200).contains(&status) || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = header("content-length") {
            let len: usize = len.parse().map_err(|_| format!("bad Content-Length {len:?}"))?;
            while self.buf.len() < len {
                if !self.fill()? {
                    return Err(format!("connection closed after {} of {len} body bytes", self.buf.len()));
                }
            }
            self.buf.drain(..len).collect()
        } else if header("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
            self.chunked_body()?
        } else {
            while self.fill()? {}
            std::mem::take(&mut self.buf)
        };
        Ok(RawResp { status, headers, body })
    }

    fn chunked_body(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                if !self.fill()? {
                    return Err("connection closed inside a chunked body".into());
                }
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                if !self.fill()? {
                    return Err("connection closed inside a chunk".into());
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    /// Whether the server closed the connection within `timeout` (EOF or reset); bytes it sends meanwhile
    /// (e.g. a 408 response) are collected into `self.buf`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).expect("set read timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }

    /// What was read and not consumed.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// `body` in the chunked transfer coding, 64 KiB chunks.
pub fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1024);
    for chunk in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------------------
// Deterministic content
// ---------------------------------------------------------------------------------------------------------

/// `len` pseudo-random bytes determined by `seed`, produced on the fly (a 200 MiB upload never sits in
/// memory). Internally generated in fixed blocks, so the stream does not depend on how it is read.
pub struct Gen {
    rng: StdRng,
    remaining: u64,
    block: Vec<u8>,
    pos: usize,
}

const GEN_BLOCK: usize = 64 * 1024;

impl Gen {
    pub fn new(seed: u64, len: u64) -> Gen {
        Gen { rng: StdRng::seed_from_u64(seed), remaining: len, block: vec![0; GEN_BLOCK], pos: GEN_BLOCK }
    }
}

impl Read for Gen {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.pos == GEN_BLOCK {
            self.rng.fill_bytes(&mut self.block);
            self.pos = 0;
        }
        let n = out.len().min(GEN_BLOCK - self.pos).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// The bytes of `Gen::new(seed, len)`, in memory.
pub fn content(seed: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(usize::try_from(len).expect("fits in memory"));
    Gen::new(seed, len).read_to_end(&mut out).expect("reading a Gen cannot fail");
    out
}

/// Asserts that `actual` yields exactly the bytes of `Gen::new(seed, len)`, comparing block by block.
#[track_caller]
pub fn assert_stream_matches(mut actual: impl Read, seed: u64, len: u64, what: &str) {
    let mut expected = Gen::new(seed, len);
    let mut got = vec![0u8; 256 * 1024];
    let mut want = vec![0u8; 256 * 1024];
    let mut offset: u64 = 0;
    loop {
        let n = match actual.read(&mut got) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("{what}: reading failed at offset {offset}: {e}"),
        };
        if n == 0 {
            break;
        }
        assert!(offset + n as u64 <= len, "{what}: more than the {len} bytes expected");
        expected.read_exact(&mut want[..n]).expect("Gen has the bytes");
        if got[..n] != want[..n] {
            let i = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b).unwrap_or(0);
            panic!("{what}: content differs at offset {}", offset + i as u64);
        }
        offset += n as u64;
    }
    assert_eq!(offset, len, "{what}: got {offset} bytes, expected {len}");
}

// ---------------------------------------------------------------------------------------------------------
// Zip files (checked with python3's zipfile: no zip crate among the dev-dependencies)
// ---------------------------------------------------------------------------------------------------------

/// The files in a zip archive: name → content. Panics if python3 finds the archive corrupt.
pub fn unzip(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("archive.zip");
    std::fs::write(&path, archive).expect("write the archive");
    let script = "import json, sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1])\n\
                  bad = z.testzip()\n\
                  assert bad is None, 'corrupt member: %s' % bad\n\
                  print(json.dumps({i.filename: z.read(i).hex() for i in z.infolist() if not i.is_dir()}))\n";
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).arg(&path);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "python3 zipfile rejects the archive: {err}");
    let map: BTreeMap<String, String> = serde_json::from_str(out.trim()).expect("python3 prints JSON");
    map.into_iter().map(|(name, hex)| (name, from_hex(&hex))).collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("python prints hex")).collect()
}

/// Peak resident memory of a process in KiB (`VmHWM` in /proc), if readable.
pub fn peak_rss_kib(pid: Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------------------
// A box set up before its first start, and the regional gateway
// ---------------------------------------------------------------------------------------------------------

impl Relais {
    /// A box whose folders exist (`root/data`, `root/relais.toml` with `config_toml`) but which is not running:
    /// prepare its data folder (e.g. `relais provision apply`), then start it with [`Relais::respawn`].
    pub fn unstarted(config_toml: &str, admin_password: Option<&str>) -> Relais {
        let root = tempfile::Builder::new().prefix("relais-e2e-").tempdir().expect("create a temp folder");
        std::fs::create_dir(root.path().join("data")).expect("create the data folder");
        std::fs::write(root.path().join("relais.toml"), config_toml).expect("write the config");
        Relais {
            root,
            admin_password: admin_password.map(str::to_string),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base: Arc::new(RwLock::new(String::new())),
            stdout: Arc::new(Mutex::new(Vec::new())),
            stderr: Arc::new(Mutex::new(VecDeque::new())),
            runs: 0,
            netns: None,
            listen: "127.0.0.1:0".to_string(),
            inner: SocketAddr::from(([127, 0, 0, 1], 0)),
            forward: None,
        }
    }

    /// From its next start, the server runs in network namespace `ns` (a `link::Link`'s box side) and
    /// listens on `listen` there (`127.0.0.1:0`: that namespace's own loopback). The test reaches it through a
    /// forwarder on the host's 127.0.0.1 ([`crate::netns::Forward`]), so `addr`, `url` and every client work as
    /// usual; [`Relais::inner_addr`] is the address inside. Needs root.
    pub fn set_netns(&mut self, ns: &str, listen: &str) {
        assert!(self.child.is_none(), "set_netns while the server runs");
        self.netns = Some(ns.to_string());
        self.listen = listen.to_string();
        self.forward = None;
    }

    /// The address the current run listens on inside its namespace (the same as [`Relais::addr`] without one).
    pub fn inner_addr(&self) -> SocketAddr {
        self.inner
    }
}

/// Runs `relais ARGS…` to completion (60 s at most) and returns its exit code (`None` if killed), stdout and
/// stderr.
pub fn relais_cli<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RELAIS_ADMIN_PASSWORD");
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(60));
    (status.and_then(|s| s.code()), out, err)
}

/// A regional gateway: `relais region init` in a temp folder, then `relais region serve` on 127.0.0.1 with an
/// ephemeral port (HTTPS). Dropping it kills the server and removes the folder.
pub struct Region {
    root: tempfile::TempDir,
    child: Option<Child>,
    addr: Option<SocketAddr>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// The network namespace the gateway runs in and the address it listens on there (see [`Region::init_in`]).
    netns: Option<String>,
    ip: std::net::IpAddr,
    /// The host's way into the namespace, for [`Region::client`].
    forward: Option<crate::netns::Forward>,
}

impl Region {
    /// Initialises the region's CA (gateway names: localhost, 127.0.0.1, ::1). `config_toml`, if given, is
    /// the region's configuration (e.g. a short `[region] certificate_validity`).
    pub fn init(config_toml: Option<&str>) -> Region {
        Self::init_with(config_toml, None)
    }

    /// A gateway that will serve inside network namespace `ns` (a `link::Link`'s gateway side) on `ip` there:
    /// its certificate names `ip` (and 127.0.0.1 and localhost, for the test's way in), its bundles point boxes
    /// at `https://IP:PORT`, and [`Region::client`] reaches it through a forwarder on the host. Needs root.
    pub fn init_in(config_toml: Option<&str>, ns: &str, ip: std::net::IpAddr) -> Region {
        Self::init_with(config_toml, Some((ns, ip)))
    }

    fn init_with(config_toml: Option<&str>, place: Option<(&str, std::net::IpAddr)>) -> Region {
        let root = tempfile::Builder::new().prefix("relais-region-e2e-").tempdir().expect("create a temp folder");
        let region = Region {
            root,
            child: None,
            addr: None,
            stderr: Arc::new(Mutex::new(VecDeque::new())),
            netns: place.map(|(ns, _)| ns.to_string()),
            ip: place.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |(_, ip)| ip),
            forward: None,
        };
        if let Some(config) = config_toml {
            std::fs::write(region.config_path(), config).expect("write the region config");
        }
        let data = region.data_dir();
        let mut args: Vec<std::ffi::OsString> = vec!["region".into(), "init".into(), "--data".into(), data.into()];
        if let Some((_, ip)) = place {
            for host in [ip.to_string(), "127.0.0.1".into(), "localhost".into()] {
                args.extend(["--host".into(), host.into()]);
            }
        }
        let (code, out, err) = relais_cli(&args);
        assert_eq!(code, Some(0), "relais region init failed\nstdout:\n{out}\nstderr:\n{err}");
        region
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("region")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.path().join("region.toml")
    }

    /// The CA folder `relais region init` made.
    pub fn ca_dir(&self) -> PathBuf {
        self.data_dir().join("ca")
    }

    /// `https://IP:PORT` of the running gateway, as boxes reach it (127.0.0.1, or its namespace address).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr.expect("the region is not serving"))
    }

    pub fn stderr_tail(&self) -> String {
        self.stderr.lock().expect("stderr lock").iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Starts `relais region serve` (with the region's config if `init` was given one) and waits for its
    /// `listening on https://…` line. A second start (after `kill`) listens on the same address.
    pub fn serve(&mut self) {
        assert!(self.child.is_none(), "the region is already serving");
        let mut cmd = crate::netns::command(self.netns.as_deref(), BIN);
        // Back on the same port after a kill: the boxes' configuration names it.
        let listen = self.addr.map_or_else(|| SocketAddr::new(self.ip, 0).to_string(), |a| a.to_string());
        cmd.arg("region").arg("serve").arg("--data").arg(self.data_dir()).arg("--listen").arg(listen);
        if self.config_path().exists() {
            cmd.arg("--config").arg(self.config_path());
        }
        cmd.env("RELAIS_ADMIN_PASSWORD", ADMIN_PASSWORD);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel::<Option<String>>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on https://").nth(1) {
                    let _ = tx.send(Some(addr.trim().trim_end_matches('/').to_string()));
                }
            }
            let _ = tx.send(None);
        });
        let tail = self.stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut tail = tail.lock().expect("stderr lock");
                if tail.len() == STDERR_KEPT {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(addr)) => {
                let parsed =
                    addr.parse().unwrap_or_else(|e| panic!("bad address in `listening on https://{addr}`: {e}"));
                self.addr = Some(parsed);
                if let Some(ns) = self.netns.clone() {
                    match &self.forward {
                        Some(forward) => forward.retarget(parsed),
                        None => match crate::netns::Forward::start(&ns, parsed) {
                            Ok(forward) => self.forward = Some(forward),
                            Err(e) => {
                                self.kill();
                                panic!("cannot reach the gateway inside namespace {ns}: {e}");
                            }
                        },
                    }
                }
            }
            other => {
                self.kill();
                std::thread::sleep(Duration::from_millis(200));
                panic!("relais region serve did not start ({other:?})\nstderr:\n{}", self.stderr_tail());
            }
        }
    }

    /// A portal client of the gateway (users at home), trusting the regional root.
    pub fn client(&self) -> Client {
        let ca = provisioning::RegionalCa::open(&self.ca_dir()).expect("the region's CA");
        let tls = relais::enroll::client::tls_config(ca.root_cert_pem(), None).expect("TLS client config");
        // Into a namespace through the forwarder: the certificate names 127.0.0.1 too.
        let url = self.forward.as_ref().map_or_else(|| self.url(), |f| format!("https://{}", f.addr()));
        Client::new(Arc::new(RwLock::new(url))).with_tls(Arc::new(tls))
    }

    /// SIGKILL and reap the gateway.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `relais region bundle` for `uai`, pointing at the running gateway (or at `url` if given), with
    /// `directory` exports; returns the bundle's path. Panics unless it succeeds.
    pub fn bundle(&self, uai: &str, name: &str, url: Option<&str>, directory: &[PathBuf]) -> PathBuf {
        let out = self.root.path().join(format!("bundle-{uai}-{}.zip", rand::random::<u32>()));
        let url = url.map_or_else(|| self.url(), str::to_string);
        let data = self.data_dir();
        let mut args: Vec<&OsStr> = ["region", "bundle", "--data"].map(OsStr::new).to_vec();
        args.push(data.as_os_str());
        for (flag, value) in [("--uai", uai), ("--name", name), ("--url", url.as_str())] {
            args.extend([OsStr::new(flag), OsStr::new(value)]);
        }
        args.extend([OsStr::new("--out"), out.as_os_str()]);
        if !directory.is_empty() {
            args.push(OsStr::new("--directory"));
            args.extend(directory.iter().map(|p| p.as_os_str()));
        }
        let (code, stdout, stderr) = relais_cli(&args);
        assert_eq!(code, Some(0), "relais region bundle failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
        out
    }

    /// `relais region revoke --uai UAI`; panics unless it succeeds.
    pub fn revoke(&self, uai: &str) {
        let data = self.data_dir();
        let args =
            [OsStr::new("region"), "revoke".as_ref(), "--data".as_ref(), data.as_ref(), "--uai".as_ref(), uai.as_ref()];
        let (code, out, err) = relais_cli(args);
        assert_eq!(code, Some(0), "relais region revoke failed\nstdout:\n{out}\nstderr:\n{err}");
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- relais region stderr (last lines) ----\n{}\n----", self.stderr_tail());
        }
        self.kill();
    }
}

/// The members of a zip, in order.
pub fn zip_members(path: &Path) -> Vec<(String, Vec<u8>)> {
    let file = std::fs::File::open(path).expect("open zip");
    let mut archive = zip::ZipArchive::new(file).expect("read zip");
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).expect("member");
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("read member");
            (entry.name().expect("member name").to_string(), bytes)
        })
        .collect()
}

/// Writes a zip of `members` (for hand-made hostile archives).
pub fn write_zip(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).expect("create zip"));
    for (name, bytes) in members {
        zip.start_file(name.as_str(), zip::write::SimpleFileOptions::default()).expect("member");
        zip.write_all(bytes).expect("write member");
    }
    zip.finish().expect("finish zip");
}

//! The box's HTTPS client of the gateway's `/sync/v1/` endpoints: mutual TLS with the box certificate, the
//! regional root pinned, every byte through the uplink scheduler. Blocking (ureq): transfers run on a few
//! blocking threads, one connection each, which is what keeps a lossy 200 ms link full.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::Hash;
use crate::sync::chunk::{Manifest, MAX_CHUNK};
use crate::sync::protocol::{self, Hello, HelloReply, Pull, PullReply, Push, PushReply};
use crate::uplink::{Class, Direction, Scheduler};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest silence within one exchange: a 64 KiB chunk at 30 % of 2 Mbit/s takes under 1 s; a batch's JSON a
/// few seconds. Past this the link is taken as cut and the session ends (to be resumed).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: the gateway answered {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error("{url}: unexpected answer: {message}")]
    BadResponse { url: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Chunk(#[from] crate::sync::chunk::ChunkError),
    #[error("the box is not enrolled yet")]
    NotEnrolled,
    #[error("box identity: {0}")]
    Identity(String),
    #[error("stopped")]
    Stopped,
}

impl SyncError {
    /// Whether the gateway refused the box itself (certificate revoked or expired): retrying will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SyncError::Status { status: 401 | 403, .. })
    }
}

/// Longest pause after which a connection is used again. The gateway closes a connection that waits longer
/// than its `limits.header_timeout` (30 s by default) for a request, and a request sent just as it does fails:
/// past this, a new connection is made instead.
const REUSE_IDLE: Duration = Duration::from_secs(15);

/// The congestion control of the replication's connections. They are several so that the loss on a rural
/// line does not leave it idle; with loss-based CUBIC they share the line's queue without overflowing it.
/// BBR (v1), the default of some systems (this development machine's among them), makes each of them probe
/// past its share, and the line drops what they send beyond it. Measured on the emulated 2 Mbit/s, 200 ms,
/// 1 % loss link with 4 connections: CUBIC 1.89 Mbit/s with 9 % more bytes on the wire than delivered, BBR
/// 1.84 Mbit/s with 25 % (and CUBIC on a single connection only 1.09). Where CUBIC cannot be had (not built,
/// or not allowed to the service user) the system's default stays.
const CONGESTION: &[u8] = b"cubic";

/// rustls over a socket set to [`CONGESTION`].
struct Connector(Arc<rustls::ClientConfig>);

impl ureq::TlsConnector for Connector {
    fn connect(&self, dns_name: &str, io: Box<dyn ureq::ReadWrite>) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        if let Some(socket) = io.socket() {
            if let Err(e) = socket2::SockRef::from(socket).set_tcp_congestion(CONGESTION) {
                log::debug!("replication keeps the system's congestion control: {e}");
            }
        }
        self.0.connect(dns_name, io)
    }
}

pub struct Client {
    base: String,
    scheduler: Arc<Scheduler>,
    /// Shared by every connection, so that new ones resume TLS sessions instead of exchanging certificates.
    tls: Arc<Connector>,
    /// Connections kept between requests (and between sessions, while the worker keeps this client): one
    /// agent of one connection each, with when it was last used, the most recent last. ureq's own pool cannot
    /// say how long a connection has been idle.
    idle: Mutex<Vec<(ureq::Agent, Instant)>>,
    connections: usize,
}

impl Client {
    pub fn new(base: &str, tls: rustls::ClientConfig, connections: usize, scheduler: Arc<Scheduler>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            scheduler,
            tls: Arc::new(Connector(Arc::new(tls))),
            idle: Mutex::new(Vec::new()),
            connections: connections.max(1),
        }
    }

    /// Runs one exchange on the most recently used idle connection, or a new one when none was used within
    /// [`REUSE_IDLE`]; `exchange` reads the whole answer, and the connection is kept only if it succeeded.
    fn exchange<T>(&self, exchange: impl FnOnce(&ureq::Agent) -> Result<T, SyncError>) -> Result<T, SyncError> {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            match idle.pop() {
                Some((agent, at)) if at.elapsed() < REUSE_IDLE => Some(agent),
                Some(_) => {
                    idle.clear(); // the others have idled longer still
                    None
                }
                None => None,
            }
        };
        let agent = reused.unwrap_or_else(|| {
            ureq::AgentBuilder::new()
                .tls_connector(self.tls.clone())
                .https_only(true)
                .timeout_connect(CONNECT_TIMEOUT)
                .timeout_read(EXCHANGE_TIMEOUT)
                .timeout_write(EXCHANGE_TIMEOUT)
                .max_idle_connections(1)
                .max_idle_connections_per_host(1)
                .redirects(0)
                .build()
        });
        let result = exchange(&agent);
        if result.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push((agent, Instant::now()));
            if idle.len() > self.connections {
                idle.remove(0);
            }
        }
        result
    }

    fn url(&self, op: &str) -> String {
        format!("{}{}{op}", self.base, protocol::PREFIX)
    }

    pub fn hello(&self, hello: &Hello) -> Result<HelloReply, SyncError> {
        self.post_json("hello", hello)
    }

    pub fn push(&self, push: &Push) -> Result<PushReply, SyncError> {
        self.post_json("push", push)
    }

    pub fn pull(&self, pull: &Pull) -> Result<PullReply, SyncError> {
        self.post_json("pull", pull)
    }

    /// Which of these whole files the region holds already.
    pub fn have(&self, have: &protocol::Have) -> Result<protocol::Have, SyncError> {
        self.post_json("have", have)
    }

    /// Offers many files at once: `framed` holds, per file, its hash and its manifest (whole, a delta, or
    /// nothing to name the one offered before); the gateway answers each (see `protocol::Offer`).
    pub fn offer(&self, framed: &[u8]) -> Result<protocol::OfferReply, SyncError> {
        let url = self.url("contents");
        self.scheduler.acquire(Class::Replication, Direction::Up, framed.len() as u64);
        self.exchange(|agent| {
            let response = agent
                .post(&url)
                .set("Content-Type", "application/octet-stream")
                .send_bytes(framed)
                .map_err(|e| classify(&url, e))?;
            self.read_json(&url, response)
        })
    }

    /// The manifests of files the last pull offered, each as a delta against its base when given (and the
    /// gateway holds it), in the order asked.
    pub fn manifests(&self, files: &[(Hash, Option<&Manifest>)]) -> Result<Vec<Manifest>, SyncError> {
        let url = self.url("manifests");
        let ask = protocol::ManifestAsk {
            files: files
                .iter()
                .map(|(file, base)| protocol::Wanted { file: file.to_hex(), base: base.map(|b| b.file.to_hex()) })
                .collect(),
        };
        let body = serde_json::to_vec(&ask)
            .map_err(|e| SyncError::BadResponse { url: url.clone(), message: e.to_string() })?;
        self.scheduler.acquire(Class::Replication, Direction::Up, body.len() as u64);
        let mut framed = self.exchange(|agent| {
            let response = agent
                .post(&url)
                .set("Content-Type", "application/json")
                .send_bytes(&body)
                .map_err(|e| classify(&url, e))?;
            self.read_bytes(&url, response, protocol::MAX_JSON)
        })?;
        let bad = |message: String| SyncError::BadResponse { url: url.clone(), message };
        let frames = protocol::unframe(&mut framed, protocol::MAX_JSON).map_err(bad)?;
        if !framed.is_empty() || frames.len() != files.len() {
            return Err(bad(format!("{} manifests for {} files", frames.len(), files.len())));
        }
        let mut out = Vec::with_capacity(frames.len());
        for ((file, base), (hash, bytes)) in files.iter().zip(frames) {
            // A whole manifest when the gateway no longer holds the base.
            let manifest = Manifest::decode_against(&bytes, *base).map_err(|e| bad(e.to_string()))?;
            if hash != *file || manifest.file != *file {
                return Err(bad("a manifest of another file".into()));
            }
            out.push(manifest);
        }
        Ok(out)
    }

    /// Fetches a batch of chunks; `each` gets every chunk as soon as it is whole (and checked by the
    /// caller), so a cut mid-batch keeps what arrived.
    pub fn get_chunks(
        &self,
        class: Class,
        chunks: &[(Hash, u32)],
        each: &mut dyn FnMut(Hash, Vec<u8>) -> Result<(), SyncError>,
    ) -> Result<(), SyncError> {
        let url = self.url("chunks");
        let list = protocol::ChunkList { chunks: chunks.iter().map(|(h, _)| h.to_hex()).collect() };
        let body = serde_json::to_vec(&list)
            .map_err(|e| SyncError::BadResponse { url: url.clone(), message: e.to_string() })?;
        self.scheduler.acquire(Class::Replication, Direction::Up, body.len() as u64);
        self.exchange(|agent| {
            let response = agent
                .post(&url)
                .set("Content-Type", "application/json")
                .send_bytes(&body)
                .map_err(|e| classify(&url, e))?;
            let mut reader = response.into_reader();
            let mut buf = Vec::with_capacity(64 << 10);
            let mut piece = vec![0u8; 16 << 10];
            loop {
                // The scheduler paces reading; TCP's window then paces the sender.
                self.scheduler.acquire(class, Direction::Down, piece.len() as u64);
                let n = reader
                    .read(&mut piece)
                    .map_err(|e| SyncError::Transport { url: url.clone(), message: e.to_string() })?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&piece[..n]);
                let whole = protocol::unframe(&mut buf, MAX_CHUNK as usize)
                    .map_err(|message| SyncError::BadResponse { url: url.clone(), message })?;
                for (hash, bytes) in whole {
                    each(hash, bytes)?;
                }
            }
            if !buf.is_empty() {
                return Err(SyncError::Transport { url: url.clone(), message: "the batch ended mid-chunk".into() });
            }
            Ok(())
        })
    }

    /// Sends a batch of framed chunks (see `protocol::frame`).
    pub fn put_chunks(&self, framed: &[u8]) -> Result<(), SyncError> {
        let url = self.url("chunks");
        self.scheduler.acquire(Class::Replication, Direction::Up, framed.len() as u64);
        self.exchange(|agent| {
            let response = agent
                .put(&url)
                .set("Content-Type", "application/octet-stream")
                .send_bytes(framed)
                .map_err(|e| classify(&url, e))?;
            // Read to its end (empty), so that the connection can serve the next batch.
            self.read_body(&url, response, protocol::MAX_JSON).map(drop)
        })
    }

    fn post_json<T: DeserializeOwned>(&self, op: &str, body: &impl Serialize) -> Result<T, SyncError> {
        let url = self.url(op);
        let body = serde_json::to_vec(body)
            .map_err(|e| SyncError::BadResponse { url: url.clone(), message: e.to_string() })?;
        self.scheduler.acquire(Class::Replication, Direction::Up, body.len() as u64);
        self.exchange(|agent| {
            let response = agent
                .post(&url)
                .set("Content-Type", "application/json")
                .send_bytes(&body)
                .map_err(|e| classify(&url, e))?;
            self.read_json(&url, response)
        })
    }

    fn read_json<T: DeserializeOwned>(&self, url: &str, response: ureq::Response) -> Result<T, SyncError> {
        let bytes = self.read_bytes(url, response, protocol::MAX_JSON)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SyncError::BadResponse { url: url.to_owned(), message: e.to_string() })
    }

    /// A body counted against the downlink budget once read (its size is not known before).
    fn read_bytes(&self, url: &str, response: ureq::Response, limit: usize) -> Result<Vec<u8>, SyncError> {
        let bytes = self.read_body(url, response, limit)?;
        self.scheduler.acquire(Class::Replication, Direction::Down, bytes.len() as u64);
        Ok(bytes)
    }

    fn read_body(&self, url: &str, response: ureq::Response, limit: usize) -> Result<Vec<u8>, SyncError> {
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| SyncError::Transport { url: url.to_owned(), message: e.to_string() })?;
        if bytes.len() > limit {
            return Err(SyncError::BadResponse { url: url.to_owned(), message: "answer too large".into() });
        }
        Ok(bytes)
    }
}

fn classify(url: &str, error: ureq::Error) -> SyncError {
    match error {
        ureq::Error::Status(status, response) => {
            let text = response.into_string().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(300).collect());
            SyncError::Status { url: url.to_owned(), status, message }
        }
        ureq::Error::Transport(t) => {
            let cause = std::error::Error::source(&t).map(|s| format!(": {s}")).unwrap_or_default();
            SyncError::Transport { url: url.to_owned(), message: format!("{}{cause}", t.kind()) }
        }
    }
}

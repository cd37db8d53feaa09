//! The control socket: how `relais status` and `relais backup` reach a running daemon.
//!
//! The daemon owns its data folder (sled allows one process), so a technician command cannot open the store
//! while it serves; it asks the daemon instead, over `<data>/relais.sock`. The socket is the access control:
//! mode 0600 (the service user; root passes anyway), and each connection's peer credentials are checked
//! again, so a looser mode set by hand does not open it to every local account. It speaks plain HTTP/1.1,
//! which keeps both ends on the same hyper code as the portal.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::app::App;
use crate::backup;
use crate::http::{zipstream, Body, Response};

/// The socket's name inside the data folder.
pub const SOCKET: &str = "relais.sock";
/// Response header of `GET /backup`: the bytes of content it will copy, for the progress bar.
pub const BACKUP_BYTES: &str = "x-relais-backup-bytes";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path}: permission denied; run this command as root or as the user the relais service runs as")]
    Denied { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the running relais did not answer properly: {0}")]
    Protocol(String),
    #[error("the running relais refused: {0}")]
    Refused(String),
}

pub fn socket_path(data: &Path) -> PathBuf {
    data.join(SOCKET)
}

/// Listens on the control socket until `stop` turns true. A socket left by a killed daemon is replaced: the
/// caller holds the data folder's lock, so no other daemon can be behind it.
/// Binds the control socket of the data folder `data`. Done before the daemon says it listens, so a technician
/// command run at that moment finds the socket.
pub fn bind(data: &Path) -> Result<UnixListener, ControlError> {
    let path = socket_path(data);
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ControlError::Io { path, source }
    };
    // Bound under a temporary name and made private before it takes its real name, so there is no moment
    // when the real socket is open to others.
    let fresh = path.with_extension("sock.new");
    for stale in [&fresh, &path] {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(stale)(e)),
        }
    }
    let listener = UnixListener::bind(&fresh).map_err(io_err(&fresh))?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600)).map_err(io_err(&fresh))?;
    std::fs::rename(&fresh, &path).map_err(io_err(&path))?;
    Ok(listener)
}

/// Answers technician commands on `listener` until `stop` changes.
pub async fn serve(app: Arc<App>, listener: UnixListener, mut stop: watch::Receiver<bool>) -> Result<(), ControlError> {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
            Ok(cred) => {
                log::warn!("control socket: refused a connection from uid {}", cred.uid());
                continue;
            }
            Err(e) => {
                log::warn!("control socket: cannot read the peer's credentials: {e}");
                continue;
            }
        }
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(app.clone(), req));
            let served = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = served.await {
                log::debug!("control socket connection: {e}");
            }
        });
    }
    let _ = std::fs::remove_file(socket_path(&app.config.storage.data));
    Ok(())
}

async fn handle(app: Arc<App>, req: hyper::Request<Incoming>) -> Result<Response, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => json(StatusCode::OK, &app.status()),
        (&Method::GET, "/backup") => backup_response(app).await,
        _ => text(StatusCode::NOT_FOUND, "unknown control request"),
    };
    Ok(response)
}

/// A backup, streamed: taken as a snapshot (uploads go on meanwhile) and copied at the reader's pace.
async fn backup_response(app: Arc<App>) -> Response {
    let data = app.config.storage.data.clone();
    let snapshot = match app.store.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("snapshot: {e}")),
    };
    let extras = match backup::Extras::read(&data) {
        Ok(extras) => extras,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let total = backup::content_bytes(&snapshot);
    let runtime = tokio::runtime::Handle::current();
    log::info!(
        "backup started: {} accounts, {} entries, {} contents",
        snapshot.user_count,
        snapshot.entry_count,
        snapshot.blobs.len()
    );
    let body = zipstream::blocking_body("backup", move |out| {
        let written = backup::write(&snapshot, &extras, out, &mut |_| {});
        // Unpin before collecting what the backup kept alive.
        drop(snapshot);
        runtime.spawn(async move {
            if let Err(e) = app.store.collect_deferred().await {
                log::warn!("after the backup, removing deleted contents failed: {e}");
            }
        });
        let manifest = written.map_err(|e| e.to_string())?;
        log::info!("backup sent: {} bytes of contents", manifest.blob_bytes);
        Ok(())
    });
    let mut response = hyper::Response::new(body);
    response.headers_mut().insert(BACKUP_BYTES, http::HeaderValue::from(total));
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    response
}

fn text(status: StatusCode, message: &str) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(message.to_owned())).map_err(|e| match e {}).boxed());
    *response.status_mut() = status;
    response
}

/// The client end, for technician commands.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl Client {
    /// Connects to the daemon of `data`; `None` when no daemon listens there (stopped, or killed and its
    /// socket left behind).
    pub async fn connect(data: &Path) -> Result<Option<Client>, ControlError> {
        let path = socket_path(data);
        let stream = match UnixStream::connect(&path).await {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
                return Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(ControlError::Denied { path }),
            Err(e) => return Err(ControlError::Io { path, source: e }),
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("control connection: {e}");
            }
        });
        Ok(Some(Client { sender }))
    }

    /// `GET path`; an answer other than 200 is an error carrying the daemon's message.
    pub async fn get(&mut self, path: &str) -> Result<hyper::Response<Incoming>, ControlError> {
        let request = hyper::Request::get(path)
            .header(http::header::HOST, "relais")
            .body(Empty::new().map_err(|e| match e {}).boxed())
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        let response = self.sender.send_request(request).await.map_err(|e| ControlError::Protocol(e.to_string()))?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(ControlError::Refused(format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        Ok(response)
    }

    /// The daemon's status.
    pub async fn status(&mut self) -> Result<crate::status::Status, ControlError> {
        let body = self.get("/status").await?.into_body().collect().await;
        let body = body.map_err(|e| ControlError::Protocol(e.to_string()))?.to_bytes();
        serde_json::from_slice(&body).map_err(|e| ControlError::Protocol(e.to_string()))
    }
}

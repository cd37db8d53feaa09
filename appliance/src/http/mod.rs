//! The HTTP front: one router for the JSON API, the portal pages, health and metrics.
//!
//! Handlers return `Result<Response, ApiError>`; `ApiError` decides the status and the French message the
//! user sees in one place, while the cause (for the log) stays apart from that message.

mod admin;
mod auth;
pub mod body;
pub mod ca;
mod cache;
pub mod crl;
pub mod dav;
pub mod files;
mod portal;
pub mod zipstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde::Serialize;

use crate::account::User;
use crate::app::{App, LoginError};
use crate::metrics::Gauges;
use crate::session::{self, Session};
use crate::store::StoreError;

pub type Body = BoxBody<Bytes, std::io::Error>;
pub type Response = hyper::Response<Body>;
pub type Request = hyper::Request<Incoming>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("identifiant ou mot de passe incorrect")]
    BadCredentials,
    #[error("connexion requise")]
    Unauthorized,
    #[error("accès refusé : vous ne pouvez pas faire cela ici")]
    Forbidden,
    #[error("introuvable")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("espace de stockage plein : supprimez des fichiers ou demandez plus d'espace à l'administrateur")]
    QuotaExceeded,
    #[error("trop d'essais de connexion : réessayez dans {} minutes", .0.as_secs().div_ceil(60))]
    Throttled(Duration),
    #[error("l'envoi s'est interrompu : recommencez")]
    BodyTimeout,
    #[error("la plage demandée dépasse la taille du fichier")]
    RangeNotSatisfiable(u64),
    #[error("méthode non prise en charge ici")]
    MethodNotAllowed,
    #[error("contenu trop volumineux")]
    PayloadTooLarge,
    #[error("ce compte est désactivé : adressez-vous au secrétariat de l'école")]
    AccountDisabled,
    #[error("première connexion : choisissez votre mot de passe avec votre code d'activation")]
    ActivationRequired,
    #[error("{0}")]
    EnrollmentRefused(String),
    /// This server's disk is full (not a user's quota): logged for the operator, worth retrying later.
    #[error("{0}")]
    DiskFull(String),
    #[error("erreur interne du serveur : l'administrateur trouvera la cause dans le journal")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BadCredentials | ApiError::Unauthorized | ApiError::EnrollmentRefused(_) => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden | ApiError::AccountDisabled | ApiError::ActivationRequired => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::QuotaExceeded | ApiError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Error {
            error: String,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            activation_required: bool,
        }
        let activation_required = matches!(self, ApiError::ActivationRequired);
        let mut resp = json(self.status(), &Error { error: self.to_string(), activation_required });
        match self {
            ApiError::Throttled(wait) => set(&mut resp, header::RETRY_AFTER, &wait.as_secs().max(1).to_string()),
            ApiError::RangeNotSatisfiable(size) => set(&mut resp, header::CONTENT_RANGE, &format!("bytes */{size}")),
            ApiError::Unauthorized | ApiError::BadCredentials => {}
            ApiError::BodyTimeout | ApiError::QuotaExceeded | ApiError::DiskFull(_) | ApiError::PayloadTooLarge => {
                // The client may still be sending: say we will not read the rest.
                set(&mut resp, header::CONNECTION, "close");
            }
            _ => {}
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Exists => ApiError::Conflict("existe déjà".into()),
            StoreError::NotADirectory => ApiError::Conflict("un fichier porte déjà ce nom de dossier".into()),
            StoreError::IsADirectory => ApiError::Conflict("un dossier porte déjà ce nom".into()),
            StoreError::QuotaExceeded => ApiError::QuotaExceeded,
            StoreError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                log::error!("disk full: {e}");
                ApiError::DiskFull("espace disque du serveur plein : prévenez l'administrateur de l'école".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        match e {
            LoginError::BadCredentials => ApiError::BadCredentials,
            LoginError::Throttled(wait) => ApiError::Throttled(wait),
            LoginError::Disabled => ApiError::AccountDisabled,
            LoginError::MustActivate => ApiError::ActivationRequired,
            LoginError::WeakPassword => ApiError::BadRequest(e.to_string()),
            LoginError::Store(e) => e.into(),
        }
    }
}

/// What is known of a connection before any request: who is at the other end.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Whether the connection is TLS (cookies then get `Secure`).
    pub tls: bool,
    /// The school of a box that presented a certificate the gateway verified (mutual TLS).
    pub box_uai: Option<String>,
}

/// One request's context: the app, the client, and who they turned out to be.
pub struct Ctx {
    pub app: Arc<App>,
    pub peer: SocketAddr,
    pub conn: Arc<Connection>,
    pub user: Option<User>,
    pub session: Option<(String, Session)>,
}

impl Ctx {
    /// The logged-in user, from the session cookie.
    pub fn authenticate(&mut self, headers: &http::HeaderMap) -> Result<User, ApiError> {
        if let Some(user) = &self.user {
            return Ok(user.clone());
        }
        let token = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|h| session::cookie(h, session::COOKIE));
        let Some(token) = token else {
            return Err(ApiError::Unauthorized);
        };
        let Some((key, session, user)) = self.app.session_user(token)? else {
            return Err(ApiError::Unauthorized);
        };
        self.user = Some(user.clone());
        self.session = Some((key, session));
        Ok(user)
    }

    pub fn require_admin(&mut self, headers: &http::HeaderMap) -> Result<User, ApiError> {
        let user = self.authenticate(headers)?;
        if user.role != crate::account::Role::Admin {
            return Err(ApiError::Forbidden);
        }
        Ok(user)
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never: Infallible| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never: Infallible| match never {}).boxed()
}

pub fn set(resp: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

pub fn with_status(status: StatusCode, body: Body) -> Response {
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = status;
    resp
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut resp = with_status(status, full(serde_json::to_vec(value).unwrap_or_default()));
    set(&mut resp, header::CONTENT_TYPE, "application/json; charset=utf-8");
    resp
}

pub fn text(status: StatusCode, body: &str) -> Response {
    let mut resp = with_status(status, full(body.to_string()));
    set(&mut resp, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    resp
}

pub fn redirect(location: &str) -> Response {
    let mut resp = with_status(StatusCode::SEE_OTHER, empty());
    set(&mut resp, header::LOCATION, location);
    resp
}

/// Serves one request and writes its log line.
pub async fn serve(app: Arc<App>, req: Request, conn: Arc<Connection>) -> Result<Response, Infallible> {
    let peer = conn.peer;
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut ctx = Ctx { app: app.clone(), peer, conn, user: None, session: None };
    let mut resp = match route(&mut ctx, req).await {
        Ok(resp) => resp,
        Err(e) => {
            if let ApiError::Internal(cause) | ApiError::DiskFull(cause) = &e {
                log::error!("{method} {path}: {cause}");
            }
            e.into_response()
        }
    };
    let status = resp.status().as_u16();
    app.metrics.record_status(status);
    set(&mut resp, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    let uai = if app.config.identity.uai.is_empty() { "-" } else { &app.config.identity.uai };
    let user = match (&ctx.user, &ctx.conn.box_uai) {
        (Some(u), _) => u.login.as_str(),
        (None, Some(uai)) => uai.as_str(),
        (None, None) => "-",
    };
    log::info!("{uai} {user} {} {method} {path} {status} {}ms", peer.ip(), started.elapsed().as_millis());
    Ok(resp)
}

async fn route(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/healthz") => Ok(text(StatusCode::OK, "ok")),
        (&Method::GET | &Method::HEAD, "/ca.crt") => ca::handle(ctx).await,
        (&Method::GET | &Method::HEAD, p) if crl::is_crl_path(p) => crl::handle(ctx, p).await,
        (&Method::GET, "/metrics") => metrics(ctx, &req),
        (&Method::GET | &Method::HEAD, "/proxy.pac") => Ok(cache::pac(ctx, &req)),
        (_, p) if p.starts_with("/cache/") => cache::handle(ctx, req).await,
        (_, p) if p == dav::PREFIX || p.starts_with("/dav/") => dav::handle(ctx, req).await,
        (_, p) if p.starts_with(crate::sync::protocol::PREFIX) => match ctx.app.region.clone() {
            Some(gateway) => crate::region::sync::handle(ctx, &gateway, req).await,
            None => Err(ApiError::NotFound),
        },
        (_, p) if p.starts_with("/.well-known/est/") => match ctx.app.region.clone() {
            Some(gateway) => crate::region::est::handle(ctx, &gateway, req).await,
            None => Err(ApiError::NotFound),
        },
        (&Method::POST, "/api/login") => auth::login(ctx, req).await,
        (&Method::POST, "/api/logout") => auth::logout(ctx, req).await,
        (&Method::POST, "/api/activate") => auth::activate(ctx, req).await,
        (&Method::POST, "/api/password") => auth::change_password(ctx, req).await,
        (&Method::GET, "/api/me") => auth::me(ctx, &req),
        (_, "/api/admin/status") => admin::status(ctx, &req),
        (_, "/api/admin/users") => admin::users(ctx, req).await,
        (&Method::POST, "/api/admin/import") => admin::import(ctx, req).await,
        (&Method::POST, "/api/admin/import/undo") => admin::undo(ctx, req).await,
        (_, p) if p == "/api/files" || p.starts_with("/api/files/") => files::handle(ctx, req).await,
        (_, p) if p.starts_with("/api/") => Err(ApiError::NotFound),
        _ => Ok(portal::handle(ctx, req).await),
    }
}

fn metrics(ctx: &mut Ctx, req: &Request) -> Result<Response, ApiError> {
    if !ctx.peer.ip().is_loopback() {
        ctx.require_admin(req.headers())?;
    }
    let (blobs, blob_bytes) = ctx.app.store.blob_disk_usage();
    let gauges = Gauges {
        users: ctx.app.store.user_count() as u64,
        sessions: ctx.app.store.session_count() as u64,
        blobs,
        blob_bytes,
        replication: ctx.app.sync.get().map(|handle| {
            let status = ctx.app.status();
            let sync = handle.status();
            let (line_up_bytes, line_down_bytes) = handle.scheduler.granted();
            let b = status.replication.backlog;
            crate::metrics::ReplicationGauges {
                last_success: sync.last_success.unwrap_or(0),
                up_changes: b.up_changes,
                up_bytes: b.up_bytes,
                down_changes: b.down_changes,
                down_bytes: b.down_bytes,
                line_up_bytes,
                line_down_bytes,
            }
        }),
        cache: ctx.app.cache.as_ref().map(|cache| {
            let (entries, bytes) = cache.index.usage();
            crate::metrics::CacheGauges {
                requests: crate::cache::Outcome::ALL.iter().map(|o| (o.name(), cache.stats.requests(*o))).collect(),
                served_bytes: cache.stats.served_bytes.load(std::sync::atomic::Ordering::Relaxed),
                upstream_bytes: cache.stats.upstream_bytes.load(std::sync::atomic::Ordering::Relaxed),
                entries,
                bytes,
                budget: cache.config.size.0,
            }
        }),
    };
    let mut resp = text(StatusCode::OK, &ctx.app.metrics.render(&gauges));
    set(&mut resp, header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    Ok(resp)
}

//! `/dav/`: the tree of `/api/files` over WebDAV (classes 1 and 2), so the school drive mounts in Windows
//! Explorer, macOS Finder, GNOME Files and tablet apps.
//!
//! The protocol is the `dav-server` crate's (PROPFIND, PROPPATCH, MKCOL, PUT, DELETE, COPY, MOVE, LOCK,
//! UNLOCK, RFC 4331 quotas); what it works on is `fs::UserFs`, the user's view of our store, made per request
//! for the authenticated user. Two things are answered here before it: `PROPFIND` with `Depth: infinity`
//! (403 `propfind-finite-depth`: a walk of the whole school per request is refused), and `GET`/`HEAD` of a
//! file, which go through `/api/files`' own `send_file` (validators, ranges, the hash checked on the way, the
//! same ETag).

mod basic;
mod fs;
mod if_header;
mod lock;

use futures_util::TryStreamExt;
use http::header;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use super::{body, files, full, set, with_status, ApiError, Ctx, Request, Response};
use crate::account::User;
use crate::space::Kind;

/// Where WebDAV is served.
pub const PREFIX: &str = "/dav";

/// What WebDAV keeps between requests: checked Basic credentials and locks.
#[derive(Debug, Default)]
pub struct DavState {
    verified: basic::Verified,
    locks: lock::Locks,
}

/// Serves one request under `/dav`. Refusals to authenticate carry the Basic challenge.
pub async fn handle(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    match serve(ctx, req).await {
        Err(e @ (ApiError::Unauthorized | ApiError::BadCredentials)) => {
            let mut resp = e.into_response();
            set(&mut resp, header::WWW_AUTHENTICATE, "Basic realm=\"Relais\", charset=\"UTF-8\"");
            Ok(resp)
        }
        other => other,
    }
}

/// The user: Basic credentials when sent (a file manager), else the portal's session cookie (a browser).
async fn authenticate(ctx: &mut Ctx, req: &Request) -> Result<User, ApiError> {
    let Some((login, password)) = basic::credentials(req.headers()) else {
        return ctx.authenticate(req.headers());
    };
    let app = ctx.app.clone();
    let user = app.dav.verified.check(&app, &login, &password, ctx.peer.ip()).await?;
    ctx.user = Some(user.clone());
    Ok(user)
}

async fn serve(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let user = authenticate(ctx, &req).await?;
    let app = ctx.app.clone();
    if !req.headers().get_all("if").iter().all(|v| if_header::safe(v.as_bytes())) {
        return Err(ApiError::BadRequest("en-tête If: mal formé".into()));
    }
    if req.method().as_str() == "PROPFIND" && depth_infinity(&req) {
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
                   <D:error xmlns:D=\"DAV:\"><D:propfind-finite-depth/></D:error>\n";
        let mut resp = with_status(StatusCode::FORBIDDEN, full(xml));
        set(&mut resp, header::CONTENT_TYPE, "application/xml; charset=utf-8");
        return Ok(resp);
    }
    // Partial writes (Apache's Content-Range PUT, SabreDAV's PATCH) would replace a file with its slice in
    // our whole-file store: refused, as RFC 9110 asks of servers without partial PUT.
    if req.method() == Method::PUT && req.headers().contains_key(header::CONTENT_RANGE) {
        return Err(ApiError::BadRequest("les envois partiels (Content-Range) ne sont pas pris en charge".into()));
    }
    if req.method() == Method::PATCH {
        return Err(ApiError::MethodNotAllowed);
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        if let Some(resp) = get_file(ctx, &user, &req).await? {
            return Ok(resp);
        }
    }
    let fs = fs::UserFs { app: app.clone(), user: user.clone() };
    let locks = app.dav.locks.for_user(&user.login, user.school.as_deref());
    let handler = dav_server::DavHandler::builder()
        .strip_prefix(PREFIX)
        .filesystem(Box::new(fs))
        .locksystem(Box::new(locks))
        .principal(user.login.clone())
        .autoindex(false)
        .build_handler();
    let idle = app.config.limits.body_idle_timeout.0;
    let (parts, incoming) = req.into_parts();
    let stream = body::stream(incoming, idle).map_err(|e| std::io::Error::other(e.to_string()));
    let resp = handler.handle_stream(hyper::Request::from_parts(parts, stream)).await;
    let (mut parts, body) = resp.into_parts();
    // dav-server also announces SabreDAV's partial updates, which we refuse (see above): a client believing it
    // would PATCH and fail.
    if parts.headers.contains_key("dav") {
        parts.headers.insert("dav", http::HeaderValue::from_static("1, 2, 3"));
    }
    Ok(hyper::Response::from_parts(parts, BodyExt::boxed(SyncBody(std::sync::Mutex::new(body)))))
}

/// dav-server's response body is `Send` but not `Sync`, which our boxed body type requires; it is only ever
/// polled through `&mut`, so the mutex is never contended (`get_mut`).
struct SyncBody(std::sync::Mutex<dav_server::body::Body>);

impl http_body::Body for SyncBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let inner = self.get_mut().0.get_mut().unwrap_or_else(|e| e.into_inner());
        std::pin::Pin::new(inner).poll_frame(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.lock().map(|b| b.size_hint()).unwrap_or_default()
    }
}

fn depth_infinity(req: &Request) -> bool {
    req.headers().get("depth").and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim().eq_ignore_ascii_case("infinity"))
}

/// `GET`/`HEAD` of a file the user may read, answered like `/api/files`; `None` for anything else (folders,
/// missing paths, refusals), which dav-server answers in WebDAV's terms.
async fn get_file(ctx: &Ctx, user: &User, req: &Request) -> Result<Option<Response>, ApiError> {
    let raw = req.uri().path().strip_prefix(PREFIX).unwrap_or("");
    let Ok(upath) = crate::path::parse(raw.trim_start_matches('/')) else {
        return Ok(None);
    };
    let Ok((target, _)) = files::target(&ctx.app, user, &upath.segments) else {
        return Ok(None);
    };
    if !target.read || target.kind != Kind::Inside {
        return Ok(None);
    }
    let Some(internal) = &target.internal else {
        return Ok(None);
    };
    let Some(entry) = ctx.app.store.stat(internal)?.filter(|e| !e.dir) else {
        return Ok(None);
    };
    let head = req.method() == Method::HEAD;
    files::send_file(&ctx.app, req.headers(), head, &entry, upath.segments.last()).await.map(Some)
}

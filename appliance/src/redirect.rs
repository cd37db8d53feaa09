//! The plain-HTTP listener beside LAN HTTPS (`[lan] http_redirect`, e.g. `0.0.0.0:80`): a pupil who types
//! `ent.0123456a.lan` lands on HTTPS, a PC that does not trust the box yet can still fetch `/ca.crt`, and a PC
//! checking the box's certificate finds the revocation list it names (`http://ent.<uai>.lan/crl/lan.crl`).
//! The gateway runs the same listener: its certificates name `http://<gateway>/crl/…` lists too.
//!
//! It serves `/healthz`, `/ca.crt` and `/crl/…` and answers everything else with `308 Permanent Redirect` to the same
//! path on HTTPS (308, not 301: a form posted to the old address is posted again, not turned into a GET). It
//! never reads a request body and closes each redirected connection, with the main listener's header limits,
//! so a slow or hostile client costs it nothing more than the main listener.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::http::{self as front, Connection, Ctx, Request, Response};
use crate::server::Shutdown;

/// Where redirected requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The port the HTTPS listener accepts on (omitted from URLs when 443).
    pub https_port: u16,
    /// The host for a request without a usable `Host` header: the box's first LAN name.
    pub fallback_host: String,
}

/// `https://HOST[:PORT]PATH?QUERY` for a request that asked for `host` (its `Host` header, whose port is
/// dropped: it is this listener's) and `path_and_query`. A `Host` that is not a plain host name or IP literal
/// (empty, or with characters no host has) is replaced by the fallback rather than echoed into a header.
pub fn location(host: Option<&str>, path_and_query: &str, target: &Target) -> String {
    let host = host.and_then(host_without_port).unwrap_or(&target.fallback_host);
    let port = if target.https_port == 443 { String::new() } else { format!(":{}", target.https_port) };
    let path = if path_and_query.starts_with('/') { path_and_query } else { "/" };
    format!("https://{host}{port}{path}")
}

/// The host part of a `Host` header value, `None` when it is not one.
fn host_without_port(value: &str) -> Option<&str> {
    let value = value.trim();
    let digits = |port: &str| port.bytes().all(|b| b.is_ascii_digit());
    if let Some(inner) = value.strip_prefix('[') {
        // An IPv6 literal keeps its brackets in a URL.
        let (ip, rest) = inner.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        let port_ok = rest.is_empty() || rest.strip_prefix(':').is_some_and(digits);
        return port_ok.then(|| &value[..ip.len() + 2]);
    }
    let host = match value.split_once(':') {
        Some((host, port)) if digits(port) => host,
        Some(_) => return None,
        None => value,
    };
    let plain = host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (!host.is_empty() && host.len() <= 253 && plain).then_some(host)
}

/// Binds `[lan] http_redirect` when it is set and the portal serves HTTPS (`tls`); without HTTPS there is
/// nowhere to redirect to, so the key is then ignored with a warning.
pub async fn bind(lan: &firmware_config::Lan, tls: bool) -> std::io::Result<Option<TcpListener>> {
    let addr = lan.http_redirect.trim();
    if addr.is_empty() {
        return Ok(None);
    }
    if !tls {
        log::warn!("lan.http_redirect = \"{addr}\" ignored: the portal serves plain HTTP (lan.tls)");
        return Ok(None);
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr} (lan.http_redirect): {e}")))?;
    Ok(Some(listener))
}

/// Starts serving `listener` towards the HTTPS listener on `https_port` until `shutdown`; returns where it
/// listens and its task, which ends once its connections are drained.
pub fn spawn(
    app: Arc<App>,
    listener: TcpListener,
    https_port: u16,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let fallback_host = match &app.region {
        Some(gateway) => gateway.ca.gateway_names().first().cloned(),
        None => crate::lan_tls::names(&app.config).into_iter().next(),
    }
    .unwrap_or_else(|| "localhost".into());
    log::info!("redirecting http://{addr} to HTTPS on port {https_port}");
    let target = Target { https_port, fallback_host };
    Ok((addr, tokio::spawn(run(app, listener, target, shutdown.wait()))))
}

/// Serves the redirect listener until `shutdown` resolves, then lets open requests finish within the grace
/// period.
async fn run(app: Arc<App>, listener: TcpListener, target: Target, shutdown: impl Future<Output = ()>) {
    let builder = crate::server::http1(&app.config.limits);
    let target = Arc::new(target);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = crate::server::accept(&listener, &mut shutdown, "redirect").await {
        let _ = stream.set_nodelay(true);
        let (app, target, builder) = (app.clone(), target.clone(), builder.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let conn = Arc::new(Connection { peer, tls: false, box_uai: None });
            let service = service_fn(move |req| serve(app.clone(), req, conn.clone(), target.clone()));
            if let Err(e) = watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await {
                log::debug!("redirect connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    let grace = app.config.limits.shutdown_grace.0;
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        log::warn!("redirect listener: some connections did not finish within {grace:?}; closing them");
    }
}

/// One request: `/healthz`, `/ca.crt` and `/crl/…` as on the main listener, a redirect for anything else; one
/// log line.
async fn serve(
    app: Arc<App>,
    req: Request,
    conn: Arc<Connection>,
    target: Arc<Target>,
) -> Result<Response, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let peer = conn.peer;
    let read_only = method == Method::GET || method == Method::HEAD;
    let mut resp = match path.as_str() {
        "/healthz" if read_only => front::text(StatusCode::OK, "ok"),
        "/ca.crt" if read_only => download(&app, conn, &method, &path).await,
        p if read_only && front::crl::is_crl_path(p) => download(&app, conn, &method, &path).await,
        _ => {
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
            let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut resp = front::with_status(StatusCode::PERMANENT_REDIRECT, front::empty());
            front::set(&mut resp, header::LOCATION, &location(host, path_and_query, &target));
            // The body, if any, is never read: end the connection rather than read or skip it.
            front::set(&mut resp, header::CONNECTION, "close");
            resp
        }
    };
    front::set(&mut resp, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    let status = resp.status().as_u16();
    app.metrics.record_status(status);
    let uai = if app.config.identity.uai.is_empty() { "-" } else { &app.config.identity.uai };
    log::info!("{uai} - {} {method} {path} {status} {}ms (http)", peer.ip(), started.elapsed().as_millis());
    Ok(resp)
}

/// `/ca.crt` or a `/crl/…` list, by the main listener's handlers; a failure as a plain-text status (the cause
/// of a 500 in the log).
async fn download(app: &Arc<App>, conn: Arc<Connection>, method: &Method, path: &str) -> Response {
    let ctx = Ctx { app: app.clone(), peer: conn.peer, conn, user: None, session: None };
    let answer = if path == "/ca.crt" { front::ca::handle(&ctx).await } else { front::crl::handle(&ctx, path).await };
    answer.unwrap_or_else(|e| {
        if let front::ApiError::Internal(cause) = &e {
            log::error!("{method} {path}: {cause}");
        }
        front::text(e.status(), &e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: u16) -> Target {
        Target { https_port: port, fallback_host: "ent.0123456a.lan".into() }
    }

    #[test]
    fn location_keeps_host_path_and_query_and_names_the_https_port() {
        let t = target(8443);
        assert_eq!(location(Some("ent.0123456a.lan"), "/api/me?x=1", &t), "https://ent.0123456a.lan:8443/api/me?x=1");
        assert_eq!(location(Some("192.168.1.10:80"), "/", &t), "https://192.168.1.10:8443/");
        assert_eq!(location(Some("[fe80::1]:8080"), "/a", &t), "https://[fe80::1]:8443/a");
        assert_eq!(location(Some("[::1]"), "/a", &t), "https://[::1]:8443/a");
        assert_eq!(
            location(Some("relais.local"), "/fichiers/%C3%A9t%C3%A9/", &target(443)),
            "https://relais.local/fichiers/%C3%A9t%C3%A9/"
        );
    }

    #[test]
    fn location_falls_back_to_the_first_lan_name() {
        let t = target(443);
        for host in
            [None, Some(""), Some("evil\r\nx"), Some("a b"), Some("host:port"), Some("[not-ip]:80"), Some("[::1]x")]
        {
            assert_eq!(location(host, "/x?y", &t), "https://ent.0123456a.lan/x?y", "{host:?}");
        }
        assert_eq!(location(Some("box"), "*", &t), "https://box/", "an asterisk-form target");
    }
}

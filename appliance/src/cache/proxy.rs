//! The forward proxy for the school's PCs (`[cache] proxy_listen`, port 3128 by default; browsers find it
//! through `/proxy.pac`): plain-HTTP requests go through the cache; HTTPS is tunnelled with CONNECT, byte for
//! byte, never decrypted — the box cannot and must not read pupils' HTTPS traffic.
//!
//! Tunnels are held to `[cache] connect_ports` (443 by default), as squid's `SSL_ports`, so the proxy does not
//! become a way to reach arbitrary services. Tunnelled bytes go through the uplink scheduler as interactive
//! traffic: a person is waiting on them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, Method, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{policy, Cache, Request};
use crate::http::{text, Response};
use crate::uplink::{Class, Direction};

/// Serves the forward proxy on `listener` until `shutdown` resolves. Open tunnels are cut at shutdown.
pub async fn run(
    cache: Arc<Cache>,
    listener: TcpListener,
    limits: firmware_config::Limits,
    uai: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let builder = crate::server::http1(&limits);
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = crate::server::accept(&listener, &mut shutdown, "proxy").await {
        let _ = stream.set_nodelay(true);
        let (cache, builder, uai) = (cache.clone(), builder.clone(), uai.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| serve(cache.clone(), req, peer, uai.clone()));
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).with_upgrades().await {
                log::debug!("proxy connection from {peer}: {e}");
            }
        });
    }
}

async fn serve(
    cache: Arc<Cache>,
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    uai: String,
) -> Result<Response, Infallible> {
    let started = std::time::Instant::now();
    let (method, uri) = (req.method().clone(), req.uri().to_string());
    let resp = if method == Method::CONNECT { connect(&cache, req) } else { forward(&cache, req).await };
    let uai = if uai.is_empty() { "-" } else { uai.as_str() };
    log::info!(
        "{uai} - {} proxy {method} {uri} {} {}ms",
        peer.ip(),
        resp.status().as_u16(),
        started.elapsed().as_millis()
    );
    Ok(resp)
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut resp = text(status, message);
    resp.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

/// A plain-HTTP request in absolute form (`GET http://host/path`), answered through the cache.
async fn forward(cache: &Arc<Cache>, req: hyper::Request<hyper::body::Incoming>) -> Response {
    let uri = req.uri();
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "le proxy de l'école ne relaie que http:// ; les sites https:// passent par CONNECT",
            )
        }
        None => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "ceci est le proxy de l'école : configurez le navigateur avec l'adresse /proxy.pac du portail",
            )
        }
    }
    let Some(url) = normalize(uri) else {
        return refuse(StatusCode::BAD_REQUEST, "adresse invalide");
    };
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    policy::strip_hop_by_hop(&mut headers);
    let request =
        Request { url, method: parts.method, headers, body: Some(body), class: Class::Interactive, counted: true };
    match cache.handle(request).await {
        Ok(resp) => resp,
        Err(e) => refuse(e.status(), &e.message()),
    }
}

/// The cache key of an absolute `http://` URI: lowercase host, no default port.
pub fn normalize(uri: &http::Uri) -> Option<String> {
    let host = uri.host()?.to_ascii_lowercase();
    let port = match uri.port_u16() {
        Some(80) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("http://{host}{port}{path}"))
}

/// `CONNECT host:port`: answers 200, then copies bytes both ways until either side closes.
fn connect(cache: &Arc<Cache>, req: hyper::Request<hyper::body::Incoming>) -> Response {
    let Some(authority) = req.uri().authority().cloned() else {
        return refuse(StatusCode::BAD_REQUEST, "CONNECT attend hôte:port");
    };
    let port = authority.port_u16().unwrap_or(443);
    if !cache.config.connect_ports.contains(&port) {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "le proxy de l'école n'ouvre pas de tunnel vers le port {port} (ports permis : {:?})",
                cache.config.connect_ports
            ),
        );
    }
    let cache = cache.clone();
    let timeout = cache.config.upstream_timeout.0;
    tokio::spawn(async move {
        let target = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority.as_str())).await;
        let upgraded = hyper::upgrade::on(req).await;
        match (target, upgraded) {
            (Ok(Ok(target)), Ok(upgraded)) => {
                let _ = target.set_nodelay(true);
                tunnel(&cache, TokioIo::new(upgraded), target).await;
            }
            (Ok(Err(e)), _) => log::info!("proxy: CONNECT {authority}: {e}"),
            (Err(_), _) => log::info!("proxy: CONNECT {authority}: no answer"),
            (_, Err(e)) => log::debug!("proxy: CONNECT {authority}: {e}"),
        }
    });
    crate::http::with_status(StatusCode::OK, crate::http::empty())
}

/// Copies both ways, each chunk paid for on the uplink scheduler.
async fn tunnel<C>(cache: &Arc<Cache>, client: C, target: tokio::net::TcpStream)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (target_read, target_write) = target.into_split();
    tokio::join!(
        pump(cache, client_read, target_write, Direction::Up),
        pump(cache, target_read, client_write, Direction::Down)
    );
}

/// One direction of a tunnel, until its reader ends; then the writer is shut so the other side sees the end.
async fn pump<R, W>(cache: &Arc<Cache>, mut from: R, mut to: W, direction: Direction)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        cache.uplink.acquire_async(Class::Interactive, direction, n as u64).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The proxy auto-configuration file the portal serves at `/proxy.pac`: local names and addresses go direct,
/// everything else through the box, and straight out if the box does not answer.
pub fn pac(host: &str, port: u16) -> String {
    format!(
        "function FindProxyForURL(url, host) {{\n\
         \x20 if (isPlainHostName(host) || dnsDomainIs(host, \".lan\") || dnsDomainIs(host, \".local\") ||\n\
         \x20     isInNet(host, \"10.0.0.0\", \"255.0.0.0\") || isInNet(host, \"172.16.0.0\", \"255.240.0.0\") ||\n\
         \x20     isInNet(host, \"192.168.0.0\", \"255.255.0.0\") || isInNet(host, \"127.0.0.0\", \"255.0.0.0\"))\n\
         \x20   return \"DIRECT\";\n\
         \x20 return \"PROXY {host}:{port}; DIRECT\";\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_absolute_uris() {
        let uri: http::Uri = "http://Example.FR:80/a/b?c=1".parse().expect("uri");
        assert_eq!(normalize(&uri).as_deref(), Some("http://example.fr/a/b?c=1"));
        let uri: http::Uri = "http://127.0.0.1:8081".parse().expect("uri");
        assert_eq!(normalize(&uri).as_deref(), Some("http://127.0.0.1:8081/"));
        assert!(pac("relais.lan", 3128).contains("PROXY relais.lan:3128; DIRECT"));
    }
}

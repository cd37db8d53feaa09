//! `/cache/<upstream>/<path>`: the configured upstreams through the LAN cache, and `/proxy.pac`, which points
//! the school's browsers at the forward proxy.

use http::header::{self, HeaderValue};
use http::StatusCode;

use super::{json, text, ApiError, Ctx, Request, Response};
use crate::cache::{self, policy};
use crate::uplink::Class;

pub async fn handle(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let Some(cache) = ctx.app.cache.clone() else { return Err(ApiError::NotFound) };
    let path_and_query = req.uri().path_and_query().map_or("", |p| p.as_str()).to_string();
    let rest = path_and_query.strip_prefix("/cache/").unwrap_or("");
    let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(url) = cache.upstream_url(name, path) else { return Err(ApiError::NotFound) };
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    policy::strip_hop_by_hop(&mut headers);
    // The browser's cookies here are the portal's (its session): never sent to another site.
    headers.remove(header::COOKIE);
    let request = cache::Request {
        url,
        method: parts.method,
        headers,
        body: Some(body),
        class: Class::Interactive,
        counted: true,
    };
    match cache.handle(request).await {
        Ok(mut resp) => {
            // The upstream's cookies would be set on the portal's origin: drop them.
            resp.headers_mut().remove(header::SET_COOKIE);
            Ok(resp)
        }
        Err(e) => {
            #[derive(serde::Serialize)]
            struct Error {
                error: String,
            }
            Ok(json(e.status(), &Error { error: e.message() }))
        }
    }
}

/// The proxy auto-configuration file, naming the box as the client reached it.
pub fn pac(ctx: &Ctx, req: &Request) -> Response {
    let proxy = ctx.app.proxy_addr.get().copied();
    let body = match proxy {
        Some(addr) => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .map(|a| a.host().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| addr.ip().to_string());
            cache::proxy::pac(&host, addr.port())
        }
        None => "function FindProxyForURL(url, host) { return \"DIRECT\"; }\n".to_string(),
    };
    let mut resp = text(StatusCode::OK, &body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ns-proxy-autoconfig"));
    resp
}

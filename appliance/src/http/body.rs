//! Reading request bodies: small JSON or form bodies into memory (bounded), uploads as a stream of chunks
//! that gives up when the client stalls.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::ApiError;

/// Largest JSON or form body accepted (logins, account creation).
pub const SMALL_BODY: usize = 64 << 10;

/// The next chunk of data, `None` at the end; `BodyTimeout` if nothing came for `idle`.
pub async fn next_chunk(body: &mut Incoming, idle: Duration) -> Result<Option<Bytes>, ApiError> {
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ApiError::BodyTimeout),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(ApiError::BadRequest(format!("envoi interrompu : {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// The whole body, refusing more than `limit` bytes.
pub async fn read_small(mut body: Incoming, idle: Duration, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = next_chunk(&mut body, idle).await? {
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A JSON body. The content type must say JSON: a cross-site HTML form cannot send that without a CORS
/// preflight, which the box never grants, so JSON endpoints need no CSRF token.
pub async fn read_json<T: DeserializeOwned>(req: hyper::Request<Incoming>, idle: Duration) -> Result<T, ApiError> {
    let is_json = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        return Err(ApiError::BadRequest(
            "le corps de la requête doit être du JSON (Content-Type: application/json)".into(),
        ));
    }
    let bytes = read_small(req.into_body(), idle, SMALL_BODY).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("JSON invalide : {e}")))
}

/// The body as a stream (for multipart parsing), ending with an error if the client stalls.
pub fn stream(body: Incoming, idle: Duration) -> impl Stream<Item = Result<Bytes, ApiError>> + Send + 'static {
    futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        match next_chunk(&mut body, idle).await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

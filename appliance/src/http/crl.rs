//! `GET /crl/<issuer>.crl`: the revocation lists named by the region's certificates, served without login on
//! every listener (the plain-HTTP one above all: the URLs in certificates are `http://`, see
//! `provisioning/src/crl.rs` for why).
//!
//! On the gateway, the four lists of the region (`root`, `box`, `lan`, `gateway`), fresh from the CA. On a box,
//! `lan.crl` alone: its copy of the region's LAN list, which the box's LAN certificate names, so that the
//! school's PCs can check it without the uplink; 404 until the box has one.

use http::{header, StatusCode};
use provisioning::{CrlIssuer, CRL_CONTENT_TYPE, CRL_PATH_PREFIX};

use super::{full, set, with_status, ApiError, Ctx, Response};

/// Whether `path` is one of the lists' paths (`/crl/…`), for the routers.
pub fn is_crl_path(path: &str) -> bool {
    path.starts_with(CRL_PATH_PREFIX)
}

pub async fn handle(ctx: &Ctx, path: &str) -> Result<Response, ApiError> {
    let name = path.strip_prefix(CRL_PATH_PREFIX).ok_or(ApiError::NotFound)?;
    let issuer = CrlIssuer::from_file_name(name).ok_or(ApiError::NotFound)?;
    let der = match &ctx.app.region {
        Some(gateway) => gateway
            .crls
            .get(&gateway.ca, issuer)
            .map_err(|e| ApiError::Internal(format!("{path}: {e}")))?
            .as_ref()
            .clone(),
        None if issuer == CrlIssuer::Lan => crate::enroll::crl::served(&ctx.app.config.storage.data)
            .await
            .map_err(|e| ApiError::Internal(format!("{path}: {e}")))?
            .ok_or(ApiError::NotFound)?,
        None => return Err(ApiError::NotFound),
    };
    let mut resp = with_status(StatusCode::OK, full(der));
    set(&mut resp, header::CONTENT_TYPE, CRL_CONTENT_TYPE);
    // A revocation must reach the next checker: caches ask again (the checker itself keeps the list until its
    // nextUpdate, as it should).
    set(&mut resp, header::CACHE_CONTROL, "no-cache");
    Ok(resp)
}

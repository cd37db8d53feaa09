//! `GET /ca.crt`: the certificate a technician installs on the school's PCs as a trusted root, served without
//! login on every listener (the plain-HTTP redirect listener too: that is how a PC fetches it before it
//! trusts the box).
//!
//! On the box it is the regional root once provisioned (it vouches for every LAN certificate of the region, so
//! one install covers the box's renewals and the school's next box), else the box's self-signed certificate;
//! on the gateway, the regional root.

use http::{header, StatusCode};

use super::{full, set, with_status, ApiError, Ctx, Response};

/// The name the browser saves the download under.
const FILENAME: &str = "relais-ca.crt";

pub async fn handle(ctx: &Ctx) -> Result<Response, ApiError> {
    let pem = match &ctx.app.region {
        Some(gateway) => Some(gateway.ca.root_cert_pem().as_bytes().to_vec()),
        None => crate::lan_tls::ca_certificate(&ctx.app.config.storage.data)
            .await
            .map_err(|e| ApiError::Internal(format!("/ca.crt: {e}")))?,
    };
    let pem = pem.ok_or(ApiError::NotFound)?;
    let mut resp = with_status(StatusCode::OK, full(pem));
    set(&mut resp, header::CONTENT_TYPE, "application/x-x509-ca-cert");
    set(&mut resp, header::CONTENT_DISPOSITION, &format!("attachment; filename=\"{FILENAME}\""));
    // It changes when the box is provisioned: a PC must not keep the self-signed one from its cache.
    set(&mut resp, header::CACHE_CONTROL, "no-cache");
    Ok(resp)
}

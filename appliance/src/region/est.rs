//! Enrollment endpoints under `/.well-known/est/`, modelled on EST (RFC 7030) with JSON bodies:
//! `cacerts` (the regional root), `simpleenroll` (first contact: CSRs + one-time token → certificates bound
//! to the UAI) and `simplereenroll` (renewal, authenticated by the box's current certificate over mutual TLS).
//! Both enrollments also hand the box the LAN revocation list, which it serves to its school's PCs.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::Gateway;
use crate::http::{body, json, set, text, ApiError, Ctx, Request, Response};
use provisioning::{CaError, TokenError};

#[derive(Deserialize)]
struct Enroll {
    uai: String,
    token: String,
    csr: String,
    lan_csr: String,
    #[serde(default)]
    lan_names: Vec<String>,
}

#[derive(Deserialize)]
struct Reenroll {
    csr: String,
    lan_csr: String,
    #[serde(default)]
    lan_names: Vec<String>,
}

#[derive(Serialize)]
struct Enrolled {
    /// The box's client certificate and its intermediate, PEM.
    chain: String,
    /// The LAN server certificate and its intermediate, PEM.
    lan_chain: String,
    /// The regional root, PEM.
    ca: String,
    /// Unix seconds: when the box certificate expires (it renews at half-life).
    not_after: u64,
    /// The LAN intermediate's revocation list, PEM (`X509 CRL`), for the box to serve on the school LAN at
    /// the URL its LAN certificate names; absent if it could not be made (the box fetches it daily anyway).
    #[serde(skip_serializing_if = "String::is_empty")]
    lan_crl: String,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn refused(e: TokenError) -> ApiError {
    match e {
        TokenError::Unknown
        | TokenError::WrongUai { .. }
        | TokenError::AlreadyUsed { .. }
        | TokenError::Expired { .. } => ApiError::EnrollmentRefused(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

fn bad_csr(e: CaError) -> ApiError {
    ApiError::BadRequest(format!("demande de certificat refusée : {e}"))
}

pub async fn handle(ctx: &mut Ctx, gateway: &Gateway, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let idle = ctx.app.config.limits.body_idle_timeout.0;
    match (req.method().clone(), path.trim_start_matches("/.well-known/est/")) {
        (Method::GET, "cacerts") => {
            let mut resp = text(StatusCode::OK, gateway.ca.root_cert_pem());
            set(&mut resp, header::CONTENT_TYPE, "application/pem-certificate-chain");
            Ok(resp)
        }
        (Method::POST, "simpleenroll") => {
            let e: Enroll = body::read_json(req, idle).await?;
            let tokens = gateway.ca.tokens().map_err(|e| ApiError::Internal(e.to_string()))?;
            // Check the token before signing anything, spend it only once both certificates are made.
            match tokens.lookup(&e.token).map_err(|e| ApiError::Internal(e.to_string()))? {
                None => return Err(refused(TokenError::Unknown)),
                Some(record) if record.uai != e.uai => return Err(refused(TokenError::WrongUai { claimed: e.uai })),
                Some(_) => {}
            }
            let (chain, lan) = issue(gateway, &e.uai, &e.csr, &e.lan_csr, &e.lan_names)?;
            if let Err(err) = tokens.redeem(&e.token, &e.uai, SystemTime::now()) {
                // Lost a race with another use of the token, or it expired meanwhile: take the certificates back.
                for serial in [&chain.serial, &lan.serial] {
                    let _ = gateway.ca.revoke_serial(serial);
                }
                return Err(refused(err));
            }
            log::info!("{} box enrolled (certificate {} until {})", e.uai, chain.serial, unix(chain.not_after));
            Ok(enrolled(gateway, chain, lan))
        }
        (Method::POST, "simplereenroll") => {
            let Some(uai) = ctx.conn.box_uai.clone() else {
                return Err(ApiError::EnrollmentRefused(
                    "renouvellement refusé : présentez le certificat de la box (TLS mutuel)".into(),
                ));
            };
            let r: Reenroll = body::read_json(req, idle).await?;
            let (chain, lan) = issue(gateway, &uai, &r.csr, &r.lan_csr, &r.lan_names)?;
            log::info!("{uai} box renewed its certificates ({} until {})", chain.serial, unix(chain.not_after));
            Ok(enrolled(gateway, chain, lan))
        }
        _ => Err(ApiError::NotFound),
    }
}

fn issue(
    gateway: &Gateway,
    uai: &str,
    csr: &str,
    lan_csr: &str,
    lan_names: &[String],
) -> Result<(provisioning::Issued, provisioning::Issued), ApiError> {
    let validity = gateway.certificate_validity;
    let chain = gateway.ca.issue_box_cert(csr.as_bytes(), uai, validity).map_err(bad_csr)?;
    let mut names = vec![format!("ent.{}.lan", uai.to_lowercase())];
    names.extend(lan_names.iter().filter(|n| !n.is_empty()).cloned());
    names.dedup();
    let lan = match gateway.ca.issue_lan_cert(lan_csr.as_bytes(), uai, &names, validity) {
        Ok(lan) => lan,
        Err(e) => {
            let _ = gateway.ca.revoke_serial(&chain.serial);
            return Err(bad_csr(e));
        }
    };
    Ok((chain, lan))
}

fn enrolled(gateway: &Gateway, chain: provisioning::Issued, lan: provisioning::Issued) -> Response {
    // The certificates are signed and recorded: a list that cannot be made must not take them back.
    let lan_crl = match gateway.crls.get(&gateway.ca, provisioning::CrlIssuer::Lan) {
        Ok(der) => provisioning::crl_pem(&der),
        Err(e) => {
            log::error!("{} enrollment: cannot make the LAN revocation list: {e}", lan.uai);
            String::new()
        }
    };
    json(
        StatusCode::OK,
        &Enrolled {
            not_after: unix(chain.not_after),
            chain: chain.chain_pem,
            lan_chain: lan.chain_pem,
            ca: gateway.ca.root_cert_pem().to_string(),
            lan_crl,
        },
    )
}

//! The box's HTTPS client for enrollment with the regional gateway (EST, RFC 7030, JSON flavour), pinned to
//! the regional root of `identity/region-ca.crt`: no system root is ever trusted on the uplink.
//!
//! - `GET /.well-known/est/cacerts` → the regional root, PEM.
//! - `POST /.well-known/est/simpleenroll` `{"uai","token","csr","lan_csr","lan_names"}` → certificates, once
//!   per token (first contact, no client certificate).
//! - `POST /.well-known/est/simplereenroll` `{"csr","lan_csr","lan_names"}` over mutual TLS with the current
//!   box certificate → new certificates; the gateway takes the UAI from that certificate.
//!
//! - `GET /crl/lan.crl` → the LAN revocation list (DER), which the box serves to its school's PCs.
//!
//! Both enrollments answer `{"chain","lan_chain","ca","not_after","lan_crl"}`. Nothing the gateway returns is
//! stored before [`check_issued`] has verified it against the pinned root, the box's keys and its UAI (and the
//! list against the LAN intermediate, in `enroll::crl`).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};

use super::identity::pem_certificates;

/// Longest wait for the TCP and TLS connection to the gateway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a whole exchange: signing two certificates takes milliseconds, so anything slower is a
/// broken link, and the daemon's shutdown waits for an exchange in flight.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer read: two short chains, a root and a revocation list of a few thousand entries.
const MAX_RESPONSE: u64 = 1024 * 1024;

/// Why an exchange with the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Our own material (root, key, chain) cannot make a TLS configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Network, DNS, TLS handshake (a revoked, expired or unknown box certificate is refused here), timeout.
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// 401/403: the token is unknown, spent, expired or for another school; or the box is not recognised.
    #[error("{url}: refused ({status}): {message}")]
    Refused { url: String, status: u16, message: String },
    #[error("{url}: HTTP {status}: {message}")]
    Status { url: String, status: u16, message: String },
    /// The gateway answered something we will not store.
    #[error("{url}: unusable answer: {message}")]
    BadResponse { url: String, message: String },
}

/// `simpleenroll`'s body.
#[derive(Debug, Serialize)]
pub struct EnrollRequest<'a> {
    pub uai: &'a str,
    pub token: &'a str,
    pub csr: &'a str,
    pub lan_csr: &'a str,
    pub lan_names: &'a [String],
}

/// `simplereenroll`'s body: the UAI comes from the client certificate.
#[derive(Debug, Serialize)]
pub struct ReenrollRequest<'a> {
    pub csr: &'a str,
    pub lan_csr: &'a str,
    pub lan_names: &'a [String],
}

/// What both enrollments answer.
#[derive(Clone, Debug, Deserialize)]
pub struct Enrolled {
    /// The box client certificate then its intermediate, PEM.
    pub chain: String,
    /// The LAN server certificate then its intermediate, PEM.
    pub lan_chain: String,
    /// The regional root, PEM (informative: the pinned one is never replaced from the wire).
    #[serde(default)]
    pub ca: String,
    /// Unix seconds: expiry of the box certificate (informative: we read the certificate itself).
    #[serde(default)]
    pub not_after: u64,
    /// The LAN revocation list, PEM; empty from a gateway that sent none.
    #[serde(default)]
    pub lan_crl: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cert_ders(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let ders = pem_certificates(pem.as_bytes()).map_err(|e| format!("{what}: {e}"))?;
    if ders.is_empty() {
        return Err(format!("{what}: no certificate"));
    }
    Ok(ders.into_iter().map(CertificateDer::from).collect())
}

/// The pinned root as rustls' only trust anchor.
fn roots(root_pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for der in cert_ders(root_pem, "regional root")? {
        roots.add(der).map_err(|e| format!("regional root: {e}"))?;
    }
    Ok(roots)
}

/// A TLS 1.2+ client configuration whose only root is `root_pem`, presenting `client` (chain PEM, PKCS#8 key)
/// when given. rustls checks that the key matches the chain's leaf.
pub fn tls_config(root_pem: &str, client: Option<(&str, &[u8])>) -> Result<ClientConfig, ClientError> {
    let roots = roots(root_pem).map_err(ClientError::Config)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((chain_pem, key)) => {
            let chain = cert_ders(chain_pem, "box certificate").map_err(ClientError::Config)?;
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
            builder.with_client_auth_cert(chain, key).map_err(|e| ClientError::Config(format!("box certificate: {e}")))
        }
    }
}

/// One gateway, reached with one TLS configuration.
pub struct Gateway {
    agent: ureq::Agent,
    base: String,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Gateway {
    /// `base` is the configured `uplink.gateway`, `https://HOST[:PORT]`.
    pub fn new(base: &str, tls: ClientConfig) -> Gateway {
        let agent = ureq::AgentBuilder::new()
            .tls_config(Arc::new(tls))
            .https_only(true)
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout(EXCHANGE_TIMEOUT)
            // A gateway never redirects enrollment; following one would send the token elsewhere.
            .redirects(0)
            .build();
        Gateway { agent, base: base.trim_end_matches('/').to_owned() }
    }

    fn url(&self, op: &str) -> String {
        format!("{}/.well-known/est/{op}", self.base)
    }

    /// The regional root as the gateway serves it, PEM.
    pub fn cacerts(&self) -> Result<String, ClientError> {
        let url = self.url("cacerts");
        let response = self.agent.get(&url).call().map_err(|e| classify(&url, e))?;
        read_text(&url, response)
    }

    /// One authority's revocation list as the gateway publishes it, DER.
    pub fn crl(&self, issuer: provisioning::CrlIssuer) -> Result<Vec<u8>, ClientError> {
        use std::io::Read as _;
        let url = format!("{}{}", self.base, issuer.path());
        let response = self.agent.get(&url).call().map_err(|e| classify(&url, e))?;
        let mut der = Vec::new();
        response
            .into_reader()
            .take(MAX_RESPONSE)
            .read_to_end(&mut der)
            .map_err(|e| ClientError::Transport { url: url.clone(), message: e.to_string() })?;
        Ok(der)
    }

    /// First contact: spends the one-time token.
    pub fn enroll(&self, request: &EnrollRequest<'_>) -> Result<Enrolled, ClientError> {
        self.post("simpleenroll", request)
    }

    /// Renewal over mutual TLS (the configuration must carry the box certificate).
    pub fn reenroll(&self, request: &ReenrollRequest<'_>) -> Result<Enrolled, ClientError> {
        self.post("simplereenroll", request)
    }

    fn post(&self, op: &str, body: &impl Serialize) -> Result<Enrolled, ClientError> {
        let url = self.url(op);
        let body = serde_json::to_string(body)
            .map_err(|e| ClientError::BadResponse { url: url.clone(), message: e.to_string() })?;
        let response = self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .set("Accept", "application/json")
            .send_string(&body)
            .map_err(|e| classify(&url, e))?;
        let text = read_text(&url, response)?;
        serde_json::from_str(&text).map_err(|e| ClientError::BadResponse { url, message: format!("not JSON: {e}") })
    }
}

fn read_text(url: &str, response: ureq::Response) -> Result<String, ClientError> {
    use std::io::Read as _;
    let mut text = String::new();
    response
        .into_reader()
        .take(MAX_RESPONSE)
        .read_to_string(&mut text)
        .map_err(|e| ClientError::Transport { url: url.to_owned(), message: e.to_string() })?;
    Ok(text)
}

/// Sorts a ureq failure: the status and the gateway's `{"error"}` message when it answered, else the cause.
fn classify(url: &str, error: ureq::Error) -> ClientError {
    match error {
        ureq::Error::Status(status, response) => {
            let text = read_text(url, response).unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or_else(|_| text.chars().take(300).collect::<String>().trim().to_owned());
            let url = url.to_owned();
            match status {
                401 | 403 => ClientError::Refused { url, status, message },
                _ => ClientError::Status { url, status, message },
            }
        }
        ureq::Error::Transport(transport) => {
            // ureq's Display repeats the URL and nests the same words at each level; keep each fact once. The
            // innermost cause (a TLS alert such as `CertificateRevoked`) tells a technician what is at fault.
            let parts = [
                Some(transport.kind().to_string()),
                transport.message().map(str::to_owned),
                std::error::Error::source(&transport).map(ToString::to_string),
            ];
            let mut kept: Vec<String> = Vec::new();
            for part in parts.into_iter().flatten() {
                kept.retain(|k| !part.contains(k.as_str()));
                if !kept.iter().any(|k| k.contains(part.as_str())) {
                    kept.push(part);
                }
            }
            let message = kept.join(": ");
            ClientError::Transport { url: url.to_owned(), message }
        }
    }
}

/// Checks what the gateway signed before anything is stored: the box chain must lead to the pinned root as a
/// client certificate, be bound to `uai`, and match `box_key` (PKCS#8); the LAN chain must lead to the root as
/// a server certificate for `ent.<uai>.lan`, and match `lan_key`. Returns nothing: the caller stores the PEM.
pub fn check_issued(
    root_pem: &str,
    uai: &str,
    box_key: &[u8],
    lan_key: &[u8],
    issued: &Enrolled,
    url: &str,
) -> Result<(), ClientError> {
    let bad = |message: String| ClientError::BadResponse { url: url.to_owned(), message };
    let now = UnixTime::now();
    let roots = Arc::new(roots(root_pem).map_err(ClientError::Config)?);

    let chain = cert_ders(&issued.chain, "chain").map_err(bad)?;
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| bad("empty chain".into()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| ClientError::Config(e.to_string()))?;
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| bad(format!("box certificate does not lead to the pinned regional root: {e}")))?;
    match provisioning::uai_of_cert(leaf.as_ref()) {
        Some(bound) if bound == uai => {}
        other => return Err(bad(format!("box certificate bound to {other:?}, not to {uai}"))),
    }
    tls_config(root_pem, Some((&issued.chain, box_key)))
        .map_err(|e| bad(format!("box certificate is not for this box's key: {e}")))?;

    let lan = cert_ders(&issued.lan_chain, "lan_chain").map_err(bad)?;
    let (lan_leaf, lan_intermediates) = lan.split_first().ok_or_else(|| bad("empty lan_chain".into()))?;
    let name = format!("ent.{}.lan", uai.to_lowercase());
    let server_name = ServerName::try_from(name.clone()).map_err(|e| bad(format!("{name}: {e}")))?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| ClientError::Config(e.to_string()))?;
    server_verifier
        .verify_server_cert(lan_leaf, lan_intermediates, &server_name, &[], now)
        .map_err(|e| bad(format!("LAN certificate is not a certificate for {name} under the regional root: {e}")))?;
    // The same key-match check as for the client certificate, through a server configuration this time.
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(lan.clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(lan_key.to_vec())))
        .map_err(|e| bad(format!("LAN certificate is not for this box's LAN key: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisioning::{BoxKey, CertKind, RegionalCa, DEFAULT_LEAF_VALIDITY};

    struct Fixture {
        _tmp: tempfile::TempDir,
        ca: RegionalCa,
        box_key: BoxKey,
        lan_key: BoxKey,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = RegionalCa::init(&tmp.path().join("ca"), &["gw.example".into()]).expect("ca");
        let box_key = BoxKey::generate(&tmp.path().join("box.key")).expect("box key");
        let lan_key = BoxKey::generate(&tmp.path().join("lan.key")).expect("lan key");
        Fixture { _tmp: tmp, ca, box_key, lan_key }
    }

    fn issue(f: &Fixture, uai: &str, box_key: &BoxKey) -> Enrolled {
        let csr = box_key.csr_pem(uai, CertKind::Box, &[]).expect("csr");
        let chain = f.ca.issue_box_cert(csr.as_bytes(), uai, DEFAULT_LEAF_VALIDITY).expect("box");
        let names = vec![format!("ent.{}.lan", uai.to_lowercase())];
        let lan_csr = f.lan_key.csr_pem(uai, CertKind::Lan, &names).expect("lan csr");
        let lan = f.ca.issue_lan_cert(lan_csr.as_bytes(), uai, &names, DEFAULT_LEAF_VALIDITY).expect("lan");
        Enrolled {
            chain: chain.chain_pem,
            lan_chain: lan.chain_pem,
            ca: f.ca.root_cert_pem().into(),
            not_after: 0,
            lan_crl: String::new(),
        }
    }

    #[test]
    fn issued_certificates_are_checked() {
        let f = fixture();
        let root = f.ca.root_cert_pem();
        let (box_key, lan_key) = (f.box_key.pkcs8_der(), f.lan_key.pkcs8_der());
        let good = issue(&f, "0123456A", &f.box_key);
        check_issued(root, "0123456A", box_key, lan_key, &good, "u").expect("good certificates pass");

        // Bound to another school.
        let err = check_issued(root, "7654321B", box_key, lan_key, &good, "u").expect_err("other UAI");
        assert!(err.to_string().contains("bound to"), "{err}");

        // Signed for another key.
        let other_key = BoxKey::generate(&f._tmp.path().join("other.key")).expect("key");
        let stolen = issue(&f, "0123456A", &other_key);
        check_issued(root, "0123456A", box_key, lan_key, &stolen, "u").expect_err("another key");

        // LAN chain where the box chain should be.
        let swapped = Enrolled { chain: good.lan_chain.clone(), ..good.clone() };
        check_issued(root, "0123456A", box_key, lan_key, &swapped, "u").expect_err("server cert as client");

        // Another region's root.
        let other = fixture();
        check_issued(other.ca.root_cert_pem(), "0123456A", box_key, lan_key, &good, "u").expect_err("other root");
    }

    #[test]
    fn tls_config_pins_and_checks_the_key() {
        let f = fixture();
        let good = issue(&f, "0123456A", &f.box_key);
        tls_config(f.ca.root_cert_pem(), None).expect("no client auth");
        tls_config(f.ca.root_cert_pem(), Some((&good.chain, f.box_key.pkcs8_der()))).expect("client auth");
        tls_config(f.ca.root_cert_pem(), Some((&good.chain, f.lan_key.pkcs8_der()))).expect_err("wrong key");
        assert!(matches!(tls_config("garbage", None), Err(ClientError::Config(_))));
    }
}

//! The gateway's TLS: its own certificate, TLS 1.2 and 1.3 only with rustls' modern suites, and client
//! certificates checked against the box intermediate and the revocation list.
//!
//! Users at home connect without a certificate (the portal); a box presents the one it got at enrollment.
//! The configuration is rebuilt when the CA's index changes (a revocation, a renewal), so a revoked box is
//! refused at its next connection without restarting the gateway.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use provisioning::RegionalCa;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use crate::server::TlsSource;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("regional CA: {0}")]
    Ca(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Files whose change means the configuration must be rebuilt.
const WATCHED: [&str; 2] = ["issued.json", "gateway.pem"];

pub struct GatewayTls {
    dir: PathBuf,
    current: Mutex<(Vec<Option<SystemTime>>, Arc<ServerConfig>)>,
}

fn stamps(dir: &Path) -> Vec<Option<SystemTime>> {
    WATCHED.iter().map(|f| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok()).collect()
}

impl GatewayTls {
    pub fn new(dir: &Path) -> Result<GatewayTls, TlsError> {
        let stamps = stamps(dir);
        let config = build(dir)?;
        Ok(GatewayTls { dir: dir.to_owned(), current: Mutex::new((stamps, Arc::new(config))) })
    }
}

impl TlsSource for GatewayTls {
    fn config(&self) -> Arc<ServerConfig> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamps(&self.dir);
        if now != current.0 {
            match build(&self.dir) {
                Ok(config) => {
                    log::info!("gateway TLS reloaded (revocation list or certificate changed)");
                    *current = (now, Arc::new(config));
                }
                // Keep serving with the last good configuration; the next connection tries again.
                Err(e) => log::error!("cannot reload the gateway's TLS configuration: {e}"),
            }
        }
        current.1.clone()
    }
}

fn build(dir: &Path) -> Result<ServerConfig, TlsError> {
    let ca = RegionalCa::open(dir).map_err(|e| TlsError::Ca(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    // Trust the box intermediate alone: a LAN or gateway certificate of the same root is no box.
    roots.add(CertificateDer::from(ca.box_ca_cert_der().to_vec())).map_err(|e| TlsError::Config(e.to_string()))?;
    let crl = ca.crl_der().map_err(|e| TlsError::Ca(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls([CertificateRevocationListDer::from(crl)])
        .only_check_end_entity_revocation()
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let chain_pem = ca.gateway_cert_chain_pem().map_err(|e| TlsError::Ca(e.to_string()))?;
    let key_pem = ca.gateway_key_pem().map_err(|e| TlsError::Ca(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Config(format!("gateway certificate: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Config(format!("gateway key: {e}")))?;
    let config = crate::server::tls_builder()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(LoggingVerifier(verifier)))
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(crate::server::tls_finish(config))
}

/// The webpki verifier, plus one log line naming the school when a box's certificate is refused (revoked,
/// expired, from another CA): the technician on the phone needs the UAI, not a serial number.
#[derive(Debug)]
struct LoggingVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for LoggingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now).inspect_err(|e| {
            let uai = provisioning::uai_of_cert(end_entity.as_ref()).unwrap_or_else(|| "?".into());
            log::warn!("{uai} box certificate refused: {e}");
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

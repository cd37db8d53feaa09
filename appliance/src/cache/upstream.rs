//! The cache's HTTP client toward the outside: HTTPS with rustls, trusting the system's authorities plus the
//! ones the configuration adds (a region's own CA), connections kept open between requests.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

pub type RequestBody = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{path}: {message}")]
    CaFile { path: String, message: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    /// No answer: connection refused, name unknown, timeout. The uplink may be down.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An answer that is not HTTP, or cut in its head.
    #[error("invalid response: {0}")]
    Invalid(String),
}

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    timeout: Duration,
}

impl Upstream {
    pub fn new(config: &firmware_config::Cache, base: &Path) -> Result<Upstream, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        for path in &config.ca_files {
            let path = if path.is_absolute() { path.clone() } else { base.join(path) };
            let name = path.display().to_string();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
                .map_err(|e| UpstreamError::CaFile { path: name.clone(), message: e.to_string() })?
                .collect::<Result<_, _>>()
                .map_err(|e| UpstreamError::CaFile { path: name.clone(), message: e.to_string() })?;
            if certs.is_empty() {
                return Err(UpstreamError::CaFile { path: name, message: "no certificate in this file".into() });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| UpstreamError::CaFile { path: name.clone(), message: e.to_string() })?;
            }
        }
        log::debug!("cache: {added} system certificate authorities, {} configured", config.ca_files.len());
        let tls =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| UpstreamError::Tls(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(config.upstream_timeout.0));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https);
        Ok(Upstream { client, timeout: config.upstream_timeout.0 })
    }

    /// Sends a request and waits for the response head (not the body) at most the configured time.
    pub async fn send(
        &self,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamError::Unreachable(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            ))),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Unreachable(chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Invalid(chain(&e))),
        }
    }
}

/// An error with its causes, for the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

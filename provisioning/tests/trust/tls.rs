//! A real rustls handshake between a box and the gateway over an in-memory pipe, set up the way the appliance
//! must: the gateway serves its chain, trusts only the box-client intermediate for clients, with the CRL
//! (end-entity check); the box trusts the region's root and presents its chain. Proves the gateway refuses a
//! revoked box, a box of another region and a LAN certificate, and reads the UAI of a good box.

use std::sync::Arc;

use provisioning::{uai_of_cert, BoxKey, CertKind};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::util::{self, Region, DAY, GATEWAY_NAME, OTHER_UAI, UAI};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    util::pem_certs(pem).into_iter().map(CertificateDer::from).collect()
}

fn pkcs8(pem: &str) -> PrivateKeyDer<'static> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("key pem");
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(block.contents))
}

/// The gateway's TLS configuration, built from the CA as it is now (rebuild after each revocation).
fn gateway_config(region: &Region) -> Arc<ServerConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(region.ca.box_ca_cert_der().to_vec())).expect("box CA as client anchor");
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls([util::crl(region.ca.crl_der().expect("crl"))])
        .only_check_end_entity_revocation()
        .build()
        .expect("client verifier");
    let chain = certs(&region.ca.gateway_cert_chain_pem().expect("gateway chain"));
    let key = pkcs8(&region.ca.gateway_key_pem().expect("gateway key"));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server cert");
    Arc::new(config)
}

/// A box's TLS configuration: trusts `root_der`, presents `chain_pem` with its key.
fn box_config(root_der: &[u8], chain_pem: &str, key: &BoxKey) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root_der.to_vec())).expect("root");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(chain_pem), key)
        .expect("client cert");
    Arc::new(config)
}

/// Runs one connection. Returns the gateway's view (the UAI it bound the connection to, or why it refused)
/// and whether the box got the gateway's reply.
async fn connect(gateway: Arc<ServerConfig>, client: Arc<ClientConfig>) -> (Result<Option<String>, String>, bool) {
    let (box_end, gateway_end) = tokio::io::duplex(64 * 1024);
    let serve = async move {
        let mut tls = TlsAcceptor::from(gateway).accept(gateway_end).await.map_err(|e| e.to_string())?;
        let uai = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| uai_of_cert(c));
        tls.write_all(b"bonjour").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok(uai)
    };
    let call = async move {
        let name = ServerName::try_from(GATEWAY_NAME).expect("name").to_owned();
        let Ok(mut tls) = TlsConnector::from(client).connect(name, box_end).await else { return false };
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.is_ok() && reply == b"bonjour"
    };
    tokio::join!(serve, call)
}

#[tokio::test]
async fn gateway_accepts_a_good_box_and_refuses_revoked_foreign_and_lan_certificates() {
    let region = Region::new();
    let (key, issued) = region.enrolled_box("a", UAI);
    let good = box_config(region.ca.root_cert_der(), &issued.chain_pem, &key);

    let (gateway_view, box_ok) = connect(gateway_config(&region), good.clone()).await;
    assert_eq!(gateway_view, Ok(Some(UAI.to_owned())), "the gateway binds the connection to the box's UAI");
    assert!(box_ok, "the box verified the gateway's certificate against the region's root");

    // Another school's box is still fine after the first is revoked; the first is refused at the handshake.
    let (other_key, other_issued) = region.enrolled_box("b", OTHER_UAI);
    region.ca.revoke_uai(UAI).expect("revoke");
    let gateway = gateway_config(&region);
    let (gateway_view, box_ok) = connect(gateway.clone(), good).await;
    assert!(gateway_view.is_err(), "revoked box accepted: {gateway_view:?}");
    assert!(!box_ok);
    let other = box_config(region.ca.root_cert_der(), &other_issued.chain_pem, &other_key);
    assert_eq!(connect(gateway.clone(), other).await.0, Ok(Some(OTHER_UAI.to_owned())));

    // A box enrolled in another region (its own root, its own intermediates).
    let foreign_region = Region::new();
    let (foreign_key, foreign) = foreign_region.enrolled_box("c", "1111111C");
    let foreign_box = box_config(region.ca.root_cert_der(), &foreign.chain_pem, &foreign_key);
    let (gateway_view, _) = connect(gateway.clone(), foreign_box).await;
    assert!(gateway_view.is_err(), "foreign box accepted: {gateway_view:?}");

    // A LAN server certificate of this region, presented as a client certificate.
    let lan_key = region.box_key("d");
    let names = vec!["relais.college.lan".to_owned()];
    let csr = lan_key.csr_pem("2222222D", CertKind::Lan, &names).expect("csr");
    let lan = region.ca.issue_lan_cert(csr.as_bytes(), "2222222D", &names, DAY).expect("lan");
    let lan_as_client = box_config(region.ca.root_cert_der(), &lan.chain_pem, &lan_key);
    let (gateway_view, _) = connect(gateway.clone(), lan_as_client).await;
    assert!(gateway_view.is_err(), "LAN certificate accepted as a box: {gateway_view:?}");

    // A box provisioned for another region does not trust this gateway.
    let (k, i) = region.enrolled_box("e", "3333333E");
    let misprovisioned = box_config(foreign_region.ca.root_cert_der(), &i.chain_pem, &k);
    let (_, box_ok) = connect(gateway, misprovisioned).await;
    assert!(!box_ok, "the box must refuse a gateway its root did not sign");
}

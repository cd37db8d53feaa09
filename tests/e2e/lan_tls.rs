//! HTTPS on the school LAN with real handshakes against the real binary: the self-signed certificate of a box
//! that is not provisioned (stable across restarts, trusted through `/ca.crt`, `Secure` cookies), the LAN
//! certificate of an enrolled box (verified against the regional root alone, renewed without a restart), old
//! protocols and plain HTTP refused on the HTTPS port, and the plain-HTTP redirect listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::trust::{apply_ok, identity, leaf_der, wait_enrolled, UAI};
use crate::util::*;

/// A box on loopback that serves HTTPS anyway, with the redirect listener on another ephemeral port.
const TLS_ON: &str = "[lan]\ntls = \"on\"\nhttp_redirect = \"127.0.0.1:0\"\n";

/// The address of the redirect listener of the current run, from its `redirecting http://ADDR` line.
fn redirect_addr(relais: &Relais) -> SocketAddr {
    let mut found = None;
    wait_until("the `redirecting http://` line", Duration::from_secs(10), || {
        found = relais.stdout_lines().iter().find_map(|l| l.split("redirecting http://").nth(1).map(str::to_owned));
        found.is_some()
    });
    let addr = found.expect("found");
    addr.trim().parse().unwrap_or_else(|e| panic!("redirecting http://{addr}: {e}"))
}

/// `GET path` over plain HTTP on `addr` (the redirect listener), with `Host: host` when given.
fn plain_get(addr: SocketAddr, path: &str, host: Option<&str>) -> RawResp {
    let head = match host {
        Some(host) => format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        // HTTP/1.0 allows a request without Host: the listener must still know where to send it.
        None => format!("GET {path} HTTP/1.0\r\n\r\n"),
    };
    raw_exchange(addr, &head, b"").unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
}

/// The certificates of a PEM text, DER.
fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().expect("PEM certificates");
    assert!(!certs.is_empty(), "no certificate in {:?}", String::from_utf8_lossy(pem));
    certs
}

/// The certificates of `roots_pem` as the only trust anchors (no system roots).
fn roots(roots_pem: &[u8]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in certs(roots_pem) {
        roots.add(cert).expect("a usable trust anchor");
    }
    roots
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that trusts the certificates of `roots_pem` and nothing else.
fn trusting(roots_pem: &[u8]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots(roots_pem))
        .with_no_client_auth();
    // What a browser offers: the server must pick the protocol it speaks.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What a completed handshake showed.
struct Handshake {
    chain: Vec<CertificateDer<'static>>,
    version: rustls::ProtocolVersion,
    suite: rustls::CipherSuite,
    alpn: Option<Vec<u8>>,
}

/// A TLS handshake with `addr` as `server_name` under `config`; `Err` when it fails (untrusted, refused…).
fn handshake(addr: SocketAddr, server_name: &str, config: Arc<ClientConfig>) -> Result<Handshake, String> {
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok(Handshake {
        chain: conn.peer_certificates().map(<[_]>::to_vec).unwrap_or_default(),
        version: conn.protocol_version().expect("negotiated"),
        suite: conn.negotiated_cipher_suite().expect("negotiated").suite(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// Serial (hex) and end (unix seconds) of a certificate.
fn serial_and_end(der: &[u8]) -> (String, i64) {
    let (_, cert) = X509Certificate::from_der(der).expect("certificate");
    (cert.raw_serial_as_string(), cert.validity().not_after.timestamp())
}

#[track_caller]
fn assert_ca_download(resp: &RawResp) {
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/x-x509-ca-cert"), "{resp:?}");
    assert_eq!(resp.header("content-disposition"), Some("attachment; filename=\"relais-ca.crt\""), "{resp:?}");
    assert!(resp.text().starts_with("-----BEGIN CERTIFICATE-----"), "PEM: {resp:?}");
}

#[test]
fn a_box_before_provisioning_serves_https_with_a_stable_self_signed_certificate() {
    let mut relais = Relais::start(TLS_ON);
    assert!(relais.url("/").starts_with("https://127.0.0.1:"), "the startup line says https: {}", relais.url("/"));

    // The technician's way in: the certificate over plain HTTP, then HTTPS trusting only it.
    let ca = plain_get(redirect_addr(&relais), "/ca.crt", Some("127.0.0.1"));
    assert_ca_download(&ca);
    let key = std::fs::metadata(relais.data_dir().join("tls/selfsigned.key")).expect("the self-signed key");
    assert_eq!(key.permissions().mode() & 0o777, 0o600, "the key is the box's secret");
    let tls = trusting(&ca.body);
    let first = handshake(relais.addr(), "127.0.0.1", tls.clone()).expect("a client trusting /ca.crt connects");
    assert_eq!(first.chain.first().map(|c| c.to_vec()), Some(certs(&ca.body)[0].to_vec()), "the served certificate");
    assert_eq!(first.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(first.alpn.as_deref(), Some(&b"http/1.1"[..]), "ALPN: the protocol the server speaks");
    handshake(relais.addr(), "localhost", tls.clone()).expect("the certificate names localhost too");

    // Logged in over TLS, the session cookie never leaves in clear.
    let mut client = relais.anonymous().with_tls(tls.clone());
    let resp = client.login("admin", ADMIN_PASSWORD);
    assert_eq!(resp.status, 200, "{resp:?}");
    let cookie = session_set_cookie(&resp).expect("a session cookie");
    assert!(cookie.split(';').any(|a| a.trim() == "Secure"), "Secure cookie under TLS: {cookie}");
    assert_eq!(client.me()["login"], "admin");
    let page = relais.anonymous().with_tls(tls.clone()).call("GET", "/connexion").expect_status(200);
    let csrf = page.header("set-cookie").expect("the login form's CSRF cookie");
    assert!(csrf.split(';').any(|a| a.trim() == "Secure"), "the login form's cookie is Secure too: {csrf}");
    assert!(resp.header("strict-transport-security").is_none(), "no HSTS with a self-signed certificate");
    assert_eq!(client.call("GET", "/ca.crt").expect_status(200).body, ca.body, "/ca.crt over HTTPS is the same");
    // A client with only the public roots does not trust the box.
    let err = Client::try_send(relais.anonymous().request("GET", "/healthz"), None).expect_err("untrusted");
    assert!(err.to_lowercase().contains("unknownissuer") || err.contains("certificate"), "{err}");

    // The same certificate after a restart: a browser's exception and installed certificates stay good.
    relais.restart();
    let again = handshake(relais.addr(), "127.0.0.1", tls.clone()).expect("still trusted after a restart");
    assert_eq!(again.chain[0], first.chain[0], "the same certificate across restarts");
    assert_eq!(plain_get(redirect_addr(&relais), "/ca.crt", None).body, ca.body);
    client.me();
}

#[test]
fn an_enrolled_box_serves_its_lan_certificate_and_picks_up_a_renewal() {
    // One-minute certificates: the box renews after 30 s.
    let mut region = Region::init(Some("[region]\ncertificate_validity = \"1m\"\n"));
    region.serve();
    let root_pem = std::fs::read(region.ca_dir().join("root.crt")).expect("regional root");
    // The gateway's /ca.crt is the regional root too.
    let gateway: SocketAddr = region.url().trim_start_matches("https://").parse().expect("gateway address");
    let tls = trusting(&root_pem);
    handshake(gateway, "localhost", tls.clone()).expect("the gateway is trusted through the root");
    let agent = ureq::AgentBuilder::new().tls_config(tls.clone()).timeout(Duration::from_secs(30)).build();
    let served = Client::finish(agent.get(&format!("{}/ca.crt", region.url())).call()).expect("gateway /ca.crt");
    assert_eq!((served.status, certs(&served.body)), (200, certs(&root_pem)), "the gateway hands out its root");

    let mut relais = Relais::unstarted("", Some(ADMIN_PASSWORD));
    apply_ok(&region.bundle(UAI, "École du test", None, &[]), &relais.data_dir(), &[]);
    let provisioned = std::fs::read_to_string(relais.data_dir().join("relais.toml")).expect("provisioned config");
    let config = provisioned
        .replace("tls = \"auto\"", "tls = \"on\"")
        .replace("http_redirect = \"\"", "http_redirect = \"127.0.0.1:0\"");
    assert!(config.contains("tls = \"on\"") && config.contains("127.0.0.1:0"), "edited config:\n{config}");
    std::fs::write(relais.config_path(), config).expect("write config");
    relais.respawn();
    let pid = relais.pid();
    wait_enrolled(&relais);

    let ca = plain_get(redirect_addr(&relais), "/ca.crt", Some("ent.0123456a.lan"));
    assert_ca_download(&ca);
    assert_eq!(certs(&ca.body), certs(&root_pem), "a provisioned box hands out the regional root");
    let name = format!("ent.{}.lan", UAI.to_lowercase());
    let lan_ca = certs(&std::fs::read(region.ca_dir().join("lan-ca.crt")).expect("LAN intermediate"));
    let lan_crt = identity(&relais.data_dir()).join("lan.crt");
    let served = handshake(relais.addr(), &name, tls.clone()).expect("the LAN certificate verifies against the root");
    assert_eq!(served.chain[0].as_ref(), leaf_der(&lan_crt), "the box's LAN certificate");
    assert_eq!(served.chain.get(1), lan_ca.first(), "sent with the LAN intermediate");
    let (serial, end) = serial_and_end(&served.chain[0]);
    assert!(handshake(relais.addr(), "127.0.0.1", tls.clone()).is_err(), "not a name of the LAN certificate");

    // The renewal lands on disk; the next connection gets it, from the same process.
    wait_until("the LAN certificate is renewed", Duration::from_secs(120), || {
        leaf_der(&lan_crt) != served.chain[0].as_ref()
    });
    let renewed = handshake(relais.addr(), &name, tls).expect("the renewed certificate verifies");
    assert_eq!(renewed.chain[0].as_ref(), leaf_der(&lan_crt), "the renewed certificate is served");
    let (new_serial, new_end) = serial_and_end(&renewed.chain[0]);
    assert_ne!(new_serial, serial, "a new certificate");
    assert!(new_end > end, "it ends later: {new_end} vs {end}");
    assert_eq!(relais.pid(), pid, "without a restart");
}

/// A ClientHello that offers TLS 1.1 at most (no `supported_versions`), with CBC suites of that era; with
/// `signature_algorithms` (a TLS 1.2 extension some TLS 1.1 clients send anyway) or without (as OpenSSL does).
fn tls11_client_hello(signature_algorithms: bool) -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x06, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-ECDSA/RSA-AES128-SHA, AES128-SHA
    body.extend([0x01, 0x00]); // null compression
    let mut extensions = vec![
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported_groups: P-256
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
    ];
    if signature_algorithms {
        extensions.extend([0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]); // ecdsa_secp256r1_sha256
    }
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01, 0, 0, 0]; // ClientHello, 24-bit length
    handshake[1..4].copy_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends `bytes` and reads what comes back until the server closes (within 10 s).
fn exchange_bytes(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut sock = raw_connect(addr);
    sock.write_all(bytes).expect("send");
    let mut reader = RawReader::new(sock);
    assert!(reader.closed_within(Duration::from_secs(10)), "the server closes the connection");
    reader.pending().to_vec()
}

#[test]
fn old_protocols_and_plain_http_are_refused_on_the_https_port() {
    let relais = Relais::start(TLS_ON);
    let ca = plain_get(redirect_addr(&relais), "/ca.crt", None);
    let tls = trusting(&ca.body);

    // One fatal alert record and the connection closed; never a ServerHello. The alert is protocol_version
    // (70) when the hello is otherwise one rustls can read, handshake_failure (40) when it lacks what TLS 1.2
    // requires.
    for (signature_algorithms, alert) in [(true, 70), (false, 40)] {
        let answer = exchange_bytes(relais.addr(), &tls11_client_hello(signature_algorithms));
        let fatal = answer.len() == 7 && answer[0] == 0x15 && answer[5] == 2;
        assert!(fatal && answer[6] == alert, "TLS 1.1 answer: {answer:02x?}");
    }

    let answer = exchange_bytes(relais.addr(), b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP gets no HTTP answer: {:?}", String::from_utf8_lossy(&answer));

    // A TLS 1.2-only client is served (with a forward-secret AEAD suite).
    let tls12 = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots(&ca.body))
        .with_no_client_auth();
    let shake = handshake(relais.addr(), "127.0.0.1", Arc::new(tls12)).expect("TLS 1.2 is served");
    assert_eq!(shake.version, rustls::ProtocolVersion::TLSv1_2);

    // The server keeps serving everyone else.
    relais.anonymous().with_tls(tls).call("GET", "/healthz").expect_status(200);
    let log = relais.stderr_tail();
    assert!(log.matches("TLS handshake with").count() >= 3, "each refusal is logged:\n{log}");
}

#[test]
fn the_server_chooses_the_cipher_suite() {
    let relais = Relais::start(TLS_ON);
    let ca = plain_get(redirect_addr(&relais), "/ca.crt", None);
    use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256};
    use rustls::crypto::ring::cipher_suite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    };
    // The same two suites offered in both orders get the same answer: the server's order decides (which
    // one depends on the CPU, see `server::tls_builder`), so a client cannot steer it.
    for (version, suites) in [
        (&rustls::version::TLS13, [TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256]),
        (
            &rustls::version::TLS12,
            [TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
        ),
    ] {
        let chosen: Vec<_> = [suites.to_vec(), suites.iter().rev().copied().collect()]
            .into_iter()
            .map(|cipher_suites| {
                let provider =
                    rustls::crypto::CryptoProvider { cipher_suites, ..rustls::crypto::ring::default_provider() };
                let config = ClientConfig::builder_with_provider(Arc::new(provider))
                    .with_protocol_versions(&[version])
                    .expect("version")
                    .with_root_certificates(roots(&ca.body))
                    .with_no_client_auth();
                handshake(relais.addr(), "127.0.0.1", Arc::new(config)).expect("handshake").suite
            })
            .collect();
        assert_eq!(chosen[0], chosen[1], "{version:?}: the server's choice, whatever the client's order");
    }
}

#[test]
fn the_redirect_listener_sends_browsers_to_https() {
    let mut relais = Relais::start(&format!("{TLS_ON}names = [\"relais.ecole.lan\"]\n"));
    let redirect = redirect_addr(&relais);
    let https_port = relais.addr().port();

    let health = plain_get(redirect, "/healthz", Some("127.0.0.1"));
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));
    let ca = plain_get(redirect, "/ca.crt", Some("127.0.0.1"));
    assert_ca_download(&ca);
    let over_https = relais.anonymous().with_tls(trusting(&ca.body)).call("GET", "/ca.crt").expect_status(200);
    assert_eq!(over_https.body, ca.body, "the same bytes on both listeners");

    for (host, expected) in [
        (Some(format!("127.0.0.1:{}", redirect.port())), format!("https://127.0.0.1:{https_port}/api/me?x=1")),
        (Some("ent.0123456a.lan".to_string()), format!("https://ent.0123456a.lan:{https_port}/api/me?x=1")),
        (None, format!("https://relais.ecole.lan:{https_port}/api/me?x=1")),
    ] {
        let resp = plain_get(redirect, "/api/me?x=1", host.as_deref());
        assert_eq!(resp.status, 308, "{host:?}: {resp:?}");
        assert_eq!(resp.header("location"), Some(expected.as_str()), "{host:?}");
    }
    // A form posted to the old address is redirected without its body being read.
    let head = raw_head("POST", "/connexion", &[("Content-Length", "1000000".into())]);
    let resp = raw_exchange(redirect, &head, b"").expect("an answer before the body");
    assert_eq!(resp.status, 308);

    // It stops with the server.
    assert!(relais.stop().success(), "clean exit");
    assert!(TcpStream::connect_timeout(&redirect, Duration::from_secs(2)).is_err(), "the redirect listener is closed");
}

#[test]
fn a_plain_box_has_no_redirect_and_no_certificate_to_hand_out() {
    // tls = "auto" on loopback: plain HTTP, and `http_redirect` has nowhere to send anyone.
    let relais = Relais::start("[lan]\nhttp_redirect = \"127.0.0.1:0\"\n");
    assert!(relais.url("/").starts_with("http://"), "{}", relais.url("/"));
    relais.anonymous().call("GET", "/ca.crt").expect_status(404);
    assert!(!relais.data_dir().join("tls").exists(), "no self-signed certificate is made for plain HTTP");
    assert!(relais.stdout_lines().iter().all(|l| !l.contains("redirecting")), "{:?}", relais.stdout_lines());
    let mut sock = raw_connect(relais.addr());
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut answer = String::new();
    sock.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

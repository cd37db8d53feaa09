//! Revocation lists with the real binary: the gateway publishes each authority's list over plain HTTP (and
//! HTTPS) at the URL its certificates name, a `relais region revoke` shows in them from the next request, and an
//! enrolled box serves its copy of the LAN list at the URL its LAN certificate names, on the plain-HTTP
//! listener and on the portal, with the gateway gone too.
//!
//! Certificates name hosts on port 80 (`http://localhost/crl/gateway.crl`, `http://ent.<uai>.lan/crl/lan.crl`);
//! the tests fetch exactly those URLs with a resolver that sends every host to 127.0.0.1 and the port of the
//! listener under test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use provisioning::{check_crl, distribution_points, BoxKey, CertKind, CrlIssuer, RegionalCa, CRL_CONTENT_TYPE};

use crate::trust::{apply_ok, identity, leaf_der, wait_enrolled, UAI};
use crate::util::*;

const OTHER_UAI: &str = "7654321B";

/// What one GET returned: status, `Content-Type`, body.
type Fetched = (u16, Option<String>, Vec<u8>);

/// GET `url` as written in a certificate, but connected to 127.0.0.1:`port` (a resolver for every host), over
/// HTTPS pinned to `root_pem` when the URL is `https://`.
fn fetch(url: &str, port: u16, root_pem: Option<&str>) -> Fetched {
    let mut builder = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .redirects(0)
        .resolver(move |_: &str| Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]));
    if let Some(root) = root_pem {
        let tls = relais::enroll::client::tls_config(root, None).expect("TLS client config");
        builder = builder.tls_config(Arc::new(tls));
    }
    let response = match builder.build().get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("GET {url} (on port {port}): {e}"),
    };
    let status = response.status();
    let content_type = response.header("content-type").map(str::to_owned);
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut response.into_reader(), &mut body).expect("read the body");
    (status, content_type, body)
}

/// A list as served: 200, `application/pkix-crl`, signed by `issuer_der`; returns the serials it lists.
#[track_caller]
fn served_list(fetched: &Fetched, issuer_der: &[u8], what: &str) -> Vec<String> {
    let (status, content_type, body) = fetched;
    assert_eq!(*status, 200, "{what}: {}", String::from_utf8_lossy(body));
    assert_eq!(content_type.as_deref(), Some(CRL_CONTENT_TYPE), "{what}");
    check_crl(body, issuer_der).unwrap_or_else(|e| panic!("{what}: {e}")).revoked
}

/// The port of a `redirecting http://ADDR` announcement among `lines`.
fn redirect_port(lines: &[String]) -> Option<u16> {
    lines.iter().find_map(|line| {
        let addr = line.split("redirecting http://").nth(1)?.split_whitespace().next()?;
        addr.parse::<SocketAddr>().ok().map(|a| a.port())
    })
}

/// The first certificate of a PEM file, DER.
fn first_cert(pem: &str) -> Vec<u8> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).next().expect("a PEM block").expect("valid PEM").contents
}

/// A LAN certificate and a box certificate for `uai`, issued by the region's CA directly (as the gateway would).
fn issue_for(ca: &RegionalCa, keys: &std::path::Path, uai: &str) -> (String, String) {
    let key = BoxKey::generate(&keys.join(format!("{uai}.key"))).expect("key");
    let day = Duration::from_secs(86_400);
    let names = vec![format!("ent.{}.lan", uai.to_lowercase())];
    let boxed = ca.issue_box_cert(key.csr_pem(uai, CertKind::Box, &[]).expect("csr").as_bytes(), uai, day);
    let lan = ca.issue_lan_cert(key.csr_pem(uai, CertKind::Lan, &names).expect("csr").as_bytes(), uai, &names, day);
    (boxed.expect("box certificate").serial, lan.expect("LAN certificate").serial)
}

#[test]
fn the_gateway_publishes_each_list_where_its_certificates_say_and_a_revocation_at_once() {
    let mut region = Region::init(Some("[lan]\nhttp_redirect = \"127.0.0.1:0\"\n"));
    region.serve();
    let mut http_port = None;
    wait_until("the gateway's plain-HTTP listener", Duration::from_secs(10), || {
        http_port = redirect_port(&region.stderr_tail().lines().map(str::to_owned).collect::<Vec<_>>());
        http_port.is_some()
    });
    let http_port = http_port.expect("found");
    let https_port = region.url().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("gateway port");
    let ca = RegionalCa::open(&region.ca_dir()).expect("the region's CA");
    let root = ca.root_cert_pem().to_string();

    // The certificate the gateway presents names its list on the gateway, over plain HTTP.
    let gateway_leaf = first_cert(&ca.gateway_cert_chain_pem().expect("gateway chain"));
    assert_eq!(distribution_points(&gateway_leaf), ["http://localhost/crl/gateway.crl"]);

    // Every list at the URL the certificates name, on the plain-HTTP listener; the same over HTTPS.
    for issuer in CrlIssuer::ALL {
        let url = ca.crl_url(issuer);
        let what = format!("{url} (plain HTTP)");
        let plain = fetch(&url, http_port, None);
        assert!(served_list(&plain, ca.crl_issuer_cert_der(issuer), &what).is_empty(), "{what}: nothing revoked");
        let https = fetch(&url.replace("http://", "https://"), https_port, Some(&root));
        served_list(&https, ca.crl_issuer_cert_der(issuer), &format!("{url} over HTTPS"));
        assert_eq!(https.2, plain.2, "{url}: the same list on both listeners");
    }
    assert_eq!(fetch("http://localhost/crl/other.crl", http_port, None).0, 404);
    assert_eq!(fetch("http://localhost/api/me", http_port, None).0, 308, "anything else goes to HTTPS");

    // `relais region revoke --uai` lists the school's box and LAN certificates from the next request, without
    // a restart; the other school's stay off the lists.
    let keys = tempfile::tempdir().expect("tempdir");
    let (box_serial, lan_serial) = issue_for(&ca, keys.path(), OTHER_UAI);
    let (kept_box, kept_lan) = issue_for(&ca, keys.path(), UAI);
    region.revoke(OTHER_UAI);
    let listed = |issuer: CrlIssuer| {
        served_list(&fetch(&ca.crl_url(issuer), http_port, None), ca.crl_issuer_cert_der(issuer), issuer.file_name())
    };
    assert_eq!(listed(CrlIssuer::Box), vec![box_serial]);
    assert_eq!(listed(CrlIssuer::Lan), vec![lan_serial]);
    assert!(!listed(CrlIssuer::Box).contains(&kept_box) && !listed(CrlIssuer::Lan).contains(&kept_lan));
    assert!(listed(CrlIssuer::Gateway).is_empty());
}

#[test]
fn an_enrolled_box_serves_the_lan_list_its_certificate_names_even_without_the_uplink() {
    // One-minute certificates: each renewal (every 30 s) brings the box a fresh list.
    let mut region = Region::init(Some("[region]\ncertificate_validity = \"1m\"\n"));
    region.serve();
    let ca = RegionalCa::open(&region.ca_dir()).expect("the region's CA");
    let root = ca.root_cert_pem().to_string();
    let lan_ca = ca.crl_issuer_cert_der(CrlIssuer::Lan).to_vec();

    let mut relais = Relais::unstarted("", Some(ADMIN_PASSWORD));
    apply_ok(&region.bundle(UAI, "École du test", None, &[]), &relais.data_dir(), &[]);
    let provisioned = std::fs::read_to_string(relais.data_dir().join("relais.toml")).expect("provisioned config");
    let config = provisioned
        .replace("tls = \"auto\"", "tls = \"on\"")
        .replace("http_redirect = \"\"", "http_redirect = \"127.0.0.1:0\"");
    std::fs::write(relais.config_path(), config).expect("write config");
    relais.respawn();
    wait_enrolled(&relais);
    let copy = identity(&relais.data_dir()).join("lan-ca.crl");
    wait_until("the box keeps the LAN list", Duration::from_secs(30), || copy.exists());
    let mut http_port = None;
    wait_until("the box's plain-HTTP listener", Duration::from_secs(10), || {
        http_port = redirect_port(&relais.stdout_lines());
        http_port.is_some()
    });
    let http_port = http_port.expect("found");

    // The LAN certificate names the box itself, by the school's name, over plain HTTP.
    let lan_leaf = leaf_der(&identity(&relais.data_dir()).join("lan.crt"));
    let url = "http://ent.0123456a.lan/crl/lan.crl";
    assert_eq!(distribution_points(&lan_leaf), [url]);
    let plain = fetch(url, http_port, None);
    assert!(served_list(&plain, &lan_ca, "the box's list on plain HTTP").is_empty());
    assert_eq!(plain.2, std::fs::read(&copy).expect("the copy"), "the copy it keeps");
    let https = fetch(&url.replace("http://", "https://"), relais.addr().port(), Some(&root));
    served_list(&https, &lan_ca, "the box's list on the portal (HTTPS)");
    assert_eq!(fetch("http://ent.0123456a.lan/crl/box.crl", http_port, None).0, 404, "a box serves the LAN list only");

    // Another school's box is revoked: the list the school's PCs get from this box names its LAN certificate
    // once this box has renewed (or fetched the list, daily).
    let keys = tempfile::tempdir().expect("tempdir");
    let (_, revoked_lan) = issue_for(&ca, keys.path(), OTHER_UAI);
    region.revoke(OTHER_UAI);
    wait_until("the box serves a list naming the revoked LAN certificate", Duration::from_secs(120), || {
        let fetched = fetch(url, http_port, None);
        fetched.0 == 200 && check_crl(&fetched.2, &lan_ca).is_ok_and(|info| info.revoked.contains(&revoked_lan))
    });

    // The uplink is gone: the school's PCs still get the list from the box.
    region.kill();
    let offline = fetch(url, http_port, None);
    assert!(served_list(&offline, &lan_ca, "the box's list without the gateway").contains(&revoked_lan));
}

#[test]
fn a_box_without_a_list_says_so() {
    let relais = Relais::start("");
    for path in ["/crl/lan.crl", "/crl/box.crl", "/crl/"] {
        relais.anonymous().call("GET", path).expect_status(404);
    }
}

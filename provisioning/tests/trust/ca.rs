//! The regional CA: its folder and key modes, what it issues (chain, validity, UAI binding, SANs), and
//! revocation through the index and the CRL.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use provisioning::{uai_of_cert, CaError, CertKind, DiskError, RegionalCa};
use x509_parser::extensions::GeneralName;
use x509_parser::parse_x509_crl;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::util::{self, Region, DAY, GATEWAY_NAME, OTHER_UAI, UAI};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn init_writes_private_keys_and_open_refuses_a_loose_one() {
    let region = Region::new();
    for key in ["root.key", "box-ca.key", "lan-ca.key", "gateway-ca.key", "gateway.pem", "issued.json"] {
        assert_eq!(mode(&region.dir.join(key)), 0o600, "{key}");
    }
    for cert in ["root.crt", "box-ca.crt", "lan-ca.crt", "gateway-ca.crt"] {
        assert_eq!(mode(&region.dir.join(cert)), 0o644, "{cert}");
    }
    assert_eq!(mode(&region.dir), 0o700);
    let reopened = RegionalCa::open(&region.dir).expect("open");
    assert_eq!(reopened.root_fingerprint(), region.ca.root_fingerprint());
    assert_eq!(region.ca.root_fingerprint().len(), 64);

    // A second init on the same folder is refused, and nothing is replaced.
    let again = RegionalCa::init(&region.dir, &[GATEWAY_NAME.to_owned()]);
    assert!(matches!(again, Err(CaError::AlreadyInitialised { .. })), "{again:?}");
    assert_eq!(RegionalCa::open(&region.dir).expect("open").root_fingerprint(), region.ca.root_fingerprint());

    let root_key = region.dir.join("root.key");
    std::fs::set_permissions(&root_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = RegionalCa::open(&region.dir).expect_err("a 0644 root key must be refused");
    assert!(matches!(err, CaError::Disk(DiskError::LooseMode { mode: 0o644, .. })), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("root.key") && message.contains("0644"), "{message}");

    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(RegionalCa::open(empty.path()), Err(CaError::NotInitialised { .. })));
}

#[test]
fn box_certificate_chains_to_the_root_with_the_validity_asked_and_the_uai() {
    let region = Region::new();
    let key = region.box_key("a");
    let csr = key.csr_pem(UAI, CertKind::Box, &[]).expect("csr");
    let before = util::unix_now();
    let validity = 30 * DAY;
    let issued = region.ca.issue_box_cert(csr.as_bytes(), UAI, validity).expect("issue");
    let after = util::unix_now();

    // The chain rustls will check: leaf ← box intermediate ← root, for client authentication.
    util::webpki_verify(&issued.chain_pem, region.ca.root_cert_der(), webpki::KeyUsage::client_auth(), &[])
        .expect("box chain verifies to the root");
    util::webpki_verify(&issued.chain_pem, region.ca.box_ca_cert_der(), webpki::KeyUsage::client_auth(), &[])
        .expect("box chain verifies to the box intermediate alone");
    // A box certificate is no server certificate.
    assert!(util::webpki_verify(&issued.chain_pem, region.ca.root_cert_der(), webpki::KeyUsage::server_auth(), &[])
        .is_err());

    // The same, signature by signature, with x509-parser.
    let chain = util::pem_certs(&issued.chain_pem);
    assert_eq!(chain.len(), 2);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).expect("leaf");
    let (_, inter) = X509Certificate::from_der(&chain[1]).expect("intermediate");
    let (_, root) = X509Certificate::from_der(region.ca.root_cert_der()).expect("root");
    leaf.verify_signature(Some(inter.public_key())).expect("leaf signed by the intermediate");
    inter.verify_signature(Some(root.public_key())).expect("intermediate signed by the root");
    root.verify_signature(None).expect("root self-signed");
    assert!(inter.subject().to_string().contains("box client CA"), "{}", inter.subject());
    assert_eq!(chain[0], issued.cert_der);

    // Validity: ends exactly `validity` after issuance, starts at most BACKDATE before; never rcgen's default.
    let not_before = leaf.validity().not_before.timestamp() as u64;
    let not_after = leaf.validity().not_after.timestamp() as u64;
    assert_eq!(not_after, util::unix(issued.not_after));
    assert_eq!(not_before, util::unix(issued.not_before));
    assert!(not_after >= before + validity.as_secs() && not_after <= after + validity.as_secs());
    assert!(not_before <= before && not_before + provisioning::BACKDATE.as_secs() >= before);
    assert!(leaf.validity().not_before.to_datetime().year() > 2000);
    assert!(leaf.validity().not_after.to_datetime().year() < 2100);
    // CA certificates: root ~10 years, intermediates ~5.
    let years = |c: &X509Certificate<'_>| {
        (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) as f64 / (365.0 * 86_400.0)
    };
    assert!((years(&root) - 10.0).abs() < 0.1, "{}", years(&root));
    assert!((years(&inter) - 5.0).abs() < 0.1, "{}", years(&inter));

    // The UAI, where the gateway reads it; the serial, as recorded.
    assert_eq!(uai_of_cert(&issued.cert_der).as_deref(), Some(UAI));
    assert_eq!(leaf.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()), Some(UAI));
    assert_eq!(provisioning::fingerprint(&[]).len(), 64);
    assert_eq!(leaf.raw_serial().iter().map(|b| format!("{b:02x}")).collect::<String>(), issued.serial);
    let record = region.ca.certificate(&issued.serial).expect("index").expect("recorded");
    assert_eq!((record.uai.as_str(), record.kind, record.revoked_at), (UAI, CertKind::Box, None));
    assert_eq!(record.not_after, not_after);

    // The default and the limits of validity.
    let d = region.ca.issue_box_cert(csr.as_bytes(), UAI, provisioning::DEFAULT_LEAF_VALIDITY).expect("90 days");
    assert_eq!(util::unix(d.not_after) - util::unix(d.not_before), 90 * 86_400 + provisioning::BACKDATE.as_secs());
    for bad in [Duration::ZERO, 400 * DAY] {
        assert!(matches!(region.ca.issue_box_cert(csr.as_bytes(), UAI, bad), Err(CaError::BadValidity(_))));
    }
}

#[test]
fn csr_must_be_valid_and_for_the_same_school() {
    let region = Region::new();
    let key = region.box_key("a");
    let csr = key.csr_pem(UAI, CertKind::Box, &[]).expect("csr");
    // DER is accepted as well as PEM.
    let der = util::pem_certs(&csr).remove(0);
    region.ca.issue_box_cert(&der, UAI, DAY).expect("DER CSR");

    let err = region.ca.issue_box_cert(csr.as_bytes(), OTHER_UAI, DAY).expect_err("CN of another school");
    assert!(matches!(err, CaError::CsrMismatch { .. }), "{err:?}");
    assert!(matches!(region.ca.issue_box_cert(csr.as_bytes(), "123", DAY), Err(CaError::BadUai(_))));
    assert!(matches!(region.ca.issue_box_cert(b"garbage", UAI, DAY), Err(CaError::BadCsr(_))));
    // A CSR whose signature does not match its key (one byte of the signature changed).
    let mut tampered = der.clone();
    let last = tampered.len() - 3;
    tampered[last] ^= 0x01;
    assert!(matches!(region.ca.issue_box_cert(&tampered, UAI, DAY), Err(CaError::BadCsr(_))));
}

#[test]
fn lan_certificate_has_the_names_asked() {
    let region = Region::new();
    let key = region.box_key("a");
    let names = vec!["relais.college.lan".to_owned(), "192.168.10.2".to_owned(), "fd00::2".to_owned()];
    let csr = key.csr_pem(UAI, CertKind::Lan, &names).expect("csr");
    let issued = region.ca.issue_lan_cert(csr.as_bytes(), UAI, &names, 90 * DAY).expect("issue LAN");
    assert_eq!(issued.kind, CertKind::Lan);

    let (_, leaf) = X509Certificate::from_der(&issued.cert_der).expect("leaf");
    let san = leaf.subject_alternative_name().expect("san ext").expect("san present");
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(dns, vec!["relais.college.lan"]);
    let v6: std::net::Ipv6Addr = "fd00::2".parse().expect("v6");
    assert_eq!(ips, vec![vec![192, 168, 10, 2], v6.octets().to_vec()]);
    // A LAN certificate does not carry the box's identity for the gateway.
    assert_eq!(uai_of_cert(&issued.cert_der), None);

    // It verifies as a server certificate for those names, chained to the root, and is no client certificate.
    util::webpki_verify(&issued.chain_pem, region.ca.root_cert_der(), webpki::KeyUsage::server_auth(), &[])
        .expect("LAN chain");
    let leaf_der = rustls::pki_types::CertificateDer::from(issued.cert_der.clone());
    let end_entity = webpki::EndEntityCert::try_from(&leaf_der).expect("ee");
    for name in ["relais.college.lan", "192.168.10.2"] {
        let server_name = rustls::pki_types::ServerName::try_from(name).expect("name");
        end_entity.verify_is_valid_for_subject_name(&server_name).expect(name);
    }
    assert!(util::webpki_verify(&issued.chain_pem, region.ca.root_cert_der(), webpki::KeyUsage::client_auth(), &[])
        .is_err());

    assert!(matches!(
        region.ca.issue_lan_cert(csr.as_bytes(), UAI, &[GATEWAY_NAME.to_owned()], DAY),
        Err(CaError::ReservedName(_))
    ));
    assert!(matches!(region.ca.issue_lan_cert(csr.as_bytes(), UAI, &[], DAY), Err(CaError::NoNames)));
    assert!(matches!(
        region.ca.issue_lan_cert(csr.as_bytes(), UAI, &["not a name".to_owned()], DAY),
        Err(CaError::BadName(_))
    ));
}

#[test]
fn gateway_certificate_serves_its_names() {
    let region = Region::new();
    let chain = region.ca.gateway_cert_chain_pem().expect("gateway chain");
    util::webpki_verify(&chain, region.ca.root_cert_der(), webpki::KeyUsage::server_auth(), &[]).expect("gateway");
    let leaf_der = rustls::pki_types::CertificateDer::from(util::pem_certs(&chain).remove(0));
    let end_entity = webpki::EndEntityCert::try_from(&leaf_der).expect("ee");
    for name in [GATEWAY_NAME, "127.0.0.1"] {
        end_entity
            .verify_is_valid_for_subject_name(&rustls::pki_types::ServerName::try_from(name).expect("n"))
            .expect(name);
    }
    let chain_der = util::pem_certs(&chain);
    let (_, inter) = X509Certificate::from_der(&chain_der[1]).expect("intermediate");
    assert!(inter.subject().to_string().contains("gateway CA"), "{}", inter.subject());
    let key = region.ca.gateway_key_pem().expect("key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n") && !key.contains("CERTIFICATE"), "{key}");
    assert_eq!(util::pem_certs(&chain).len(), 2);
    // The gateway's key is refused when its file is loose, like every key.
    let file = region.dir.join("gateway.pem");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    assert!(matches!(region.ca.gateway_key_pem(), Err(CaError::Disk(DiskError::LooseMode { .. }))));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let renewed = region.ca.renew_gateway_cert(10 * DAY).expect("renew");
    assert_eq!(region.ca.gateway_cert_chain_pem().expect("chain"), renewed.chain_pem);
    assert_eq!(region.ca.certificate(&renewed.serial).expect("index").map(|r| r.kind), Some(CertKind::Gateway));
}

#[test]
fn revoking_a_school_lists_its_certificates_in_the_crl() {
    let region = Region::new();
    let (_, first) = region.enrolled_box("a", UAI);
    let (_, second) = region.enrolled_box("a2", UAI);
    let (_, other) = region.enrolled_box("b", OTHER_UAI);

    // Before any revocation the CRL is valid and empty.
    let empty = region.ca.crl_der().expect("crl");
    let (_, parsed) = parse_x509_crl(&empty).expect("CRL parses");
    assert_eq!(parsed.iter_revoked_certificates().count(), 0);

    let mut revoked = region.ca.revoke_uai(UAI).expect("revoke");
    revoked.sort();
    let mut expected = vec![first.serial.clone(), second.serial.clone()];
    expected.sort();
    assert_eq!(revoked, expected);
    // Again: nothing new to revoke.
    assert!(region.ca.revoke_uai(UAI).expect("revoke again").is_empty());
    assert!(region.ca.certificate(&first.serial).expect("index").and_then(|r| r.revoked_at).is_some());

    let der = region.ca.crl_der().expect("crl");
    let (_, crl) = parse_x509_crl(&der).expect("CRL parses");
    let listed: Vec<String> =
        crl.iter_revoked_certificates().map(|r| r.raw_serial().iter().map(|b| format!("{b:02x}")).collect()).collect();
    assert!(listed.contains(&first.serial) && listed.contains(&second.serial), "{listed:?}");
    assert!(!listed.contains(&other.serial));
    // Signed by the box-client intermediate.
    let (_, box_ca) = X509Certificate::from_der(region.ca.box_ca_cert_der()).expect("box ca");
    assert_eq!(crl.issuer(), box_ca.subject());
    crl.verify_signature(box_ca.public_key()).expect("CRL signature by the box intermediate");

    // The verifier rustls uses agrees: revoked boxes fail, the other school's box passes.
    let crls = [der];
    let verify =
        |chain: &str| util::webpki_verify(chain, region.ca.box_ca_cert_der(), webpki::KeyUsage::client_auth(), &crls);
    assert!(matches!(verify(&first.chain_pem), Err(webpki::Error::CertRevoked)));
    assert!(matches!(verify(&second.chain_pem), Err(webpki::Error::CertRevoked)));
    verify(&other.chain_pem).expect("not revoked");

    // Revoking by serial; unknown serials are an error; serials may be pasted with colons.
    let colons: String = other
        .serial
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    region.ca.revoke_serial(&colons).expect("revoke by serial");
    assert!(matches!(region.ca.revoke_serial("00ff"), Err(CaError::UnknownSerial(_))));
    let crls = [region.ca.crl_der().expect("crl")];
    assert!(matches!(
        util::webpki_verify(&other.chain_pem, region.ca.box_ca_cert_der(), webpki::KeyUsage::client_auth(), &crls),
        Err(webpki::Error::CertRevoked)
    ));

    // The index is plain JSON, private, and survives reopening.
    assert_eq!(mode(&region.dir.join("issued.json")), 0o600);
    let reopened = RegionalCa::open(&region.dir).expect("open");
    assert_eq!(reopened.certificates().expect("list").len(), 3 + 1 /* gateway */);
}

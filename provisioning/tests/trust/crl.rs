//! Revocation lists: every certificate the region signs names where its list is published (the gateway for
//! intermediates, box and gateway certificates; the box itself for LAN certificates), each authority signs a
//! list of its own, and revoking a school lists its box and LAN certificates where their checkers look.

use provisioning::{
    check_crl, distribution_points, CaError, CertKind, CrlError, CrlIssuer, CrlUrlError, Issued, RegionalCa,
};

use crate::util::{self, Region, DAY, GATEWAY_NAME, OTHER_UAI, UAI};

/// A LAN certificate for `uai` with `names`.
fn lan_cert(region: &Region, key_name: &str, uai: &str, names: &[String]) -> Issued {
    let key = region.box_key(key_name);
    let csr = key.csr_pem(uai, CertKind::Lan, names).expect("csr");
    region.ca.issue_lan_cert(csr.as_bytes(), uai, names, 30 * DAY).expect("issue LAN cert")
}

fn leaf(issued: &Issued) -> Vec<u8> {
    issued.cert_der.clone()
}

#[test]
fn every_certificate_names_where_its_list_is() {
    let region = Region::new();
    let base = format!("http://{GATEWAY_NAME}");
    assert_eq!(region.ca.crl_base(), base, "the first gateway name, port 80");

    // Intermediates: the root's list, on the gateway.
    for file in ["box-ca.crt", "lan-ca.crt", "gateway-ca.crt"] {
        let pem = std::fs::read_to_string(region.dir.join(file)).expect("intermediate");
        let der = &util::pem_certs(&pem)[0];
        assert_eq!(distribution_points(der), [format!("{base}/crl/root.crl")], "{file}");
    }
    // The root is a trust anchor: nothing checks it against a list.
    assert!(distribution_points(region.ca.root_cert_der()).is_empty());

    // Box client and gateway certificates: their intermediate's list, on the gateway.
    let (_, boxed) = region.enrolled_box("a", UAI);
    assert_eq!(distribution_points(&leaf(&boxed)), [format!("{base}/crl/box.crl")]);
    let gateway = util::pem_certs(&region.ca.gateway_cert_chain_pem().expect("gateway chain"))[0].clone();
    assert_eq!(distribution_points(&gateway), [format!("{base}/crl/gateway.crl")]);

    // LAN certificates: the box itself, at each of its names, the school's name first.
    let names = vec!["ent.0123456a.lan".to_owned(), "relais.ecole.lan".to_owned(), "192.168.1.10".to_owned()];
    let lan = lan_cert(&region, "lan", UAI, &names);
    assert_eq!(
        distribution_points(&leaf(&lan)),
        [
            "http://ent.0123456a.lan/crl/lan.crl",
            "http://relais.ecole.lan/crl/lan.crl",
            "http://192.168.1.10/crl/lan.crl"
        ]
    );
    for issuer in CrlIssuer::ALL {
        assert_eq!(region.ca.crl_url(issuer), format!("{base}/crl/{}", issuer.file_name()));
    }
}

#[test]
fn the_list_url_is_chosen_at_init_and_must_be_plain_http() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let names = vec![GATEWAY_NAME.to_owned()];
    let ca =
        RegionalCa::init_with_crl_base(&tmp.path().join("ca"), &names, Some("http://pki.region.test:8080/relais/"))
            .expect("init");
    assert_eq!(ca.crl_url(CrlIssuer::Box), "http://pki.region.test:8080/relais/crl/box.crl");
    let reopened = RegionalCa::open(ca.dir()).expect("open");
    assert_eq!(reopened.crl_base(), "http://pki.region.test:8080/relais", "kept in ca.json");
    let gateway = util::pem_certs(&ca.gateway_cert_chain_pem().expect("chain"))[0].clone();
    assert_eq!(distribution_points(&gateway), ["http://pki.region.test:8080/relais/crl/gateway.crl"]);

    let refused = RegionalCa::init_with_crl_base(&tmp.path().join("https"), &names, Some("https://gw.region.test"));
    assert!(matches!(refused, Err(CaError::CrlUrl(CrlUrlError::NotHttp(_)))), "{refused:?}");
    assert!(!tmp.path().join("https").join("ca.json").exists(), "nothing made");

    // A CA made before the lists existed has no crl_base in ca.json: it publishes under its first name.
    let meta_path = ca.dir().join("ca.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).expect("ca.json")).expect("json");
    meta.as_object_mut().expect("object").remove("crl_base").expect("crl_base was written");
    std::fs::write(&meta_path, serde_json::to_vec(&meta).expect("json")).expect("write");
    assert_eq!(RegionalCa::open(ca.dir()).expect("open an older CA").crl_base(), format!("http://{GATEWAY_NAME}"));
}

#[test]
fn each_authority_signs_its_own_list() {
    let region = Region::new();
    for issuer in CrlIssuer::ALL {
        let der = region.ca.crl(issuer).expect("crl");
        let info = check_crl(&der, region.ca.crl_issuer_cert_der(issuer)).unwrap_or_else(|e| panic!("{issuer:?}: {e}"));
        assert!(info.revoked.is_empty(), "{issuer:?}: nothing revoked yet");
        let now = util::unix_now();
        assert!(info.this_update <= now && info.next_update.is_some_and(|n| n > now + 86_400), "{issuer:?}: {info:?}");
        // Checked against another authority, it is refused.
        let other = if issuer == CrlIssuer::Lan { CrlIssuer::Box } else { CrlIssuer::Lan };
        let err = check_crl(&der, region.ca.crl_issuer_cert_der(other)).expect_err("wrong issuer");
        assert!(matches!(err, CrlError::WrongIssuer { .. }), "{issuer:?}: {err}");
    }
    // A list whose signature is broken is refused even with the right issuer name.
    let mut der = region.ca.crl(CrlIssuer::Lan).expect("crl");
    let last = der.len() - 3;
    der[last] ^= 0x55;
    assert!(check_crl(&der, region.ca.crl_issuer_cert_der(CrlIssuer::Lan)).is_err());
    assert!(matches!(check_crl(b"not a crl", region.ca.crl_issuer_cert_der(CrlIssuer::Lan)), Err(CrlError::Parse(_))));
}

#[test]
fn revoking_a_school_lists_its_box_and_lan_certificates() {
    let region = Region::new();
    let (_, boxed) = region.enrolled_box("a", UAI);
    let names = vec!["ent.0123456a.lan".to_owned()];
    let lan = lan_cert(&region, "lan-a", UAI, &names);
    let other_names = vec!["ent.7654321b.lan".to_owned()];
    let other_lan = lan_cert(&region, "lan-b", OTHER_UAI, &other_names);

    let mut revoked = region.ca.revoke_uai(UAI).expect("revoke");
    revoked.sort();
    let mut expected = vec![boxed.serial.clone(), lan.serial.clone()];
    expected.sort();
    assert_eq!(revoked, expected, "the box's client and LAN certificates");

    let listed = |issuer: CrlIssuer| {
        let der = region.ca.crl(issuer).expect("crl");
        check_crl(&der, region.ca.crl_issuer_cert_der(issuer)).expect("signed by its authority").revoked
    };
    assert_eq!(listed(CrlIssuer::Box), vec![boxed.serial.clone()]);
    assert_eq!(listed(CrlIssuer::Lan), vec![lan.serial.clone()], "the LAN list, not the other school's");
    assert!(listed(CrlIssuer::Gateway).is_empty() && listed(CrlIssuer::Root).is_empty());

    // What a PC's verifier does with the list the box serves: the revoked LAN certificate fails, the other
    // school's passes (the lists carry no issuing distribution point, so they are authoritative for every
    // certificate of their authority, whatever URL it names).
    let crls = [region.ca.crl(CrlIssuer::Lan).expect("crl")];
    let verify =
        |chain: &str| util::webpki_verify(chain, region.ca.root_cert_der(), webpki::KeyUsage::server_auth(), &crls);
    assert!(matches!(verify(&lan.chain_pem), Err(webpki::Error::CertRevoked)));
    verify(&other_lan.chain_pem).expect("the other school's LAN certificate is not revoked");

    // The gateway's certificate goes on the gateway's list.
    let renewed = region.ca.renew_gateway_cert(10 * DAY).expect("renew");
    region.ca.revoke_serial(&renewed.serial).expect("revoke the gateway certificate");
    assert_eq!(listed(CrlIssuer::Gateway), vec![renewed.serial.clone()]);
}

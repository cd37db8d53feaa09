//! Certificate revocation lists: which authority signs which list, where each list is published (the CRL
//! distribution point URLs written into the certificates), and the check a box makes of a list before it keeps
//! a copy to serve.
//!
//! | list | signed by | lists | URL in the certificates it covers |
//! |---|---|---|---|
//! | `root.crl` | root | revoked intermediates | `<crl base>/crl/root.crl`, in the three intermediates |
//! | `box.crl` | box-client intermediate | revoked box client certificates | `<crl base>/crl/box.crl` |
//! | `gateway.crl` | gateway intermediate | revoked gateway certificates | `<crl base>/crl/gateway.crl` |
//! | `lan.crl` | LAN intermediate | revoked LAN certificates, every school's | `http://<LAN name>/crl/lan.crl`, one per name of the certificate, `ent.<uai>.lan` first |
//!
//! The `<crl base>` is the gateway's, chosen at `relais region init` (`http://<first gateway name>` unless
//! `--crl-url` says otherwise) and kept in `ca.json`: every certificate carries it for its whole life. The
//! gateway serves the four lists, fresh, on its plain-HTTP listener (`[lan] http_redirect`, port 80 in
//! production) and on its HTTPS one. A LAN certificate points at the box that presents it instead: the school's
//! PCs are the ones who check it, and they must be able to while the uplink is down, so the box keeps a copy of
//! `lan.crl` (fetched from the gateway at each enrollment and renewal, and daily) and serves it on the school
//! LAN. A PC that checks the box's certificate reaches the box, or it would not be checking.
//!
//! Why `http://` and never `https://`: a list is signed by the authority it speaks for, so TLS adds nothing to
//! its integrity, and an `https://` URL on the gateway would make checking the gateway's own certificate need a
//! TLS connection to the gateway first (a loop verifiers break by skipping the check or by failing). RFC 5280
//! (§4.2.1.13) and the CA/Browser Forum's baseline requirements expect `http://` distribution points.

use std::net::IpAddr;

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// The path under which every list is served, on the gateway and on the box: `/crl/<issuer>.crl`.
pub const CRL_PATH_PREFIX: &str = "/crl/";

/// The media type of a DER CRL over HTTP (RFC 5280 §4.2.1.13, RFC 2585).
pub const CRL_CONTENT_TYPE: &str = "application/pkix-crl";

/// Which authority's list: one per certificate authority of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrlIssuer {
    /// The root's list, of revoked intermediates.
    Root,
    /// The box-client intermediate's, of revoked box client certificates (the gateway checks it in-process).
    Box,
    /// The LAN-server intermediate's, of revoked LAN certificates; boxes keep a copy for their school's PCs.
    Lan,
    /// The gateway intermediate's, of revoked gateway certificates.
    Gateway,
}

impl CrlIssuer {
    pub const ALL: [CrlIssuer; 4] = [CrlIssuer::Root, CrlIssuer::Box, CrlIssuer::Lan, CrlIssuer::Gateway];

    /// The list's file name in URLs: `root.crl`, `box.crl`, `lan.crl`, `gateway.crl`.
    pub fn file_name(self) -> &'static str {
        match self {
            CrlIssuer::Root => "root.crl",
            CrlIssuer::Box => "box.crl",
            CrlIssuer::Lan => "lan.crl",
            CrlIssuer::Gateway => "gateway.crl",
        }
    }

    /// The list a file name names (the last segment of a `/crl/…` path).
    pub fn from_file_name(name: &str) -> Option<CrlIssuer> {
        CrlIssuer::ALL.into_iter().find(|issuer| issuer.file_name() == name)
    }

    /// The path the list is served at: `/crl/<file name>`.
    pub fn path(self) -> String {
        format!("{CRL_PATH_PREFIX}{}", self.file_name())
    }
}

/// Why a CRL base URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum CrlUrlError {
    #[error(
        "« {0} »: the revocation lists' URL must be http://HOST[:PORT][/PATH] (plain HTTP: the lists are signed, \
         and an https:// URL would need TLS to the gateway to check the gateway's own certificate)"
    )]
    NotHttp(String),
    #[error("« {0} » is not a usable URL for the revocation lists: a host, an optional port and path, nothing else")]
    Malformed(String),
}

/// Why a CRL received from elsewhere is not kept.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("not an X.509 CRL: {0}")]
    Parse(String),
    #[error("not a certificate: {0}")]
    Issuer(String),
    #[error("issued by « {crl} », not by « {expected} »")]
    WrongIssuer { crl: String, expected: String },
    #[error("its signature does not verify with the intermediate's key: {0}")]
    BadSignature(String),
}

/// `http://<name>` for the first gateway name (IPv6 literals in brackets): the default CRL base.
pub fn default_crl_base(gateway_names: &[String]) -> String {
    let host = gateway_names.first().map(String::as_str).unwrap_or("localhost");
    format!("http://{}", url_host(host))
}

/// Checks a CRL base URL and returns it without a trailing `/`: `http://`, a host (a DNS name, an IPv4
/// literal, or an IPv6 literal in brackets), an optional port, an optional path; no query, fragment or
/// user information.
pub fn check_crl_base(url: &str) -> Result<String, CrlUrlError> {
    let url = url.trim();
    let malformed = || CrlUrlError::Malformed(url.to_owned());
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        _ => return Err(CrlUrlError::NotHttp(url.to_owned())),
    };
    let rest = rest.trim_end_matches('/');
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = if let Some(inner) = authority.strip_prefix('[') {
        let (ip, port) = inner.split_once(']').ok_or_else(malformed)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| malformed())?;
        check_port(port).ok_or_else(malformed)?;
        ip
    } else {
        let (host, port) = authority.split_once(':').map_or((authority, ""), |(h, p)| (h, p));
        check_port(if port.is_empty() && authority.contains(':') { ":" } else { port }).ok_or_else(malformed)?;
        host
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
    let path_ok = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-._~%".contains(&b));
    if !host_ok || !path_ok {
        return Err(malformed());
    }
    Ok(format!("http://{}{}", authority.to_ascii_lowercase(), path))
}

/// `""` or `":PORT"` (PORT a number from 1 to 65535) → `Some(())`.
fn check_port(port: &str) -> Option<()> {
    if port.is_empty() {
        return Some(());
    }
    let number: u16 = port.strip_prefix(':').unwrap_or(port).parse().ok()?;
    (number > 0).then_some(())
}

/// A host as it goes into a URL: IPv6 literals in brackets.
fn url_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.to_owned(),
    }
}

/// `<base>/crl/<issuer>.crl`.
pub fn crl_url(base: &str, issuer: CrlIssuer) -> String {
    format!("{}{}", base.trim_end_matches('/'), issuer.path())
}

/// The distribution points of a LAN certificate: `http://<name>/crl/lan.crl` for each of its names, in order
/// (`ent.<uai>.lan` comes first). Each is the box itself on the school LAN, reached the way the PC reached it:
/// a school without DNS for `ent.<uai>.lan` that uses the box's IP address finds the list at that address.
pub fn lan_crl_urls(names: &[String]) -> Vec<String> {
    names.iter().map(|name| format!("http://{}{}", url_host(name), CrlIssuer::Lan.path())).collect()
}

/// The URIs of a certificate's CRL distribution points, in order; empty when it has none.
pub fn distribution_points(cert_der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return Vec::new();
    };
    let mut uris = Vec::new();
    for extension in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(points) = extension.parsed_extension() {
            for point in points.iter() {
                if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                    for name in names {
                        if let GeneralName::URI(uri) = name {
                            uris.push((*uri).to_owned());
                        }
                    }
                }
            }
        }
    }
    uris
}

/// What a checked CRL says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// `thisUpdate`, unix seconds: of two lists of the same authority, the later one is the newer.
    pub this_update: u64,
    /// `nextUpdate`, unix seconds.
    pub next_update: Option<u64>,
    /// The serials it lists, lowercase hex as in the CA's index.
    pub revoked: Vec<String>,
}

/// Checks that `crl` (DER) is a CRL signed by the authority whose certificate is `issuer_der`, and says what
/// it holds. Freshness is the caller's business: an old list is still better than none to a PC.
pub fn check_crl(crl: &[u8], issuer_der: &[u8]) -> Result<CrlInfo, CrlError> {
    let (_, issuer) = X509Certificate::from_der(issuer_der).map_err(|e| CrlError::Issuer(e.to_string()))?;
    let (rest, list) = CertificateRevocationList::from_der(crl).map_err(|e| CrlError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CrlError::Parse(format!("{} bytes after the list", rest.len())));
    }
    if list.issuer() != issuer.subject() {
        return Err(CrlError::WrongIssuer { crl: list.issuer().to_string(), expected: issuer.subject().to_string() });
    }
    list.verify_signature(issuer.public_key()).map_err(|e| CrlError::BadSignature(e.to_string()))?;
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok(CrlInfo {
        this_update: secs(list.last_update().timestamp()),
        next_update: list.next_update().map(|t| secs(t.timestamp())),
        revoked: list.iter_revoked_certificates().map(|r| crate::ca::hex(r.raw_serial())).collect(),
    })
}

/// A DER CRL as PEM (`X509 CRL`), how it travels in JSON.
pub fn crl_pem(der: &[u8]) -> String {
    crate::ca::pem_encode("X509 CRL", der)
}

/// The DER of a CRL given as PEM (`X509 CRL`) or DER.
pub fn crl_der_of(bytes: &[u8]) -> Result<Vec<u8>, CrlError> {
    crate::ca::der_of(bytes, &["X509 CRL"]).map_err(CrlError::Parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_base_urls_are_checked() {
        for (given, kept) in [
            ("http://gw.region.fr", "http://gw.region.fr"),
            ("http://GW.region.fr:8080/", "http://gw.region.fr:8080"),
            ("HTTP://10.0.0.1/pki", "http://10.0.0.1/pki"),
            ("http://[::1]:80", "http://[::1]:80"),
        ] {
            assert_eq!(check_crl_base(given).expect(given), kept);
        }
        assert!(matches!(check_crl_base("https://gw.region.fr"), Err(CrlUrlError::NotHttp(_))));
        assert!(matches!(check_crl_base("gw.region.fr"), Err(CrlUrlError::NotHttp(_))));
        for bad in
            ["http://", "http://gw:0", "http://gw:x", "http://gw/a?b", "http://u@gw", "http://[zz]", "http://g w"]
        {
            assert!(matches!(check_crl_base(bad), Err(CrlUrlError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn urls_name_the_list() {
        assert_eq!(default_crl_base(&["::1".into()]), "http://[::1]");
        assert_eq!(crl_url("http://gw/", CrlIssuer::Box), "http://gw/crl/box.crl");
        assert_eq!(
            lan_crl_urls(&["ent.0123456a.lan".into(), "192.168.1.2".into(), "fe80::1".into()]),
            ["http://ent.0123456a.lan/crl/lan.crl", "http://192.168.1.2/crl/lan.crl", "http://[fe80::1]/crl/lan.crl"]
        );
        for issuer in CrlIssuer::ALL {
            assert_eq!(CrlIssuer::from_file_name(issuer.file_name()), Some(issuer));
        }
        assert_eq!(CrlIssuer::from_file_name("other.crl"), None);
    }
}

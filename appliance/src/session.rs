//! Portal sessions, kept server-side so that logout and expiry are real.
//!
//! The browser holds a random token in the `relais_session` cookie; the store keeps only the token's blake3
//! hash, so neither the database nor a log line can be replayed as a session.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

pub const COOKIE: &str = "relais_session";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub login: String,
    /// Unix milliseconds.
    pub expires: i64,
    /// Token the portal's forms carry to prove they come from our own pages (CSRF).
    pub csrf: String,
}

impl Session {
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires
    }
}

/// A new random token: 256 bits, URL-safe.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The store key for a token.
pub fn key(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Finds a cookie's value in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Compares two secrets in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes())
}

pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let h = "a=1; relais_session=abc; b=2";
        assert_eq!(cookie(h, COOKIE), Some("abc"));
        assert_eq!(cookie("relais_session_x=1", COOKIE), None);
    }

    #[test]
    fn tokens_are_unique_and_keys_hide_them() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(!key(&a).contains(&a));
        assert!(same_secret(&a, &a.clone()) && !same_secret(&a, &b));
    }
}

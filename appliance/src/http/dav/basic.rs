//! HTTP Basic authentication for WebDAV clients, which send the password with every request.
//!
//! The first request of a login checks the password like `/api/login` does (argon2, the same throttle per
//! login and per address, the same refusals); the result is remembered for `FRESH` as a keyed hash of the
//! login and password, so the next thousand requests of a file copy cost a hash instead of an argon2 each
//! (19 MiB and tens of milliseconds, one at a time). A changed password, a disabled account or another
//! password for the login falls back to the full check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::{self, HeaderMap};

use crate::account::User;
use crate::app::App;
use crate::http::ApiError;

/// How long a checked password is taken without argon2.
const FRESH: Duration = Duration::from_secs(600);
/// Above this many remembered logins, expired ones are dropped.
const PRUNE_AT: usize = 10_000;

struct Seen {
    digest: [u8; 32],
    /// The account's password hash when checked: a password change invalidates the entry.
    password_hash: String,
    at: Instant,
}

/// Credentials recently checked.
pub struct Verified {
    /// A per-process key: the digests are worthless outside this process's memory.
    key: [u8; 32],
    seen: Mutex<HashMap<String, Seen>>,
}

impl Default for Verified {
    fn default() -> Self {
        use rand::RngCore;
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        Verified { key, seen: Mutex::new(HashMap::new()) }
    }
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verified")
    }
}

/// `(login, password)` from an `Authorization: Basic …` header; `None` without one. A malformed header is a
/// failed attempt with an empty password (it still counts against the address).
pub fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap_or_default();
    let text = String::from_utf8_lossy(&decoded);
    let (login, password) = text.split_once(':').unwrap_or((&text, ""));
    Some((login.to_string(), password.to_string()))
}

impl Verified {
    fn digest(&self, login: &str, password: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(login.as_bytes());
        h.update(&[0]);
        h.update(password.as_bytes());
        *h.finalize().as_bytes()
    }

    /// The user behind Basic credentials, or the refusal `/api/login` would give (401, 403, 429).
    pub async fn check(&self, app: &App, login: &str, password: &str, client: IpAddr) -> Result<User, ApiError> {
        let digest = self.digest(login, password);
        let remembered = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.get(login).filter(|s| s.digest == digest && s.at.elapsed() < FRESH).map(|s| s.password_hash.clone())
        };
        if let Some(password_hash) = remembered {
            if let Some(user) = app.store.user(login)? {
                if user.password_hash == password_hash && !user.disabled() {
                    return Ok(user);
                }
            }
        }
        let user = app.check_credentials(login, password, client).await?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= PRUNE_AT {
            seen.retain(|_, s| s.at.elapsed() < FRESH);
        }
        seen.insert(login.to_string(), Seen { digest, password_hash: user.password_hash.clone(), at: Instant::now() });
        log::info!("user {login} authenticated over webdav from {client}");
        Ok(user)
    }
}

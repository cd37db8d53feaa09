//! One-time enrollment tokens: made at the region, carried to the school in the bundle, spent by the box at its
//! first contact to get its certificate signed. The region keeps only their hashes (`tokens.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::clock::{format_utc, unix_secs};
use crate::disk::{self, DirLock, DiskError};

const TOKENS: &str = "tokens.json";
/// Spent or expired tokens are forgotten this long after they expire; until then a replay gets the precise
/// "already used" / "expired" answer rather than "unknown".
const KEEP_DEAD_SECS: u64 = 30 * 86_400;

/// Why a token was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown enrollment token")]
    Unknown,
    #[error("this enrollment token was already used ({at})")]
    AlreadyUsed { at: String },
    #[error("this enrollment token expired on {at}")]
    Expired { at: String },
    #[error("this enrollment token is not for UAI {claimed}")]
    WrongUai { claimed: String },
    #[error("« {0} » is not a UAI: 7 digits then a letter, e.g. 0123456A")]
    BadUai(String),
    #[error("a token must live more than 0 seconds")]
    BadTtl,
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// A fresh token: 256 random bits, base64url without padding (43 characters, safe in a URL, a header, a file
/// name), and its hash, the only form the region stores.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let plain = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = token_hash(&plain);
    (plain, hash)
}

/// blake3 of the token's text, lowercase hex. A fast hash is right here: the token has 256 random bits, so
/// there is nothing to brute-force, unlike a password.
pub fn token_hash(plain: &str) -> String {
    blake3::hash(plain.trim().as_bytes()).to_hex().to_string()
}

/// What the store keeps about one token. Times are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub uai: String,
    pub issued_at: u64,
    pub expires_at: u64,
    pub used_at: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    /// Hash → record.
    tokens: BTreeMap<String, TokenRecord>,
}

/// The region's enrollment tokens, in `tokens.json` of the CA folder, rewritten atomically under the folder's
/// lock (the CLI that makes bundles and the gateway that redeems may be two processes).
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    /// The store in `dir` (normally the CA folder), which must exist.
    pub fn open(dir: &Path) -> Result<TokenStore, TokenError> {
        std::fs::metadata(dir).map_err(disk::io_err(dir))?;
        Ok(TokenStore { dir: dir.to_owned() })
    }

    /// Makes a token for `uai`, valid `ttl` from now, and returns its plain text (which is not kept).
    pub fn issue(&self, uai: &str, ttl: Duration) -> Result<String, TokenError> {
        if !firmware_config::is_uai(uai) {
            return Err(TokenError::BadUai(uai.to_owned()));
        }
        if ttl.is_zero() {
            return Err(TokenError::BadTtl);
        }
        let (plain, hash) = new_token();
        let now = unix_secs(SystemTime::now());
        let record = TokenRecord {
            uai: uai.to_owned(),
            issued_at: now,
            expires_at: now.saturating_add(ttl.as_secs()),
            used_at: None,
        };
        self.update(now, |file| {
            file.tokens.insert(hash, record);
            Ok(())
        })?;
        Ok(plain)
    }

    /// Spends `plain` for `uai_claimed` at `now`. Succeeds once; the token is marked used before this returns,
    /// so two concurrent enrollments with one token cannot both pass. A wrong UAI does not spend the token.
    pub fn redeem(&self, plain: &str, uai_claimed: &str, now: SystemTime) -> Result<(), TokenError> {
        let hash = token_hash(plain);
        let now = unix_secs(now);
        self.update(now, |file| {
            let record = file.tokens.get_mut(&hash).ok_or(TokenError::Unknown)?;
            if record.uai != uai_claimed {
                return Err(TokenError::WrongUai { claimed: uai_claimed.to_owned() });
            }
            if let Some(at) = record.used_at {
                return Err(TokenError::AlreadyUsed { at: format_utc(at) });
            }
            if now >= record.expires_at {
                return Err(TokenError::Expired { at: format_utc(record.expires_at) });
            }
            record.used_at = Some(now);
            Ok(())
        })
    }

    /// The record of a token, by its plain text.
    pub fn lookup(&self, plain: &str) -> Result<Option<TokenRecord>, TokenError> {
        let file: TokenFile = disk::read_json(&self.dir.join(TOKENS))?;
        Ok(file.tokens.get(&token_hash(plain)).cloned())
    }

    fn update(
        &self,
        now: u64,
        change: impl FnOnce(&mut TokenFile) -> Result<(), TokenError>,
    ) -> Result<(), TokenError> {
        let _lock = DirLock::acquire(&self.dir)?;
        let path = self.dir.join(TOKENS);
        let mut file: TokenFile = disk::read_json(&path)?;
        // On error nothing is written: a refused redeem changes nothing.
        change(&mut file)?;
        file.tokens.retain(|_, r| r.expires_at.saturating_add(KEEP_DEAD_SECS) > now);
        disk::write_json(&path, &file)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_url_safe_and_hashed() {
        let (plain, hash) = new_token();
        assert_eq!(plain.len(), 43);
        assert!(plain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, token_hash(&plain));
        assert_ne!(new_token().0, plain);
    }

    #[test]
    fn single_use_expiry_and_uai() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TokenStore::open(dir.path()).expect("open");
        let now = SystemTime::now();
        let plain = store.issue("0123456A", Duration::from_secs(3600)).expect("issue");
        // The plain token is nowhere on disk.
        let on_disk = std::fs::read_to_string(dir.path().join(TOKENS)).expect("read");
        assert!(!on_disk.contains(&plain));

        assert!(matches!(store.redeem("nope", "0123456A", now), Err(TokenError::Unknown)));
        assert!(matches!(store.redeem(&plain, "7654321B", now), Err(TokenError::WrongUai { .. })));
        let later = now + Duration::from_secs(7200);
        assert!(matches!(store.redeem(&plain, "0123456A", later), Err(TokenError::Expired { .. })));
        store.redeem(&plain, "0123456A", now).expect("first redeem");
        assert!(matches!(store.redeem(&plain, "0123456A", now), Err(TokenError::AlreadyUsed { .. })));
        assert!(store.lookup(&plain).expect("lookup").is_some_and(|r| r.used_at.is_some()));
    }

    #[test]
    fn bad_input_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TokenStore::open(dir.path()).expect("open");
        assert!(matches!(store.issue("12345", Duration::from_secs(1)), Err(TokenError::BadUai(_))));
        assert!(matches!(store.issue("0123456A", Duration::ZERO), Err(TokenError::BadTtl)));
        assert!(TokenStore::open(&dir.path().join("missing")).is_err());
    }
}

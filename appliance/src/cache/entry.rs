//! One cached response on disk: a small JSON head (`<key>.meta`) and the body (`<key>.<gen>`), stored in 1 MiB
//! slices each with its blake3 hash, so that a cut download keeps the slices it completed and a damaged
//! slice is caught before any of its bytes reach a client.
//!
//! The body file is written in place as bytes arrive (readers of a live fill tail it); the head is replaced
//! atomically (temporary file, fsync, rename) after the body is fsynced, so a power cut leaves either the
//! previous head or the new one, and never a head whose hashes describe bytes that are not on disk.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::policy::{Stored, Times};

/// Slices of the body: the unit of hashing, of resuming a cut download and of reading for a client.
pub const SLICE: u64 = 1 << 20;

/// The name of one stored object: blake3 of its URL and the values of the request headers it varies on.
pub type Key = String;

pub fn key(url: &str, vary_values: &[String]) -> Key {
    let mut h = blake3::Hasher::new();
    h.update(url.as_bytes());
    for v in vary_values {
        h.update(b"\0");
        h.update(v.as_bytes());
    }
    h.finalize().to_hex()[..32].to_string()
}

/// The stored head of a response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub url: String,
    /// The request headers the response varies on (lowercase names) and this variant's values of them.
    pub vary: Vec<(String, String)>,
    pub status: u16,
    /// End-to-end response headers (no hop-by-hop, no `Age`).
    pub headers: Vec<(String, String)>,
    /// When the request that got this response was sent and when the response came, seconds since the epoch.
    pub request_time: u64,
    pub response_time: u64,
    /// The body's length, once known (a chunked response: when it ended).
    pub length: Option<u64>,
    /// Hex blake3 of each slice the body file holds; `None` for a slice not (completely) stored.
    pub slices: Vec<Option<String>>,
    /// Which body file (`<key>.<gen>`); a new response for the same key gets a new one.
    pub generation: u64,
    /// Requests served from this object, for eviction (kept across restarts).
    pub hits: u64,
}

impl Meta {
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                map.append(n, v);
            }
        }
        map
    }

    pub fn set_headers(&mut self, headers: &HeaderMap) {
        self.headers =
            headers.iter().filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string()))).collect();
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK)
    }

    pub fn times(&self) -> Times {
        Times { request: self.request_time, response: self.response_time }
    }

    pub fn with_stored<T>(&self, f: impl FnOnce(&Stored<'_>) -> T) -> T {
        let headers = self.header_map();
        f(&Stored { status: self.status(), headers: &headers, times: self.times() })
    }

    /// Whether every byte of the body is stored.
    pub fn complete(&self) -> bool {
        match self.length {
            Some(len) => {
                let needed = len.div_ceil(SLICE) as usize;
                self.slices.len() >= needed && self.slices[..needed].iter().all(Option::is_some)
            }
            None => false,
        }
    }

    /// Bytes stored from the start of the body without a gap.
    pub fn stored_prefix(&self) -> u64 {
        let slices = self.slices.iter().take_while(|s| s.is_some()).count() as u64;
        let bytes = slices * SLICE;
        self.length.map_or(bytes, |len| bytes.min(len))
    }

    /// What the object takes on disk, roughly: its stored slices and its head.
    pub fn disk_size(&self) -> u64 {
        self.stored_prefix() + 1024
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: damaged head: {message}")]
    BadHead { path: PathBuf, message: String },
    #[error("{path}: slice {slice} does not match its hash")]
    Corrupt { path: PathBuf, slice: usize },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EntryError + '_ {
    move |source| EntryError::Io { path: path.to_owned(), source }
}

/// The folder of a key: 256 subfolders keep directories small.
pub fn dir_of(root: &Path, key: &str) -> PathBuf {
    root.join(&key[..2])
}

pub fn meta_path(root: &Path, key: &str) -> PathBuf {
    dir_of(root, key).join(format!("{key}.meta"))
}

pub fn body_path(root: &Path, key: &str, generation: u64) -> PathBuf {
    dir_of(root, key).join(format!("{key}.{generation}"))
}

/// Writes a head atomically (see the module doc).
pub fn write_meta(root: &Path, key: &str, meta: &Meta) -> Result<(), EntryError> {
    let path = meta_path(root, key);
    let dir = dir_of(root, key);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // Unique per writer: a download's end and a revalidation may save the same head at once.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
    let json =
        serde_json::to_vec(meta).map_err(|e| EntryError::BadHead { path: path.clone(), message: e.to_string() })?;
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&json).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

pub fn read_meta(path: &Path) -> Result<Meta, EntryError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| EntryError::BadHead { path: path.to_owned(), message: e.to_string() })
}

/// Removes an object's files; missing files are fine (a crash between two removals).
pub fn remove(root: &Path, key: &str, generation: u64) {
    let _ = std::fs::remove_file(meta_path(root, key));
    let _ = std::fs::remove_file(body_path(root, key, generation));
}

/// Reads one stored slice of a body of `length` bytes and, unless `trusted`, checks it against `expected`, the
/// slice's hash in the head (`None`: not stored).
pub fn read_slice(
    file: &File,
    path: &Path,
    length: Option<u64>,
    slice: usize,
    expected: Option<&str>,
    trusted: bool,
) -> Result<Vec<u8>, EntryError> {
    let start = slice as u64 * SLICE;
    let end = length.map_or(start + SLICE, |len| (start + SLICE).min(len));
    let mut buf = vec![0; end.saturating_sub(start) as usize];
    file.read_exact_at(&mut buf, start).map_err(io(path))?;
    if trusted && expected.is_some() {
        return Ok(buf);
    }
    if expected != Some(blake3::hash(&buf).to_hex().as_str()) {
        return Err(EntryError::Corrupt { path: path.to_owned(), slice });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(length: Option<u64>, slices: Vec<Option<String>>) -> Meta {
        Meta {
            url: "http://x/".into(),
            vary: vec![],
            status: 200,
            headers: vec![("etag".into(), "\"a\"".into())],
            request_time: 1,
            response_time: 2,
            length,
            slices,
            generation: 1,
            hits: 0,
        }
    }

    #[test]
    fn completeness_and_prefix() {
        let h = Some("h".to_string());
        assert!(meta(Some(10), vec![h.clone()]).complete());
        assert!(!meta(None, vec![h.clone()]).complete());
        let m = meta(Some(3 * SLICE), vec![h.clone(), None, h.clone()]);
        assert!(!m.complete());
        assert_eq!(m.stored_prefix(), SLICE);
        assert_eq!(meta(Some(10), vec![h]).stored_prefix(), 10);
    }

    #[test]
    fn a_damaged_slice_is_refused_and_heads_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key("http://x/a", &[]);
        let data = vec![7u8; (SLICE + 5) as usize];
        let body = body_path(dir.path(), &key, 1);
        std::fs::create_dir_all(dir_of(dir.path(), &key)).expect("dir");
        std::fs::write(&body, &data).expect("body");
        let m = meta(
            Some(data.len() as u64),
            vec![
                Some(blake3::hash(&data[..SLICE as usize]).to_hex().to_string()),
                Some(blake3::hash(&data[SLICE as usize..]).to_hex().to_string()),
            ],
        );
        write_meta(dir.path(), &key, &m).expect("write");
        assert_eq!(read_meta(&meta_path(dir.path(), &key)).expect("read"), m);
        let file = File::open(&body).expect("open");
        assert_eq!(read_slice(&file, &body, m.length, 1, m.slices[1].as_deref(), false).expect("slice").len(), 5);
        let writer = std::fs::OpenOptions::new().write(true).open(&body).expect("open for writing");
        writer.write_all_at(b"X", SLICE + 2).expect("damage");
        assert!(matches!(
            read_slice(&file, &body, m.length, 1, m.slices[1].as_deref(), false),
            Err(EntryError::Corrupt { slice: 1, .. })
        ));
        assert!(read_slice(&file, &body, m.length, 0, m.slices[0].as_deref(), false).is_ok());
        assert!(read_slice(&file, &body, m.length, 1, m.slices[1].as_deref(), true).is_ok());
        assert_ne!(key, super::key("http://x/a", &["gzip".into()]));
    }
}

//! Content-addressed blobs on disk: one file per distinct content, named by its blake3 hash.
//!
//! A blob is written to `tmp/`, fsynced, renamed into `blobs/xx/<hash>` and its folder fsynced before any
//! metadata points to it, so a crash at any moment leaves either no trace or a complete blob (orphans are
//! swept at the next start).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rand::RngCore;

use super::StoreError;

/// Writes are handed to a blocking thread in batches of this size: large enough to amortise the hop,
/// small enough to bound memory per upload.
const BATCH: usize = 1 << 20;

/// The blake3 hash of a blob's content; also its name and the file's strong ETag.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn to_hex(self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }

    pub fn from_hex(text: &str) -> Option<Hash> {
        blake3::Hash::from_hex(text).ok().map(|h| Hash(*h.as_bytes()))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

/// Room kept free on the data folder's disk by replication: whatever a peer sends, the metadata database must
/// always be able to write, because sled fails for good (every later write, until the daemon restarts, even once
/// space is back) after a write of its log hits a full disk. Staging a chunk or assembling a file that would eat
/// into it is refused as a full disk; metadata changes still go through.
pub const KEEP_FREE: u64 = 32 << 20;

/// Room LAN uploads leave free: less than replication's, so that when replication has filled the disk to its
/// reserve the school's users can still save their work, and the metadata still has room after them.
pub const KEEP_FREE_FOR_USERS: u64 = 8 << 20;

/// `Ok` when `bytes` more can be written on `dir`'s disk leaving [`KEEP_FREE`]; a `StorageFull` error otherwise
/// (and `Ok` when the filesystem cannot say).
pub fn ensure_room(dir: &Path, bytes: u64) -> io::Result<()> {
    ensure_room_leaving(dir, bytes, KEEP_FREE)
}

/// As [`ensure_room`], leaving `keep` bytes.
pub fn ensure_room_leaving(dir: &Path, bytes: u64, keep: u64) -> io::Result<()> {
    let Ok(stat) = nix::sys::statvfs::statvfs(dir) else { return Ok(()) };
    let free: u64 = stat.blocks_available().saturating_mul(stat.fragment_size());
    if free < bytes.saturating_add(keep) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{free} bytes free, {bytes} wanted, {keep} kept for the metadata"),
        ));
    }
    Ok(())
}

/// The folder of blobs and its scratch space.
#[derive(Clone)]
pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
}

/// A fully written, fsynced temporary file waiting to become a blob. Dropping it removes the file.
pub struct Staged {
    path: Option<PathBuf>,
    pub hash: Hash,
    pub size: u64,
}

impl Staged {
    /// A file already written and fsynced by the caller, whose content is known to hash to `hash`.
    pub fn adopt(path: PathBuf, hash: Hash, size: u64) -> Staged {
        Staged { path: Some(path), hash, size }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Streams one upload into a temporary file, hashing as it goes and refusing to grow past `max`.
pub struct BlobWriter {
    file: Option<File>,
    path: PathBuf,
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    size: u64,
    max: Option<u64>,
}

impl BlobStore {
    pub fn open(data: &Path) -> Result<BlobStore, StoreError> {
        let root = data.join("blobs");
        let tmp = data.join("tmp");
        for i in 0..=255u8 {
            let dir = root.join(format!("{i:02x}"));
            fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        fs::create_dir_all(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        sync_dir(&root)?;
        sync_dir(data)?;
        Ok(BlobStore { root, tmp })
    }

    pub fn path(&self, hash: Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// [`ensure_room`] on this store's disk.
    pub fn ensure_room(&self, bytes: u64) -> Result<(), StoreError> {
        ensure_room(&self.tmp, bytes).map_err(|e| StoreError::io(&self.tmp, e))
    }

    pub fn scratch_file(&self) -> Result<(PathBuf, File), StoreError> {
        let mut name = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut name);
        let path = self.tmp.join(blake3::hash(&name).to_hex().as_str());
        let file = File::create_new(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok((path, file))
    }

    /// Starts a new upload. `max` is the most bytes it may hold (what is left of the writer's quota).
    pub fn writer(&self, max: Option<u64>) -> Result<BlobWriter, StoreError> {
        let (path, file) = self.scratch_file()?;
        Ok(BlobWriter {
            file: Some(file),
            path,
            hasher: blake3::Hasher::new(),
            buf: Vec::with_capacity(BATCH),
            size: 0,
            max,
        })
    }

    /// Moves a staged file into place, unless a blob with the same content is already there.
    /// Blocking: call it from a blocking context.
    pub fn install(&self, staged: &mut Staged) -> Result<(), StoreError> {
        let target = self.path(staged.hash);
        let Some(source) = staged.path.take() else {
            return Ok(());
        };
        if target.exists() {
            let _ = fs::remove_file(&source);
            return Ok(());
        }
        fs::rename(&source, &target).map_err(|e| StoreError::io(&target, e))?;
        match target.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }

    pub fn remove(&self, hash: Hash) -> Result<(), StoreError> {
        let path = self.path(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Removes temporary files and every blob `referenced` says no file points to: what a crash between
    /// the blob's rename and its metadata commit (or between a delete's commit and its unlink) leaves behind.
    pub fn sweep(&self, referenced: impl Fn(Hash) -> Result<bool, StoreError>) -> Result<u64, StoreError> {
        for entry in fs::read_dir(&self.tmp).map_err(|e| StoreError::io(&self.tmp, e))? {
            let entry = entry.map_err(|e| StoreError::io(&self.tmp, e))?;
            let _ = fs::remove_file(entry.path());
        }
        let mut removed = 0;
        for i in 0..=255u8 {
            let dir = self.root.join(format!("{i:02x}"));
            for entry in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
                let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
                let name = entry.file_name();
                let keep = match name.to_str().and_then(Hash::from_hex) {
                    Some(hash) => referenced(hash)?,
                    None => false,
                };
                if !keep {
                    let _ = fs::remove_file(entry.path());
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Count and total size of the blobs on disk, for /metrics.
    pub fn disk_usage(&self) -> (u64, u64) {
        let (mut count, mut bytes) = (0, 0);
        for i in 0..=255u8 {
            let Ok(entries) = fs::read_dir(self.root.join(format!("{i:02x}"))) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(meta) = entry.metadata() {
                    count += 1;
                    bytes += meta.len();
                }
            }
        }
        (count, bytes)
    }
}

impl BlobWriter {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends bytes; fails with `QuotaExceeded` as soon as the upload outgrows `max`.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.size += data.len() as u64;
        if let Some(max) = self.max {
            if self.size > max {
                return Err(StoreError::QuotaExceeded);
            }
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BATCH {
            self.drain().await?;
        }
        Ok(())
    }

    pub async fn write_bytes(&mut self, data: Bytes) -> Result<(), StoreError> {
        self.write(&data).await
    }

    /// Writes the buffered bytes on a blocking thread.
    async fn drain(&mut self) -> Result<(), StoreError> {
        self.write_out(false).await
    }

    /// Writes the buffered bytes, and with `sync` fsyncs the file, in one trip to a blocking thread (each trip
    /// is a thread handoff, which a client uploading many small files pays per file).
    async fn write_out(&mut self, sync: bool) -> Result<(), StoreError> {
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH));
        let Some(mut file) = self.file.take() else {
            return Err(StoreError::io(&self.path, io::Error::other("writer already failed")));
        };
        let mut hasher = std::mem::take(&mut self.hasher);
        let path = self.path.clone();
        let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let (file, hasher) = tokio::task::spawn_blocking(move || {
            // A full disk must never reach the metadata (see `KEEP_FREE_FOR_USERS`).
            ensure_room_leaving(&dir, buf.len() as u64, KEEP_FREE_FOR_USERS).map_err(|e| StoreError::io(&path, e))?;
            hasher.update(&buf);
            file.write_all(&buf).map_err(|e| StoreError::io(&path, e))?;
            if sync {
                file.sync_all().map_err(|e| StoreError::io(&path, e))?;
            }
            Ok::<_, StoreError>((file, hasher))
        })
        .await
        .map_err(|e| StoreError::io(&self.path, io::Error::other(e)))??;
        self.file = Some(file);
        self.hasher = hasher;
        Ok(())
    }

    /// Flushes, fsyncs and hands over the temporary file with its hash.
    pub async fn finish(mut self) -> Result<Staged, StoreError> {
        self.write_out(true).await?;
        let Some(file) = self.file.take() else {
            return Err(StoreError::io(&self.path, io::Error::other("writer already failed")));
        };
        drop(file);
        let path = std::mem::take(&mut self.path);
        let hash = Hash(*self.hasher.finalize().as_bytes());
        Ok(Staged { path: Some(path), hash, size: self.size })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Makes a rename or a new entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}

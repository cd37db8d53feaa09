//! How this crate touches the disk: atomic rewrites (temp + fsync + rename + fsync dir), secret files that are
//! 0600 from their first byte and refused when looser, private folders, and the CA folder's lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Mode of private keys, tokens and bundles: owner read/write only.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of certificates and other public files.
pub const PUBLIC_MODE: u32 = 0o644;

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A secret whose mode lets group or others read it may already have leaked: the admin must look, fix the
    /// mode (and probably rotate the key) rather than have us silently tighten it.
    #[error("{path}: mode {mode:04o} is too open for a secret; it must be 0600 or stricter (chmod 600 {path})")]
    LooseMode { path: PathBuf, mode: u32 },
    #[error("{path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
    #[error("{path} is damaged: {message}")]
    Corrupt { path: PathBuf, message: String },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io { path: path.to_owned(), source }
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees either the old file or the new one, never half.
/// The temporary file is created with `mode` already set, so a secret is never readable by others, not even
/// for the instant between create and chmod.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DiskError> {
    let dir = parent(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::rngs::OsRng.next_u64()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
        // The umask may have narrowed the mode; a public file must stay readable by the service user's tools.
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: the temporary file is garbage whatever happened; the original error is what matters.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Like [`write_atomic`] but refuses to replace an existing file: used for keys, which are identities.
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DiskError> {
    if path.symlink_metadata().is_ok() {
        return Err(DiskError::Exists { path: path.to_owned() });
    }
    write_atomic(path, bytes, mode)
}

/// Reads a secret file, refusing it when group or others have any access. The mode is taken from the open
/// file handle, so the file checked is the file read.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, DiskError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mode = file.metadata().map_err(io_err(path))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DiskError::LooseMode { path: path.to_owned(), mode });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    Ok(bytes)
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, DiskError> {
    fs::read(path).map_err(io_err(path))
}

/// Reads a JSON state file; a missing file is the empty state (nothing issued yet).
pub(crate) fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T, DiskError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| DiskError::Corrupt { path: path.to_owned(), message: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(DiskError::Io { path: path.to_owned(), source }),
    }
}

/// Rewrites a JSON state file atomically. 0600: the token store holds hashes of live credentials and the index
/// says which school has which certificate; neither is anyone else's business.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), DiskError> {
    let mut bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| DiskError::Corrupt { path: path.to_owned(), message: e.to_string() })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, SECRET_MODE)
}

/// Creates `dir` (and its parents) as 0700 if missing; an existing folder is left as it is.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), DiskError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))
}

/// Makes a rename in `dir` durable: without it a power cut can forget the new name even after the file's data
/// reached the disk.
pub fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An exclusive lock on a folder's `lock` file, held for one read-modify-write of a JSON file in it. flock
/// locks belong to the open file description, so this excludes other threads of this process as well as other
/// processes (the CLI and the daemon).
pub(crate) struct DirLock {
    file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, DiskError> {
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(SECRET_MODE)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(DirLock { file })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock anyway; unlocking first just makes it explicit.
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        write_atomic(&path, b"one", SECRET_MODE).expect("write");
        write_atomic(&path, b"two", SECRET_MODE).expect("rewrite");
        assert_eq!(read_secret(&path).expect("read"), b"two");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn loose_secret_is_refused_with_its_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"k", PUBLIC_MODE).expect("write");
        let err = read_secret(&path).expect_err("0644 must be refused");
        let text = err.to_string();
        assert!(text.contains("0644") && text.contains("key.pem"), "{text}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).expect("chmod");
        assert_eq!(read_secret(&path).expect("0400 is stricter"), b"k");
    }

    #[test]
    fn write_new_refuses_existing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        write_new(&path, b"a", SECRET_MODE).expect("first");
        assert!(matches!(write_new(&path, b"b", SECRET_MODE), Err(DiskError::Exists { .. })));
    }
}

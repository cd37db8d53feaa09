//! One daemon per data folder: an advisory lock on `<data>/lock`, held for the life of the process.
//!
//! Two daemons on one folder would each believe they own sled and the blobs; the second must refuse to start
//! and tell the technician which process holds the folder.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the data folder {folder} is already used by another relais (process {pid}); stop it first or choose another --data folder")]
    Busy { folder: PathBuf, pid: String },
    #[error("cannot lock the data folder {folder}: {source}")]
    Io { folder: PathBuf, source: std::io::Error },
}

/// Held while the folder is ours; released when dropped or when the process dies (even by SIGKILL).
pub struct DataLock {
    _lock: Flock<File>,
}

impl DataLock {
    pub fn acquire(folder: &Path) -> Result<DataLock, LockError> {
        let io = |source| LockError::Io { folder: folder.to_owned(), source };
        std::fs::create_dir_all(folder).map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(folder.join("lock"))
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim().to_string();
                return Err(LockError::Busy {
                    folder: folder.to_owned(),
                    pid: if pid.is_empty() { "?".into() } else { pid },
                });
            }
        };
        lock.set_len(0).map_err(io)?;
        lock.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(DataLock { _lock: lock })
    }
}

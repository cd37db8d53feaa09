//! The box's storage: metadata in sled, file contents as content-addressed blobs.
//!
//! This module is the only one that names sled, so the engine can be swapped in one place (garage had to
//! drop sled when its databases grew). Every mutation follows one order: blob durable on disk, then one
//! metadata transaction, then a metadata flush; callers acknowledge only after `commit_file`/`mkdir`/`delete`
//! return. Metadata mutations are serialised by one async mutex: they are short, and it makes the blob
//! garbage collection race-free (a blob is unlinked only while nobody can be adding a reference to it).

mod blob;
mod cache;
mod chunks;
mod lock;
mod moves;
pub mod props;
mod snapshot;
pub mod sync;
#[cfg(test)]
mod tests;
pub mod versions;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

pub use blob::{ensure_room, BlobWriter, Hash, Staged, KEEP_FREE};
pub use lock::{DataLock, LockError};
pub use snapshot::{Loaded, Snapshot};

use crate::account::User;
use crate::session::Session;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("metadata database: {0}")]
    Db(#[from] sled::Error),
    #[error("corrupt metadata record under {key}: {source}")]
    Corrupt { key: String, source: serde_json::Error },
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    Exists,
    #[error("a file stands where a folder is needed")]
    NotADirectory,
    #[error("this is a folder")]
    IsADirectory,
    #[error("quota exceeded")]
    QuotaExceeded,
    #[error("the content {0} has not arrived yet")]
    MissingContent(String),
    #[error(transparent)]
    Chunk(#[from] crate::sync::chunk::ChunkError),
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io { path: path.to_owned(), source }
    }
}

/// One file or folder of the tree.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub dir: bool,
    pub size: u64,
    /// Content hash (hex) for files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Last modification, Unix milliseconds.
    pub modified: i64,
    /// Whose quota the file counts against.
    pub owner: String,
}

impl Entry {
    pub fn blob(&self) -> Option<Hash> {
        self.hash.as_deref().and_then(Hash::from_hex)
    }
}

/// What `commit_file` did.
#[derive(Debug)]
pub struct Written {
    pub entry: Entry,
    /// True when the path did not exist before (201), false when it replaced a file (204).
    pub created: bool,
}

pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    /// The accounts as they were before the last directory import, for undo.
    users_snapshot: sled::Tree,
    /// An import's changes on their way into `users`: a redo log, see `apply_directory`.
    users_staging: sled::Tree,
    sessions: sled::Tree,
    entries: sled::Tree,
    refs: sled::Tree,
    usage: sled::Tree,
    /// Facts about the store itself: its replica id, its change counter.
    meta: sled::Tree,
    /// Each replicated record's version (and tombstone); see `versions`.
    versions: sled::Tree,
    /// Records by their latest change, per partition and writer; see `versions`.
    journal: sled::Tree,
    /// This replica's id (cached from `meta`).
    me: String,
    /// Where each content-defined chunk lies in a local blob; see `chunks`.
    chunks: sled::Tree,
    /// Each indexed blob's chunk list.
    manifests: sled::Tree,
    /// WebDAV dead properties by tree key; see `props`.
    props: sled::Tree,
    /// Received chunks waiting for their file.
    stage: std::sync::Arc<crate::sync::chunk::ChunkStage>,
    /// Woken after every local change, so replication starts a session soon.
    changed: tokio::sync::Notify,
    blobs: blob::BlobStore,
    /// Serialises metadata mutations; see the module documentation.
    mutate: tokio::sync::Mutex<()>,
    /// Blobs a running backup still has to copy are not unlinked; see `snapshot`.
    pins: snapshot::Pins,
    /// Small contents in memory, by hash.
    pub small_blobs: cache::BlobCache,
}

/// Memory for small file contents served from RAM (see `cache`).
const SMALL_BLOB_CACHE: usize = 8 << 20;

/// Records per sled batch in bulk directory writes.
const BATCH: usize = 1000;

/// Keys of the snapshot's and the staging tree's markers (NUL cannot start a login).
const SNAPSHOT_MARK: &[u8] = b"\0taken";
const REPLICA_ID: &[u8] = b"replica_id";

/// 128 random bits, hex.
fn new_replica_id() -> String {
    use rand::RngCore;
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    id.iter().map(|b| format!("{b:02x}")).collect()
}
const READY_MARK: &[u8] = b"\0ready";

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Key of a tree entry: its parent path, NUL, its name. NUL cannot appear in a valid name, so a prefix scan
/// on `parent\0` lists exactly the direct children.
fn entry_key(path: &[String]) -> Vec<u8> {
    let (name, parent) = match path.split_last() {
        Some(split) => split,
        None => return Vec::new(),
    };
    let mut key = parent.join("/").into_bytes();
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key
}

fn children_prefix(path: &[String]) -> Vec<u8> {
    let mut key = path.join("/").into_bytes();
    key.push(0);
    key
}

fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value)
        .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(key).replace('\0', "/"), source })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Our records are plain structs of strings and numbers: serialising them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn counter(value: Option<sled::IVec>) -> u64 {
    value.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes).unwrap_or(0)
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn tx_get<T: DeserializeOwned>(tree: &TransactionalTree, key: &[u8]) -> TxResult<Option<T>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => match decode(key, &v) {
            Ok(t) => Ok(Some(t)),
            Err(e) => abort(e),
        },
    }
}

fn tx_add(tree: &TransactionalTree, key: &[u8], delta: i64) -> TxResult<u64> {
    let value = (counter(tree.get(key)?) as i64).saturating_add(delta).max(0) as u64;
    if value == 0 {
        tree.remove(key)?;
    } else {
        tree.insert(key, &value.to_be_bytes())?;
    }
    Ok(value)
}

fn unwrap_tx<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e),
    })
}

impl Store {
    /// Opens (creating if needed) the store in `data`, then sweeps what an interrupted run left behind.
    /// The caller must hold the folder's `DataLock`.
    pub fn open(data: &Path) -> Result<Store, StoreError> {
        let blobs = blob::BlobStore::open(data)?;
        let db = sled::Config::new().path(data.join("meta")).cache_capacity(8 << 20).open()?;
        let mut store = Store {
            users: db.open_tree("users")?,
            users_snapshot: db.open_tree("users_snapshot")?,
            users_staging: db.open_tree("users_staging")?,
            sessions: db.open_tree("sessions")?,
            entries: db.open_tree("entries")?,
            refs: db.open_tree("refs")?,
            usage: db.open_tree("usage")?,
            meta: db.open_tree("meta")?,
            versions: db.open_tree("versions")?,
            journal: db.open_tree("journal")?,
            me: String::new(),
            chunks: db.open_tree("chunks")?,
            manifests: db.open_tree("manifests")?,
            props: db.open_tree("props")?,
            stage: std::sync::Arc::new(crate::sync::chunk::ChunkStage::open(&data.join("chunks"))?),
            changed: tokio::sync::Notify::new(),
            db,
            blobs,
            mutate: tokio::sync::Mutex::new(()),
            pins: snapshot::Pins::default(),
            small_blobs: cache::BlobCache::new(SMALL_BLOB_CACHE),
        };
        // An import cut by a crash: finish it if its changes were complete, else forget it.
        if !store.meta.contains_key(REPLICA_ID)? {
            store.meta.insert(REPLICA_ID, new_replica_id().as_bytes())?;
        }
        store.me = store.replica_id()?;
        if store.users_staging.contains_key(READY_MARK)? {
            store.copy_staging()?;
            log::info!("finished a directory import interrupted by a stop");
        }
        store.users_staging.clear()?;
        store.db.flush()?;
        let removed =
            store.blobs.sweep(|hash| Ok(store.refs.contains_key(hash.0)? || store.awaits_its_change(hash)?))?;
        if removed > 0 {
            log::info!("removed {removed} unreferenced blobs left by an interrupted run");
        }
        Ok(store)
    }

    /// This store's replica id: made at its creation, never copied. A store restored from a backup gets a
    /// new one, so replication never takes it for the store the backup came from.
    pub fn replica_id(&self) -> Result<String, StoreError> {
        let id = self.meta.get(REPLICA_ID)?.ok_or(StoreError::NotFound)?;
        Ok(String::from_utf8_lossy(&id).into_owned())
    }

    /// Makes every committed change durable. Called before acknowledging and at shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Notified after local changes (a permit is kept when nobody waits): what wakes replication.
    pub fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    // ---- accounts ----

    pub fn user(&self, login: &str) -> Result<Option<User>, StoreError> {
        match self.users.get(login)? {
            None => Ok(None),
            Some(v) => decode(login.as_bytes(), &v).map(Some),
        }
    }

    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.users
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Adds an account; `Exists` if the login is taken.
    pub async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        self.write_user(&user.login, Some(user), true)?;
        self.flush().await
    }

    pub async fn put_user(&self, user: &User) -> Result<(), StoreError> {
        self.write_user(&user.login, Some(user), false)?;
        self.flush().await
    }

    /// Writes (or with `None` deletes) an account and stamps the change, in one transaction. `Exists` when
    /// `create` and the login is taken.
    fn write_user(&self, login: &str, user: Option<&User>, create: bool) -> Result<(), StoreError> {
        let key = versions::user_key(login);
        let value = user.map(encode);
        let partition = user.and_then(|u| u.school.clone()).unwrap_or_default();
        unwrap_tx((&self.users, &self.versions, &self.journal, &self.meta).transaction(
            |(users, versions, journal, meta)| {
                let old = users.get(login)?;
                if create && old.is_some() {
                    return abort(StoreError::Exists);
                }
                if value.is_none() && old.is_none() {
                    return Ok(());
                }
                let v = versions::Versions { meta, versions, journal, me: &self.me };
                let partition = match (&value, v.get(&key)?) {
                    (None, Some(version)) => version.part,
                    _ => partition.clone(),
                };
                match &value {
                    Some(value) => users.insert(login.as_bytes(), value.as_slice())?,
                    None => users.remove(login.as_bytes())?,
                };
                v.stamp(&key, &partition, value.is_none().then(now_ms), None)?;
                Ok(())
            },
        ))?;
        self.changed.notify_one();
        Ok(())
    }

    /// Calls `f` with every account, decoding one at a time (a region holds 100 000 of them).
    pub fn for_each_user(&self, f: &mut dyn FnMut(&User)) -> Result<(), StoreError> {
        for kv in self.users.iter() {
            let (k, v) = kv?;
            f(&decode(&k, &v)?);
        }
        Ok(())
    }

    pub async fn delete_user(&self, login: &str) -> Result<(), StoreError> {
        self.write_user(login, None, false)?;
        self.flush().await
    }

    /// Writes a directory import, all or nothing: a snapshot of every account first (for undo), then the
    /// changes into a staging tree, marked ready once complete, then copied into the accounts. A crash
    /// before the mark loses the import whole; after it, the next start finishes the copy. Writes go in
    /// bounded batches: sled keeps a whole batch, and more, in memory.
    pub async fn apply_directory(&self, changes: &[User]) -> Result<(), StoreError> {
        let _guard = self.mutate.lock().await;
        // The snapshot loses its mark first and gets it back last, so a crash mid-copy leaves no half
        // snapshot that undo would trust. Batches are bounded: sled holds a whole batch, and more, in memory.
        self.users_snapshot.remove(SNAPSHOT_MARK)?;
        self.users_snapshot.clear()?;
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for kv in self.users.iter() {
            let (k, v) = kv?;
            batch.insert(k, v);
            pending += 1;
            if pending == BATCH {
                self.users_snapshot.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        self.users_snapshot.apply_batch(batch)?;
        self.flush().await?;
        self.users_snapshot.insert(SNAPSHOT_MARK, &now_ms().to_be_bytes())?;
        self.flush().await?;
        self.users_staging.clear()?;
        for chunk in changes.chunks(BATCH) {
            let mut batch = sled::Batch::default();
            for user in chunk {
                batch.insert(user.login.as_bytes(), encode(user));
            }
            self.users_staging.apply_batch(batch)?;
        }
        self.flush().await?;
        self.users_staging.insert(READY_MARK, &[])?;
        self.flush().await?;
        self.copy_staging()?;
        self.flush().await?;
        self.users_staging.clear()?;
        self.flush().await
    }

    /// Copies a ready staging tree into the accounts (idempotent: a redo after a crash writes the same).
    fn copy_staging(&self) -> Result<(), StoreError> {
        for kv in self.users_staging.iter() {
            let (k, v) = kv?;
            if k.as_ref() == READY_MARK {
                continue;
            }
            let user: User = decode(&k, &v)?;
            // Unchanged records keep their version: a re-import of the same export replicates nothing.
            if self.users.get(&k)?.as_deref() != Some(v.as_ref()) {
                self.write_user(&user.login, Some(&user), false)?;
            }
        }
        Ok(())
    }

    /// Puts back the accounts as they were before the last import. `NotFound` if there is no snapshot.
    pub async fn undo_directory(&self) -> Result<usize, StoreError> {
        let _guard = self.mutate.lock().await;
        if !self.users_snapshot.contains_key(SNAPSHOT_MARK)? {
            return Err(StoreError::NotFound);
        }
        for kv in self.users.iter() {
            let (k, _) = kv?;
            if !self.users_snapshot.contains_key(&k)? {
                self.write_user(&String::from_utf8_lossy(&k), None, false)?;
            }
        }
        let mut restored = 0;
        for kv in self.users_snapshot.iter() {
            let (k, v) = kv?;
            if k.as_ref() != SNAPSHOT_MARK {
                if self.users.get(&k)?.as_deref() != Some(v.as_ref()) {
                    let user: User = decode(&k, &v)?;
                    self.write_user(&user.login, Some(&user), false)?;
                }
                restored += 1;
            }
        }
        self.users_snapshot.clear()?;
        self.flush().await?;
        Ok(restored)
    }

    // ---- sessions ----

    pub fn session(&self, key: &str) -> Result<Option<Session>, StoreError> {
        match self.sessions.get(key)? {
            None => Ok(None),
            Some(v) => decode(key.as_bytes(), &v).map(Some),
        }
    }

    pub async fn put_session(&self, key: &str, session: &Session) -> Result<(), StoreError> {
        self.sessions.insert(key, encode(session))?;
        self.flush().await
    }

    pub async fn delete_session(&self, key: &str) -> Result<(), StoreError> {
        self.sessions.remove(key)?;
        self.flush().await
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Drops sessions `expired` says are over; returns how many.
    pub fn purge_sessions(&self, expired: impl Fn(&Session) -> bool) -> Result<usize, StoreError> {
        let mut purged = 0;
        for kv in self.sessions.iter() {
            let (k, v) = kv?;
            let gone = match decode::<Session>(&k, &v) {
                Ok(session) => expired(&session),
                Err(_) => true,
            };
            if gone {
                self.sessions.remove(k)?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    // ---- the file tree ----

    pub fn stat(&self, path: &[String]) -> Result<Option<Entry>, StoreError> {
        if path.is_empty() {
            return Ok(Some(Entry { dir: true, size: 0, hash: None, modified: 0, owner: String::new() }));
        }
        let key = entry_key(path);
        match self.entries.get(&key)? {
            None => Ok(None),
            Some(v) => decode(&key, &v).map(Some),
        }
    }

    /// The direct children of a folder, sorted by name.
    pub fn list(&self, path: &[String]) -> Result<Vec<(String, Entry)>, StoreError> {
        let prefix = children_prefix(path);
        self.entries
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((name, decode(&k, &v)?))
            })
            .collect()
    }

    /// Every file below `path` (recursively), as paths relative to it, in a stable order.
    pub fn walk_files(&self, path: &[String]) -> Result<Vec<(Vec<String>, Entry)>, StoreError> {
        let mut out = Vec::new();
        let mut stack = vec![Vec::<String>::new()];
        while let Some(rel) = stack.pop() {
            let mut full = path.to_vec();
            full.extend(rel.iter().cloned());
            for (name, entry) in self.list(&full)? {
                let mut child = rel.clone();
                child.push(name);
                if entry.dir {
                    stack.push(child);
                } else {
                    out.push((child, entry));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Bytes stored by `owner` (logical size: a deduplicated file still counts for each of its owners).
    pub fn usage(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(counter(self.usage.get(owner)?))
    }

    /// A new scratch file under `tmp/` (emptied at every start), for uploads that are not file contents.
    pub fn scratch_file(&self) -> Result<(PathBuf, std::fs::File), StoreError> {
        self.blobs.scratch_file()
    }

    /// Starts an upload limited to `max` bytes.
    pub fn blob_writer(&self, max: Option<u64>) -> Result<BlobWriter, StoreError> {
        self.blobs.writer(max)
    }

    pub async fn open_blob(&self, hash: Hash) -> Result<tokio::fs::File, StoreError> {
        let path = self.blobs.path(hash);
        tokio::fs::File::open(&path).await.map_err(|e| StoreError::io(&path, e))
    }

    pub fn blob_path(&self, hash: Hash) -> PathBuf {
        self.blobs.path(hash)
    }

    pub fn blob_disk_usage(&self) -> (u64, u64) {
        self.blobs.disk_usage()
    }

    /// Makes `staged` the content of `path`, creating missing parent folders, charging `owner` and refusing
    /// with `QuotaExceeded` if their usage would pass `limit`. Durable when it returns.
    pub async fn commit_file(
        &self,
        path: &[String],
        staged: Staged,
        owner: &str,
        limit: Option<u64>,
    ) -> Result<Written, StoreError> {
        if path.is_empty() {
            return Err(StoreError::IsADirectory);
        }
        let guard = self.mutate.lock().await;
        let mut staged = staged;
        let hash = staged.hash;
        let size = staged.size;
        let blobs = self.blobs.clone();
        let _installed = tokio::task::spawn_blocking(move || blobs.install(&mut staged).map(|()| staged))
            .await
            .map_err(|e| StoreError::io(Path::new("blobs"), std::io::Error::other(e)))??;
        let entry = Entry { dir: false, size, hash: Some(hash.to_hex()), modified: now_ms(), owner: owner.to_string() };
        let trees = (&self.entries, &self.refs, &self.usage, &self.versions, &self.journal, &self.meta);
        let result = unwrap_tx(trees.transaction(|(entries, refs, usage, versions, journal, meta)| {
            let v = versions::Versions { meta, versions, journal, me: &self.me };
            Self::tx_put_file(entries, refs, usage, &v, path, &entry, limit)
        }));
        let (created, released) = match result {
            Ok(done) => done,
            Err(e) => {
                if !self.refs.contains_key(hash.0)? {
                    self.blobs.remove(hash)?;
                }
                return Err(e);
            }
        };
        drop(guard);
        self.settle(released, Written { entry, created }).await
    }

    /// After a file's transaction: made durable, replication woken, the content it replaced released (only
    /// now: released earlier, a crash could bring back an entry whose content is gone).
    pub(super) async fn settle(&self, released: Option<Hash>, written: Written) -> Result<Written, StoreError> {
        self.flush().await?;
        self.changed.notify_one();
        if let Some(old) = released {
            self.release(old).await?;
        }
        Ok(written)
    }

    /// Creates a folder and its missing parents. `Exists` if a folder is already there.
    pub async fn mkdir(&self, path: &[String], owner: &str) -> Result<Entry, StoreError> {
        if path.is_empty() {
            return Err(StoreError::Exists);
        }
        let guard = self.mutate.lock().await;
        let now = now_ms();
        let key = entry_key(path);
        let entry = Entry { dir: true, size: 0, hash: None, modified: now, owner: owner.to_string() };
        let partition = versions::partition_of(path);
        let trees = (&self.entries, &self.versions, &self.journal, &self.meta);
        unwrap_tx(trees.transaction(|(entries, versions, journal, meta)| {
            let v = versions::Versions { meta, versions, journal, me: &self.me };
            Self::tx_make_parents(entries, &v, &path[..path.len() - 1], owner, now)?;
            match tx_get::<Entry>(entries, &key)? {
                Some(e) if e.dir => abort(StoreError::Exists),
                Some(_) => abort(StoreError::NotADirectory),
                None => {
                    entries.insert(key.as_slice(), encode(&entry))?;
                    v.stamp(&versions::file_key(&key), partition, None, None)?;
                    Ok(())
                }
            }
        }))?;
        drop(guard);
        self.flush().await?;
        self.changed.notify_one();
        Ok(entry)
    }

    /// Removes a file, or a folder with everything below it, releasing quota and unreferenced blobs.
    pub async fn delete(&self, path: &[String]) -> Result<(), StoreError> {
        if path.is_empty() {
            return Err(StoreError::NotFound);
        }
        let guard = self.mutate.lock().await;
        let key = entry_key(path);
        // Descendants' keys start with the folder's path followed by NUL (children) or '/' (deeper).
        let joined = path.join("/");
        let mut doomed = vec![key.clone()];
        for kv in self.entries.scan_prefix(joined.as_bytes()) {
            let (k, _) = kv?;
            let rest = &k[joined.len()..];
            if rest.first() == Some(&0) || rest.first() == Some(&b'/') {
                doomed.push(k.to_vec());
            }
        }
        // Deepest first and the folder last: a replica that receives these deletions in this order sees the
        // folder empty when its own deletion arrives, unless something new was put in it meanwhile.
        doomed.reverse();
        let partition = versions::partition_of(path);
        let deleted = now_ms();
        let trees = (&self.entries, &self.refs, &self.usage, &self.versions, &self.journal, &self.meta);
        let released = unwrap_tx(trees.transaction(|(entries, refs, usage, versions, journal, meta)| {
            if entries.get(&key)?.is_none() {
                return abort(StoreError::NotFound);
            }
            let v = versions::Versions { meta, versions, journal, me: &self.me };
            let mut released = Vec::new();
            for k in &doomed {
                let Some(entry) = tx_get::<Entry>(entries, k)? else { continue };
                entries.remove(k.as_slice())?;
                v.stamp(&versions::file_key(k), partition, Some(deleted), entry.hash.clone())?;
                if entry.dir {
                    continue;
                }
                tx_add(usage, entry.owner.as_bytes(), -(entry.size as i64))?;
                if let Some(h) = entry.blob() {
                    if tx_add(refs, &h.0, -1)? == 0 {
                        released.push(h);
                    }
                }
            }
            Ok(released)
        }))?;
        // Dead properties are local metadata (they do not replicate): dropped with their record, after it.
        for k in &doomed {
            self.props.remove(k.as_slice())?;
        }
        drop(guard);
        self.flush().await?;
        self.changed.notify_one();
        for hash in released {
            self.release(hash).await?;
        }
        Ok(())
    }

    /// Unlinks a blob nothing points to any more. Only after the metadata that dropped the last reference is
    /// flushed: unlinking earlier, a crash could bring back a file whose content is gone. A crash before the
    /// unlink leaves an orphan that a later start sweeps.
    async fn release(&self, hash: Hash) -> Result<(), StoreError> {
        let _guard = self.mutate.lock().await;
        if self.pins.defer(hash) {
            return Ok(());
        }
        for hash in std::iter::once(hash).chain(self.pins.take_deferred()) {
            if !self.refs.contains_key(hash.0)? {
                self.blobs.remove(hash)?;
            }
        }
        Ok(())
    }

    /// Makes `entry` (a file, whose blob is installed and stays referenced) the record at `path` inside a
    /// transaction: parents created, a replaced file's quota and blob reference given back, its owner charged
    /// and refused past `limit`. Returns whether the path was new, and a blob nothing references any more.
    fn tx_put_file(
        entries: &TransactionalTree,
        refs: &TransactionalTree,
        usage: &TransactionalTree,
        v: &versions::Versions<'_>,
        path: &[String],
        entry: &Entry,
        limit: Option<u64>,
    ) -> TxResult<(bool, Option<Hash>)> {
        let Some(hash) = entry.blob() else {
            return abort(StoreError::IsADirectory);
        };
        let key = entry_key(path);
        Self::tx_make_parents(entries, v, &path[..path.len() - 1], &entry.owner, entry.modified)?;
        let old: Option<Entry> = tx_get(entries, &key)?;
        let mut released = None;
        if let Some(old) = &old {
            if old.dir {
                return abort(StoreError::IsADirectory);
            }
            tx_add(usage, old.owner.as_bytes(), -(old.size as i64))?;
            if let Some(h) = old.blob() {
                if tx_add(refs, &h.0, -1)? == 0 {
                    released = Some(h);
                }
            }
        }
        let used = tx_add(usage, entry.owner.as_bytes(), entry.size as i64)?;
        if let Some(limit) = limit {
            if used > limit {
                return abort(StoreError::QuotaExceeded);
            }
        }
        tx_add(refs, &hash.0, 1)?;
        entries.insert(key.as_slice(), encode(entry))?;
        v.stamp(
            &versions::file_key(&key),
            versions::partition_of(path),
            None,
            old.as_ref().and_then(|o| o.hash.clone()),
        )?;
        Ok((old.is_none(), released.filter(|h| *h != hash)))
    }

    /// Creates the missing folders of `parents`, each a new record stamped by this replica.
    fn tx_make_parents(
        entries: &TransactionalTree,
        v: &versions::Versions<'_>,
        parents: &[String],
        owner: &str,
        now: i64,
    ) -> TxResult<()> {
        for depth in 1..=parents.len() {
            let key = entry_key(&parents[..depth]);
            match tx_get::<Entry>(entries, &key)? {
                Some(e) if e.dir => {}
                Some(_) => return abort(StoreError::NotADirectory),
                None => {
                    let dir = Entry { dir: true, size: 0, hash: None, modified: now, owner: owner.to_string() };
                    entries.insert(key.as_slice(), encode(&dir))?;
                    v.stamp(&versions::file_key(&key), versions::partition_of(parents), None, None)?;
                }
            }
        }
        Ok(())
    }
}

impl crate::directory::import::Accounts for Store {
    fn for_each(&self, f: &mut dyn FnMut(&User)) -> Result<(), String> {
        self.for_each_user(f).map_err(|e| e.to_string())
    }

    fn get(&self, login: &str) -> Result<Option<User>, String> {
        self.user(login).map_err(|e| e.to_string())
    }
}

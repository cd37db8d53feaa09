//! A consistent copy of the store while it keeps serving (what a backup reads), and the loading of such a
//! copy into a new, empty store (what a restore writes).
//!
//! Taking a snapshot holds the mutation lock only while the accounts and the file tree are dumped to two
//! scratch files; the blobs are copied afterwards, at the pace of the backup's output, while uploads go on.
//! That is safe because blobs never change once written, and because a snapshot *pins* them: a blob whose
//! last reference goes away during the backup is unlinked only once the backup is over.
//!
//! Reference counts and per-owner usage are not part of a snapshot: loading recomputes them from the tree,
//! so a restored store is consistent by construction whatever the backup held.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::versions;
use super::{decode, encode, entry_key, Entry, Hash, Staged, Store, StoreError, BATCH};
use crate::account::User;

/// The running snapshots and the blobs whose unlinking waits for them to end.
#[derive(Default)]
pub struct Pins(Arc<Mutex<PinState>>);

#[derive(Default)]
struct PinState {
    running: usize,
    deferred: Vec<Hash>,
}

impl Pins {
    fn state(&self) -> std::sync::MutexGuard<'_, PinState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called with the mutation lock held. True when a snapshot runs: the blob is kept for now.
    pub(super) fn defer(&self, hash: Hash) -> bool {
        let mut state = self.state();
        if state.running > 0 {
            state.deferred.push(hash);
        }
        state.running > 0
    }

    /// Blobs whose unlinking was deferred, once no snapshot runs any more.
    pub(super) fn take_deferred(&self) -> Vec<Hash> {
        let mut state = self.state();
        if state.running > 0 {
            return Vec::new();
        }
        std::mem::take(&mut state.deferred)
    }

    fn pin(&self) -> Pin {
        self.state().running += 1;
        Pin(self.0.clone())
    }
}

/// Keeps blobs from being unlinked while it lives.
struct Pin(Arc<Mutex<PinState>>);

impl Drop for Pin {
    fn drop(&mut self) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.running = state.running.saturating_sub(1);
    }
}

/// One line of the file tree's dump.
#[derive(Serialize, Deserialize)]
pub struct EntryLine {
    /// `/`-separated; names cannot contain `/`.
    pub path: String,
    pub entry: Entry,
}

/// A consistent copy of the accounts and the file tree, and the blobs it references (pinned until dropped).
pub struct Snapshot {
    /// One account per line, as JSON.
    pub users: PathBuf,
    pub user_count: u64,
    /// One `EntryLine` per line, parents before children.
    pub entries: PathBuf,
    pub entry_count: u64,
    /// Every blob the tree references, with its size on disk, and where it is.
    pub blobs: Vec<(Hash, u64, PathBuf)>,
    pub replica_id: String,
    _pin: Pin,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.users);
        let _ = std::fs::remove_file(&self.entries);
    }
}

/// What `Store::load` put in.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub users: u64,
    pub entries: u64,
    /// Distinct contents the tree references: every one must be installed with `install_blob`.
    pub blobs: Vec<Hash>,
}

impl Store {
    /// Takes a snapshot. Uploads and deletions wait only while the metadata is dumped (about a second per
    /// 100 000 records).
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let (users_path, users_file) = self.scratch_file()?;
        let (entries_path, entries_file) = self.scratch_file()?;
        let guard = self.mutate.lock().await;
        let pin = self.pins.pin();
        let (users, entries, refs) = (self.users.clone(), self.entries.clone(), self.refs.clone());
        let (up, ep) = (users_path.clone(), entries_path.clone());
        let dumped = tokio::task::spawn_blocking(move || -> Result<(u64, u64, Vec<Hash>), StoreError> {
            let user_count = dump_users(&users, users_file, &up)?;
            let entry_count = dump_entries(&entries, entries_file, &ep)?;
            let mut blobs = Vec::new();
            for kv in refs.iter() {
                let (k, _) = kv?;
                if let Ok(hash) = <[u8; 32]>::try_from(k.as_ref()) {
                    blobs.push(Hash(hash));
                }
            }
            Ok((user_count, entry_count, blobs))
        })
        .await
        .map_err(|e| StoreError::io(Path::new("snapshot"), std::io::Error::other(e)));
        drop(guard);
        let cleanup = || {
            let _ = std::fs::remove_file(&users_path);
            let _ = std::fs::remove_file(&entries_path);
        };
        let (user_count, entry_count, hashes) = match dumped.and_then(|r| r) {
            Ok(done) => done,
            Err(e) => {
                cleanup();
                return Err(e);
            }
        };
        let mut blobs = Vec::with_capacity(hashes.len());
        for hash in hashes {
            let path = self.blob_path(hash);
            match std::fs::metadata(&path) {
                Ok(meta) => blobs.push((hash, meta.len(), path)),
                Err(e) => {
                    cleanup();
                    return Err(StoreError::io(&path, e));
                }
            }
        }
        let replica_id = self.replica_id()?;
        Ok(Snapshot { users: users_path, user_count, entries: entries_path, entry_count, blobs, replica_id, _pin: pin })
    }

    /// Unlinks the blobs whose deletion waited for a snapshot, once none runs. Call after dropping one.
    pub async fn collect_deferred(&self) -> Result<(), StoreError> {
        let _guard = self.mutate.lock().await;
        for hash in self.pins.take_deferred() {
            if !self.refs.contains_key(hash.0)? {
                self.blobs.remove(hash)?;
            }
        }
        Ok(())
    }

    /// Fills an empty store from a snapshot's two dumps, checking every record, and recomputes reference
    /// counts and usage. The caller then installs every blob of `Loaded::blobs`.
    pub fn load(&self, users: impl BufRead, entries: impl BufRead) -> Result<Loaded, StoreError> {
        if !self.users.is_empty() || !self.entries.is_empty() {
            return Err(StoreError::Exists);
        }
        let mut loaded = Loaded::default();
        let mut batch = sled::Batch::default();
        for (n, line) in users.lines().enumerate() {
            let line = line.map_err(|e| StoreError::io(Path::new("users.jsonl"), e))?;
            let user: User = decode(format!("users.jsonl line {}", n + 1).as_bytes(), line.as_bytes())?;
            batch.insert(user.login.as_bytes(), encode(&user));
            loaded.users += 1;
            if loaded.users % BATCH as u64 == 0 {
                self.users.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.users.apply_batch(batch)?;
        let mut refs: BTreeMap<Hash, u64> = BTreeMap::new();
        let mut usage: HashMap<String, u64> = HashMap::new();
        let mut batch = sled::Batch::default();
        for (n, line) in entries.lines().enumerate() {
            let where_ = format!("entries.jsonl line {}", n + 1);
            let line = line.map_err(|e| StoreError::io(Path::new("entries.jsonl"), e))?;
            let record: EntryLine = decode(where_.as_bytes(), line.as_bytes())?;
            let path: Vec<String> = record.path.split('/').map(String::from).collect();
            if path.iter().any(|name| name.is_empty() || name.contains('\0')) {
                return Err(corrupt(&where_, "an empty or invalid name in the path"));
            }
            let entry = record.entry;
            if !entry.dir {
                let hash = entry.blob().ok_or_else(|| corrupt(&where_, "a file without a content hash"))?;
                *refs.entry(hash).or_default() += 1;
                *usage.entry(entry.owner.clone()).or_default() += entry.size;
            }
            batch.insert(entry_key(&path), encode(&entry));
            loaded.entries += 1;
            if loaded.entries % BATCH as u64 == 0 {
                self.entries.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        self.entries.apply_batch(batch)?;
        let mut batch = sled::Batch::default();
        for (hash, count) in &refs {
            batch.insert(&hash.0, &count.to_be_bytes());
        }
        self.refs.apply_batch(batch)?;
        let mut batch = sled::Batch::default();
        for (owner, bytes) in &usage {
            batch.insert(owner.as_bytes(), &bytes.to_be_bytes());
        }
        self.usage.apply_batch(batch)?;
        self.stamp_all()?;
        self.db.flush()?;
        loaded.blobs = refs.into_keys().collect();
        Ok(loaded)
    }

    /// Records every account and file as a change of this (new) replica: a restored box is a new replica,
    /// and what it holds travels to the region like any local change — where the region has the same, the
    /// versions merge; where it differs, both are kept.
    fn stamp_all(&self) -> Result<(), StoreError> {
        let mut counter = super::counter(self.meta.get(versions::COUNTER)?);
        let mut stamp = |record: Vec<u8>, partition: String| -> Result<(), StoreError> {
            counter += 1;
            let version = versions::Version {
                vv: std::iter::once((self.me.clone(), counter)).collect(),
                writer: self.me.clone(),
                counter,
                part: partition.clone(),
                deleted: None,
                prev: None,
            };
            self.journal.insert(versions::journal_key(&partition, &self.me, counter), record.as_slice())?;
            self.versions.insert(record, encode(&version))?;
            Ok(())
        };
        for kv in self.users.iter() {
            let (k, v) = kv?;
            let user: User = decode(&k, &v)?;
            stamp(versions::user_key(&user.login), user.school.unwrap_or_default())?;
        }
        for kv in self.entries.iter() {
            let (k, _) = kv?;
            let partition = match super::sync::path_of_key(&k) {
                Some(path) => versions::partition_of(&path).to_owned(),
                None => String::new(),
            };
            stamp(versions::file_key(&k), partition)?;
        }
        self.meta.insert(versions::COUNTER, &counter.to_be_bytes())?;
        Ok(())
    }

    /// Makes a staged upload a blob, without any file pointing to it yet (restore).
    pub async fn install_blob(&self, staged: Staged) -> Result<(), StoreError> {
        let blobs = self.blobs.clone();
        let mut staged = staged;
        tokio::task::spawn_blocking(move || blobs.install(&mut staged))
            .await
            .map_err(|e| StoreError::io(Path::new("blobs"), std::io::Error::other(e)))?
    }

    /// Whether a blob is on disk.
    pub fn has_blob(&self, hash: Hash) -> bool {
        self.blob_path(hash).is_file()
    }
}

fn corrupt(key: &str, message: &str) -> StoreError {
    StoreError::Corrupt { key: key.to_string(), source: serde::de::Error::custom(message) }
}

fn dump_users(users: &sled::Tree, file: File, path: &Path) -> Result<u64, StoreError> {
    let mut out = BufWriter::new(file);
    let mut count = 0;
    for kv in users.iter() {
        let (_, v) = kv?;
        out.write_all(&v).and_then(|()| out.write_all(b"\n")).map_err(|e| StoreError::io(path, e))?;
        count += 1;
    }
    out.flush().map_err(|e| StoreError::io(path, e))?;
    Ok(count)
}

/// Keys sort as `parent NUL name`, so a parent's key always sorts before its children's: the dump lists
/// parents first, which is what loading (and any reader) expects.
fn dump_entries(entries: &sled::Tree, file: File, path: &Path) -> Result<u64, StoreError> {
    let mut out = BufWriter::new(file);
    let mut count = 0;
    for kv in entries.iter() {
        let (k, v) = kv?;
        let entry: Entry = decode(&k, &v)?;
        let (parent, name) = match k.iter().position(|&b| b == 0) {
            Some(i) => (&k[..i], &k[i + 1..]),
            None => continue,
        };
        let mut full = String::from_utf8_lossy(parent).into_owned();
        if !full.is_empty() {
            full.push('/');
        }
        full.push_str(&String::from_utf8_lossy(name));
        let line = encode(&EntryLine { path: full, entry });
        out.write_all(&line).and_then(|()| out.write_all(b"\n")).map_err(|e| StoreError::io(path, e))?;
        count += 1;
    }
    out.flush().map_err(|e| StoreError::io(path, e))?;
    Ok(count)
}

//! The store's side of replication: what a peer lacks, and applying what a peer sends.
//!
//! A peer says what it has seen of each writer in a partition (its high-water marks); [`Store::changes_since`]
//! returns the records whose latest change it has not seen, in each writer's order. The receiver applies them
//! with [`Store::apply_remote`], one transaction per record, together with its high-water mark for that writer,
//! so a batch cut anywhere resumes where it stopped and a batch received twice changes nothing the second time.
//!
//! Conflicts (each side changed a record the other had not seen) resolve the same way on both sides, so the
//! two converge whoever sees the conflict first:
//! - two different contents: the earlier edit keeps the name, the later one is kept beside it as
//!   `nom (conflit AAAA-MM-JJ HHMM box|region).ext` (UTC, the side that made the later edit);
//! - an edit against a deletion: the edit wins; a folder against a file: the folder keeps the name;
//! - an account: the directory fields of the region's version (the region owns the directory), the password of
//!   whichever changed it last.
//!
//! A resolution is a new change of the receiver, whose vector includes both sides', so it travels back and
//! settles the record on the other side too.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionalTree;
use sled::Transactional;

use super::versions::{self, Order, Version, Versions};
use super::{
    children_prefix, counter, decode, encode, entry_key, now_ms, tx_add, tx_get, unwrap_tx, Entry, Hash, Store,
};
use super::{StoreError, TxResult};
use crate::account::User;

/// The account that never replicates: each side has its own technician's `admin`.
pub const LOCAL_ADMIN: &str = "admin";

/// One record as it travels: where it is (relative to the school's root), its version, its state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Change {
    pub version: Version,
    pub record: Record,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// A file or folder; `entry` is `None` once deleted.
    File { path: Vec<String>, entry: Option<Entry> },
    /// An account; `user` is `None` once deleted.
    User { login: String, user: Option<Box<User>> },
}

impl Record {
    /// The content a file change needs on the receiving side.
    pub fn content(&self) -> Option<(Hash, u64)> {
        match self {
            Record::File { entry: Some(e), .. } if !e.dir => e.blob().map(|h| (h, e.size)),
            _ => None,
        }
    }
}

/// Who the two sides are, for naming conflict copies the same way on both.
#[derive(Clone, Debug)]
pub struct Sides {
    /// The region's replica id: changes it wrote are "region", all others "box".
    pub region: String,
}

/// What applying a batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub applied: usize,
    pub known: usize,
    pub conflicts: usize,
    /// Records refused (e.g. a login another school uses), with why.
    pub refused: Vec<String>,
}

const HWM_PREFIX: u8 = b'h';

fn hwm_key(partition: &str, writer: &str) -> Vec<u8> {
    let mut key = vec![HWM_PREFIX];
    key.extend_from_slice(&versions::journal_prefix(partition, writer));
    key
}

impl Store {
    /// This replica's high-water marks for `partition`: for each writer, the counter up to which its changes
    /// are here; this replica's own counter for itself.
    pub fn high_water(&self, partition: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut marks = BTreeMap::new();
        let mut prefix = vec![HWM_PREFIX];
        prefix.extend_from_slice(partition.as_bytes());
        prefix.push(0);
        for kv in self.meta.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let writer = String::from_utf8_lossy(&k[prefix.len()..k.len().saturating_sub(1)]).into_owned();
            marks.insert(writer, counter(Some(v)));
        }
        marks.insert(self.me.clone(), counter(self.meta.get(versions::COUNTER)?));
        Ok(marks)
    }

    /// This replica's id, as changes are stamped with it.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Up to `limit` records of `partition` whose latest change the peer has not seen (`seen`: its high-water
    /// marks), paths relative to `root` (the school's folder: `[]` on a box, `schools/<UAI>` at the region).
    pub fn changes_since(
        &self,
        partition: &str,
        root: &[String],
        seen: &BTreeMap<String, u64>,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::new();
        let mut start = partition.as_bytes().to_vec();
        start.push(0);
        let partition_prefix = start.clone();
        while out.len() < limit {
            // The next writer of the partition.
            let Some(kv) = self.journal.range(start.clone()..).next() else { break };
            let (k, _) = kv?;
            if !k.starts_with(&partition_prefix) {
                break;
            }
            let Some((_, writer, _)) = versions::parse_journal_key(&k) else { break };
            let prefix = versions::journal_prefix(partition, &writer);
            let from = versions::journal_key(partition, &writer, seen.get(&writer).copied().unwrap_or(0) + 1);
            for kv in self.journal.range(from..) {
                let (k, record_key) = kv?;
                if !k.starts_with(&prefix) || out.len() >= limit {
                    break;
                }
                if let Some(change) = self.change_of(&record_key, root)? {
                    out.push(change);
                }
            }
            // Past this writer: its prefix with the final NUL raised to 1.
            start = prefix;
            if let Some(last) = start.last_mut() {
                *last = 1;
            }
        }
        Ok(out)
    }

    /// The change a record's current state and version make, relative to `root`; `None` for what does not
    /// travel (the local admin, a record outside `root`).
    fn change_of(&self, record_key: &[u8], root: &[String]) -> Result<Option<Change>, StoreError> {
        let Some(mut version) = versions::read(&self.versions, record_key)? else { return Ok(None) };
        version.part.clear();
        let record = match record_key.split_first() {
            Some((b'f', key)) => {
                let Some(path) = path_of_key(key) else { return Ok(None) };
                let Some(rel) = path.strip_prefix(root) else { return Ok(None) };
                if rel.is_empty() {
                    return Ok(None);
                }
                let entry = match self.entries.get(key)? {
                    Some(v) => Some(decode::<Entry>(key, &v)?),
                    None => None,
                };
                Record::File { path: rel.to_vec(), entry }
            }
            Some((b'u', login)) => {
                let login = String::from_utf8_lossy(login).into_owned();
                if login == LOCAL_ADMIN {
                    return Ok(None);
                }
                let user = match self.users.get(&login)? {
                    Some(v) => {
                        let mut user: User = decode(login.as_bytes(), &v)?;
                        user.school = None;
                        Some(Box::new(user))
                    }
                    None => None,
                };
                Record::User { login, user }
            }
            _ => return Ok(None),
        };
        Ok(Some(Change { version, record }))
    }

    /// Applies changes received from a peer into `partition` (files under `root`), in order. Every file
    /// content they name must be here already (`has_blob`); `MissingContent` otherwise, with nothing of that
    /// change applied. Durable when it returns.
    pub async fn apply_remote(
        &self,
        partition: &str,
        root: &[String],
        changes: &[Change],
        sides: &Sides,
    ) -> Result<Applied, StoreError> {
        let mut report = Applied::default();
        let mut released = Vec::new();
        {
            let _guard = self.mutate.lock().await;
            for change in changes {
                if let Some((hash, _)) = change.record.content() {
                    if !self.has_blob(hash) {
                        return Err(StoreError::MissingContent(hash.to_hex()));
                    }
                }
                let outcome = match &change.record {
                    Record::File { path, entry } => {
                        if path.is_empty() || path.iter().any(|n| n.is_empty() || n.contains(['/', '\0'])) {
                            report.refused.push(format!("bad path {path:?}"));
                            self.advance(partition, &change.version)?;
                            continue;
                        }
                        let full: Vec<String> = root.iter().chain(path.iter()).cloned().collect();
                        self.apply_file(partition, &full, entry.as_ref(), &change.version, sides)?
                    }
                    Record::User { login, user } => {
                        if login == LOCAL_ADMIN {
                            self.advance(partition, &change.version)?;
                            continue;
                        }
                        let school = (!partition.is_empty()).then(|| partition.to_owned());
                        match self.users.get(login)? {
                            Some(v) if decode::<User>(login.as_bytes(), &v)?.school != school => {
                                report.refused.push(format!("login {login} belongs to another school"));
                                self.advance(partition, &change.version)?;
                                continue;
                            }
                            _ => {}
                        }
                        let user = user.as_deref().cloned().map(|mut u| {
                            u.school.clone_from(&school);
                            u
                        });
                        self.apply_user(partition, login, user.as_ref(), &change.version, sides)?
                    }
                };
                match outcome {
                    Outcome::Known => report.known += 1,
                    Outcome::Applied(r) => {
                        report.applied += 1;
                        released.extend(r);
                    }
                    Outcome::Conflict(r) => {
                        report.conflicts += 1;
                        released.extend(r);
                    }
                }
            }
        }
        self.flush().await?;
        if report.conflicts > 0 {
            // Resolutions are this replica's own changes: they travel back.
            self.changed.notify_one();
        }
        for hash in released {
            self.release(hash).await?;
        }
        Ok(report)
    }

    /// Records that `version`'s writer was seen up to its counter, without applying anything.
    fn advance(&self, partition: &str, version: &Version) -> Result<(), StoreError> {
        let key = hwm_key(partition, &version.writer);
        let seen = counter(self.meta.get(&key)?);
        if version.counter > seen {
            self.meta.insert(key, &version.counter.to_be_bytes())?;
        }
        Ok(())
    }

    fn apply_file(
        &self,
        partition: &str,
        path: &[String],
        remote: Option<&Entry>,
        version: &Version,
        sides: &Sides,
    ) -> Result<Outcome, StoreError> {
        let key = entry_key(path);
        let record_key = versions::file_key(&key);
        // Transactional trees cannot scan; the mutation lock is held, so this stays true until we commit.
        let has_children = self.entries.scan_prefix(children_prefix(path)).next().is_some();
        let trees = (&self.entries, &self.refs, &self.usage, &self.versions, &self.journal, &self.meta);
        unwrap_tx(trees.transaction(|(entries, refs, usage, vtree, journal, meta)| {
            let v = Versions { meta, versions: vtree, journal, me: &self.me };
            let held = v.get(&record_key)?;
            let local: Option<Entry> = tx_get(entries, &key)?;
            let order = match &held {
                Some(h) => versions::compare(&h.vv, &version.vv),
                None => Order::Newer,
            };
            let mut edit = TreeEdit { entries, refs, usage, v: &v, partition, released: Vec::new() };
            let outcome = match order {
                Order::Known => None,
                Order::Newer => {
                    let mut taken = version.clone();
                    taken.part = partition.to_owned();
                    match remote {
                        Some(entry) => edit.put(path, &key, local.as_ref(), entry)?,
                        // A folder deleted there while something new was put in it here: it stays.
                        None if local.as_ref().is_some_and(|e| e.dir) && has_children => {
                            let merged = versions::merge(&held.map(|h| h.vv).unwrap_or_default(), &version.vv);
                            edit.restamp(&record_key, merged)?;
                            let released = std::mem::take(&mut edit.released);
                            return finish(meta, partition, version, Outcome::Conflict(released));
                        }
                        None => edit.remove(&key, local.as_ref())?,
                    }
                    v.put(&record_key, held.as_ref(), &taken)?;
                    Some(false)
                }
                Order::Concurrent => {
                    let held_vv = held.as_ref().map(|h| h.vv.clone()).unwrap_or_default();
                    let merged = versions::merge(&held_vv, &version.vv);
                    match (local.as_ref(), remote) {
                        // Both gone, or the same content, or both folders: nothing to keep apart.
                        (None, None) => {}
                        (Some(l), Some(r)) if l.dir == r.dir && l.hash == r.hash => {}
                        // An edit against a deletion: the edit wins.
                        (Some(_), None) => {}
                        (None, Some(r)) => edit.put(path, &key, None, r)?,
                        (Some(l), Some(r)) => {
                            let local_side = (l.clone(), held.as_ref().map(|h| h.writer.clone()).unwrap_or_default());
                            let remote_side = (r.clone(), version.writer.clone());
                            // The folder keeps the name; else the earlier edit does.
                            let (keep, aside) = if l.dir || r.dir {
                                if l.dir {
                                    (local_side, remote_side)
                                } else {
                                    (remote_side, local_side)
                                }
                            } else if (l.modified, &local_side.1) <= (r.modified, &remote_side.1) {
                                (local_side, remote_side)
                            } else {
                                (remote_side, local_side)
                            };
                            let side = if aside.1 == sides.region { "region" } else { "box" };
                            let name = conflict_name(path.last().map_or("", String::as_str), aside.0.modified, side);
                            let mut copy = path.to_vec();
                            if let Some(last) = copy.last_mut() {
                                *last = name;
                            }
                            edit.put(path, &key, Some(l), &keep.0)?;
                            let copy_key = entry_key(&copy);
                            let existing: Option<Entry> = tx_get(entries, &copy_key)?;
                            if existing.as_ref().map(|e| &e.hash) != Some(&aside.0.hash) {
                                edit.put(&copy, &copy_key, existing.as_ref(), &aside.0)?;
                                v.stamp(&versions::file_key(&copy_key), partition, None, None)?;
                            }
                        }
                    }
                    edit.restamp(&record_key, merged)?;
                    Some(true)
                }
            };
            let released = std::mem::take(&mut edit.released);
            let outcome = match outcome {
                None => Outcome::Known,
                Some(false) => Outcome::Applied(released),
                Some(true) => Outcome::Conflict(released),
            };
            finish(meta, partition, version, outcome)
        }))
    }

    fn apply_user(
        &self,
        partition: &str,
        login: &str,
        remote: Option<&User>,
        version: &Version,
        sides: &Sides,
    ) -> Result<Outcome, StoreError> {
        let record_key = versions::user_key(login);
        let trees = (&self.users, &self.versions, &self.journal, &self.meta);
        unwrap_tx(trees.transaction(|(users, vtree, journal, meta)| {
            let v = Versions { meta, versions: vtree, journal, me: &self.me };
            let held = v.get(&record_key)?;
            let local: Option<User> = tx_get(users, login.as_bytes())?;
            let order = match &held {
                Some(h) => versions::compare(&h.vv, &version.vv),
                None => Order::Newer,
            };
            let write = |user: Option<&User>| -> TxResult<()> {
                match user {
                    Some(u) => users.insert(login.as_bytes(), encode(u))?,
                    None => users.remove(login.as_bytes())?,
                };
                Ok(())
            };
            let outcome = match order {
                Order::Known => Outcome::Known,
                Order::Newer => {
                    write(remote)?;
                    let mut taken = version.clone();
                    taken.part = partition.to_owned();
                    v.put(&record_key, held.as_ref(), &taken)?;
                    Outcome::Applied(Vec::new())
                }
                Order::Concurrent => {
                    let held_writer = held.as_ref().map(|h| h.writer.clone()).unwrap_or_default();
                    let merged_user = match (local.as_ref(), remote) {
                        (Some(l), Some(r)) => {
                            // The directory is the region's; the password is whoever changed it last.
                            let (mut out, other) =
                                if version.writer == sides.region { (r.clone(), l) } else { (l.clone(), r) };
                            if other.password_changed > out.password_changed {
                                out.password_hash.clone_from(&other.password_hash);
                                out.activation_code.clone_from(&other.activation_code);
                                out.password_changed = other.password_changed;
                            }
                            Some(out)
                        }
                        // A change against a deletion: the deletion wins only if the region made it.
                        (Some(l), None) => (version.writer != sides.region).then(|| l.clone()),
                        (None, Some(r)) => (held_writer != sides.region).then(|| r.clone()),
                        (None, None) => None,
                    };
                    write(merged_user.as_ref())?;
                    let merged = versions::merge(&held.as_ref().map(|h| h.vv.clone()).unwrap_or_default(), &version.vv);
                    let mut stamped = v.stamp(&record_key, partition, merged_user.is_none().then(now_ms), None)?;
                    stamped.vv = versions::merge(&merged, &stamped.vv);
                    vtree.insert(record_key.as_slice(), encode(&stamped))?;
                    Outcome::Conflict(Vec::new())
                }
            };
            finish(meta, partition, version, outcome)
        }))
    }
}

/// Records the writer's high-water mark inside the change's transaction.
fn finish(meta: &TransactionalTree, partition: &str, version: &Version, outcome: Outcome) -> TxResult<Outcome> {
    let key = hwm_key(partition, &version.writer);
    if version.counter > counter(meta.get(&key)?) {
        meta.insert(key, &version.counter.to_be_bytes())?;
    }
    Ok(outcome)
}

enum Outcome {
    Known,
    Applied(Vec<Hash>),
    Conflict(Vec<Hash>),
}

/// Edits of the tree inside one transaction, keeping references and usage right.
struct TreeEdit<'a> {
    entries: &'a TransactionalTree,
    refs: &'a TransactionalTree,
    usage: &'a TransactionalTree,
    v: &'a Versions<'a>,
    partition: &'a str,
    /// Contents whose last reference went.
    released: Vec<Hash>,
}

impl TreeEdit<'_> {
    /// Puts `entry` at `path` (replacing `old`), creating missing parent folders.
    fn put(&mut self, path: &[String], key: &[u8], old: Option<&Entry>, entry: &Entry) -> TxResult<()> {
        if let Some((_, parents)) = path.split_last() {
            Store::tx_make_parents(self.entries, self.v, parents, &entry.owner, entry.modified)?;
        }
        if let Some(old) = old {
            self.unref(old)?;
        }
        if !entry.dir {
            tx_add(self.usage, entry.owner.as_bytes(), entry.size as i64)?;
            if let Some(h) = entry.blob() {
                tx_add(self.refs, &h.0, 1)?;
                self.released.retain(|r| *r != h);
            }
        }
        self.entries.insert(key, encode(entry))?;
        Ok(())
    }

    fn remove(&mut self, key: &[u8], old: Option<&Entry>) -> TxResult<()> {
        if let Some(old) = old {
            self.unref(old)?;
            self.entries.remove(key)?;
        }
        Ok(())
    }

    fn unref(&mut self, old: &Entry) -> TxResult<()> {
        if old.dir {
            return Ok(());
        }
        tx_add(self.usage, old.owner.as_bytes(), -(old.size as i64))?;
        if let Some(h) = old.blob() {
            if tx_add(self.refs, &h.0, -1)? == 0 {
                self.released.push(h);
            }
        }
        Ok(())
    }

    /// A new change of this replica whose vector also includes `merged`: a resolution that travels back.
    fn restamp(&self, record_key: &[u8], merged: BTreeMap<String, u64>) -> TxResult<()> {
        let mut stamped = self.v.stamp(record_key, self.partition, None, None)?;
        let deleted = self.entries.get(&record_key[1..])?.is_none();
        stamped.vv = versions::merge(&merged, &stamped.vv);
        stamped.deleted = deleted.then(now_ms);
        self.v.versions.insert(record_key, encode(&stamped))?;
        Ok(())
    }
}

/// `rapport.pdf`, 2026-11-25 08:30 UTC, "box" → `rapport (conflit 2026-11-25 0830 box).pdf`.
pub fn conflict_name(name: &str, modified_ms: i64, side: &str) -> String {
    let stamp = jiff::Timestamp::from_millisecond(modified_ms)
        .map(|t| t.strftime("%Y-%m-%d %H%M").to_string())
        .unwrap_or_else(|_| "0000-00-00 0000".into());
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    format!("{stem} (conflit {stamp} {side}){ext}")
}

/// The tree path of an entry key (`parent NUL name`).
pub(super) fn path_of_key(key: &[u8]) -> Option<Vec<String>> {
    let i = key.iter().position(|&b| b == 0)?;
    let parent = std::str::from_utf8(&key[..i]).ok()?;
    let name = std::str::from_utf8(&key[i + 1..]).ok()?;
    let mut path: Vec<String> =
        if parent.is_empty() { Vec::new() } else { parent.split('/').map(String::from).collect() };
    path.push(name.to_owned());
    Some(path)
}

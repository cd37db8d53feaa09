//! Versions and the change journal: what replication knows of every record.
//!
//! Every replicated record (a file or folder of the tree, an account) has a [`Version`] in the `versions`
//! tree: a version vector (for each replica that changed it, that replica's counter at its change) and the
//! stamp `(writer, counter)` of the change that made the current state. A deleted record keeps its version,
//! marked deleted: the tombstone that lets a deletion travel and lets an edit made meanwhile elsewhere win.
//!
//! The `journal` tree indexes records by stamp within their partition — `partition NUL writer NUL counter` →
//! record key — and holds only each record's latest stamp, so a peer that says "I have seen writer W up to
//! counter n" is sent exactly the records whose latest change it has not seen, in each writer's order (the
//! high-water marks of Kolibri's Morango; the vectors are Syncthing's). A partition is one school: the box has
//! one (`""`), the region one per UAI.
//!
//! Each replica counts its own changes in `meta/counter`, within the same transaction as the change itself,
//! so a counter value is never reused, even across a crash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionalTree;

use super::{decode, encode, TxResult};

/// Key of this replica's change counter in the `meta` tree.
pub const COUNTER: &[u8] = b"counter";

/// Records are files and folders (by their tree key) and accounts (by login).
pub fn file_key(entry_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(entry_key.len() + 1);
    key.push(b'f');
    key.extend_from_slice(entry_key);
    key
}

pub fn user_key(login: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(login.len() + 1);
    key.push(b'u');
    key.extend_from_slice(login.as_bytes());
    key
}

/// The partition of a tree path: the school under `schools/<UAI>/` (the region), else `""` (the box).
pub fn partition_of(path: &[String]) -> &str {
    match path {
        [first, uai, ..] if first == SCHOOLS => uai,
        _ => "",
    }
}

/// The folder of the region's tree holding one folder per school.
pub const SCHOOLS: &str = "schools";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Version {
    /// Version vector: replica id → its counter at the latest of its changes this state includes.
    pub vv: BTreeMap<String, u64>,
    /// The change that made this state.
    pub writer: String,
    pub counter: u64,
    /// The record's partition (where its journal entry is).
    #[serde(default)]
    pub part: String,
    /// Set (Unix ms) when the record was deleted: a tombstone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<i64>,
    /// For a file: the content hash it had before this change, which the peer probably has (a base for
    /// sending only what changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// How a received version relates to the one held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The received one includes everything held: take it.
    Newer,
    /// Held already (equal, or the held one includes it): ignore it.
    Known,
    /// Each has changes the other lacks: a conflict.
    Concurrent,
}

/// Compares `remote` with `local` (vectors only).
pub fn compare(local: &BTreeMap<String, u64>, remote: &BTreeMap<String, u64>) -> Order {
    let covers = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
        b.iter().all(|(replica, n)| a.get(replica).is_some_and(|m| m >= n))
    };
    match (covers(local, remote), covers(remote, local)) {
        (true, _) => Order::Known,
        (false, true) => Order::Newer,
        (false, false) => Order::Concurrent,
    }
}

/// The least vector that includes both.
pub fn merge(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (replica, n) in b {
        let slot = out.entry(replica.clone()).or_default();
        *slot = (*slot).max(*n);
    }
    out
}

/// `partition NUL writer NUL counter(8 bytes, big endian)`: a prefix scan on `partition NUL writer NUL`
/// lists one writer's changes in order.
pub fn journal_key(partition: &str, writer: &str, counter: u64) -> Vec<u8> {
    let mut key = journal_prefix(partition, writer);
    key.extend_from_slice(&counter.to_be_bytes());
    key
}

pub fn journal_prefix(partition: &str, writer: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(partition.len() + writer.len() + 10);
    key.extend_from_slice(partition.as_bytes());
    key.push(0);
    key.extend_from_slice(writer.as_bytes());
    key.push(0);
    key
}

/// Splits a journal key into (partition, writer, counter).
pub fn parse_journal_key(key: &[u8]) -> Option<(String, String, u64)> {
    let first = key.iter().position(|&b| b == 0)?;
    let rest = &key[first + 1..];
    let second = rest.iter().position(|&b| b == 0)?;
    let counter = <[u8; 8]>::try_from(&rest[second + 1..]).ok()?;
    Some((
        String::from_utf8_lossy(&key[..first]).into_owned(),
        String::from_utf8_lossy(&rest[..second]).into_owned(),
        u64::from_be_bytes(counter),
    ))
}

/// The version trees inside one transaction.
pub struct Versions<'a> {
    pub meta: &'a TransactionalTree,
    pub versions: &'a TransactionalTree,
    pub journal: &'a TransactionalTree,
    /// This replica's id.
    pub me: &'a str,
}

impl Versions<'_> {
    pub fn get(&self, key: &[u8]) -> TxResult<Option<Version>> {
        super::tx_get(self.versions, key)
    }

    /// Records a local change of `key`: the next counter of this replica, the vector bumped, the journal
    /// entry moved. `deleted` makes it a tombstone; `prev` is the content hash the change replaced.
    pub fn stamp(&self, key: &[u8], partition: &str, deleted: Option<i64>, prev: Option<String>) -> TxResult<Version> {
        let counter = super::counter(self.meta.get(COUNTER)?) + 1;
        self.meta.insert(COUNTER, &counter.to_be_bytes())?;
        let old = self.get(key)?;
        let mut vv = old.as_ref().map(|v| v.vv.clone()).unwrap_or_default();
        vv.insert(self.me.to_owned(), counter);
        let version = Version { vv, writer: self.me.to_owned(), counter, part: partition.to_owned(), deleted, prev };
        self.put(key, old.as_ref(), &version)?;
        Ok(version)
    }

    /// Stores `version` for `key` (received, or made by a conflict's resolution), moving its journal entry.
    pub fn put(&self, key: &[u8], old: Option<&Version>, version: &Version) -> TxResult<()> {
        if let Some(old) = old {
            self.journal.remove(journal_key(&old.part, &old.writer, old.counter))?;
        }
        self.journal.insert(journal_key(&version.part, &version.writer, version.counter), key)?;
        self.versions.insert(key, encode(version))?;
        Ok(())
    }
}

/// Reads a version outside a transaction.
pub fn read(tree: &sled::Tree, key: &[u8]) -> Result<Option<Version>, super::StoreError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => decode(key, &v).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    }

    #[test]
    fn vectors_order_changes() {
        let a = vv(&[("box", 3), ("region", 1)]);
        assert_eq!(compare(&a, &a), Order::Known);
        assert_eq!(compare(&a, &vv(&[("box", 2)])), Order::Known);
        assert_eq!(compare(&a, &vv(&[("box", 4), ("region", 1)])), Order::Newer);
        assert_eq!(compare(&a, &vv(&[("box", 2), ("region", 2)])), Order::Concurrent);
        assert_eq!(compare(&BTreeMap::new(), &a), Order::Newer);
        assert_eq!(merge(&a, &vv(&[("box", 2), ("region", 5), ("x", 1)])), vv(&[("box", 3), ("region", 5), ("x", 1)]));
    }

    #[test]
    fn journal_keys_sort_by_counter_and_parse_back() {
        let a = journal_key("0123456A", "r1", 9);
        let b = journal_key("0123456A", "r1", 10);
        assert!(a < b);
        assert!(a.starts_with(&journal_prefix("0123456A", "r1")));
        assert_eq!(parse_journal_key(&b), Some(("0123456A".into(), "r1".into(), 10)));
        assert_eq!(partition_of(&["schools".into(), "0123456A".into(), "users".into()]), "0123456A");
        assert_eq!(partition_of(&["users".into(), "lea".into()]), "");
    }
}

//! Moving and copying within the tree (WebDAV's MOVE and COPY) without reading or writing any content.
//!
//! A move is, for replication, the records at the old names deleted and the same records created at the new
//! names, in one transaction: the new records are stamped first (parents before children), then the old ones
//! deleted (deepest first), so a peer that applies them in order never drops a content it is about to need.
//! A copy adds a reference to the same blob: content-addressed storage makes it free on disk, while the copy
//! counts against its owner's quota like any other file.

use sled::Transactional;

use super::{abort, entry_key, tx_get, unwrap_tx, versions, Entry, Store, StoreError, Written};

/// Whether tree key `key` is `path`'s own (`top`) or one of its descendants' (they start with the path joined by
/// `/`, then NUL for children, `/` for deeper).
fn descends(key: &[u8], joined: &[u8]) -> bool {
    key.len() > joined.len() && key.starts_with(joined) && matches!(key[joined.len()], 0 | b'/')
}

impl Store {
    /// Moves the file or folder `from` (everything below it with it) to `to`, creating `to`'s missing parents.
    /// `NotFound` if `from` is missing, `Exists` if `to` exists (the caller deletes it first when overwriting),
    /// `NotADirectory` when `to` lies inside `from`. Owners and quotas are unchanged. Durable when it returns.
    pub async fn rename(&self, from: &[String], to: &[String]) -> Result<(), StoreError> {
        if from.is_empty() || to.is_empty() {
            return Err(StoreError::NotFound);
        }
        if to.starts_with(from) {
            return Err(StoreError::NotADirectory);
        }
        let guard = self.mutate.lock().await;
        let from_key = entry_key(from);
        let to_key = entry_key(to);
        let (old_joined, new_joined) = (from.join("/"), to.join("/"));
        // (old key, new key), parents first: the scan's order (a parent's key sorts before its children's).
        let mut pairs = vec![(from_key.clone(), to_key.clone())];
        for kv in self.entries.scan_prefix(old_joined.as_bytes()) {
            let (k, _) = kv?;
            if descends(&k, old_joined.as_bytes()) {
                let mut new = new_joined.clone().into_bytes();
                new.extend_from_slice(&k[old_joined.len()..]);
                pairs.push((k.to_vec(), new));
            }
        }
        let (old_part, new_part) = (versions::partition_of(from), versions::partition_of(to));
        let now = super::now_ms();
        let trees = (&self.entries, &self.versions, &self.journal, &self.meta, &self.props);
        unwrap_tx(trees.transaction(|(entries, versions, journal, meta, props)| {
            if entries.get(&from_key)?.is_none() {
                return abort(StoreError::NotFound);
            }
            if entries.get(&to_key)?.is_some() {
                return abort(StoreError::Exists);
            }
            let v = versions::Versions { meta, versions, journal, me: &self.me };
            let owner = tx_get::<Entry>(entries, &from_key)?.map(|e| e.owner).unwrap_or_default();
            Self::tx_make_parents(entries, &v, &to[..to.len() - 1], &owner, now)?;
            let mut moved = Vec::with_capacity(pairs.len());
            for (old, new) in &pairs {
                let Some(entry) = tx_get::<Entry>(entries, old)? else { continue };
                entries.insert(new.as_slice(), super::encode(&entry))?;
                v.stamp(&versions::file_key(new), new_part, None, None)?;
                if let Some(p) = props.remove(old.as_slice())? {
                    props.insert(new.as_slice(), p)?;
                }
                moved.push((old, entry));
            }
            for (old, entry) in moved.into_iter().rev() {
                entries.remove(old.as_slice())?;
                v.stamp(&versions::file_key(old), old_part, Some(now), entry.hash.clone())?;
            }
            Ok(())
        }))?;
        drop(guard);
        self.flush().await?;
        self.changed.notify_one();
        Ok(())
    }

    /// Copies the file `from` to `to` (replacing a file there), charged to `owner` within `limit`, with its
    /// dead properties. `IsADirectory` when either is a folder (the caller copies folders one file at a time).
    pub async fn copy_file(
        &self,
        from: &[String],
        to: &[String],
        owner: &str,
        limit: Option<u64>,
    ) -> Result<Written, StoreError> {
        if from.is_empty() || to.is_empty() {
            return Err(StoreError::IsADirectory);
        }
        let guard = self.mutate.lock().await;
        let source = self.stat(from)?.ok_or(StoreError::NotFound)?;
        let Some(hash) = source.blob() else {
            return Err(StoreError::IsADirectory);
        };
        let entry = Entry { modified: super::now_ms(), owner: owner.to_string(), ..source };
        let (from_key, to_key) = (entry_key(from), entry_key(to));
        let trees = (&self.entries, &self.refs, &self.usage, &self.versions, &self.journal, &self.meta, &self.props);
        let (created, released) =
            unwrap_tx(trees.transaction(|(entries, refs, usage, versions, journal, meta, props)| {
                // Under the mutation lock, a referenced blob cannot be unlinked: checked here, the copy's
                // reference keeps it.
                if super::counter(refs.get(hash.0)?) == 0 {
                    return abort(StoreError::NotFound);
                }
                let v = versions::Versions { meta, versions, journal, me: &self.me };
                let done = Self::tx_put_file(entries, refs, usage, &v, to, &entry, limit)?;
                match props.get(&from_key)? {
                    Some(p) => props.insert(to_key.as_slice(), p)?,
                    None => props.remove(to_key.as_slice())?,
                };
                Ok(done)
            }))?;
        drop(guard);
        self.settle(released, Written { entry, created }).await
    }
}

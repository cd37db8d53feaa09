//! The cache's table of contents in memory: every stored object, what it weighs, and which to drop first
//! when the disk budget is reached. Rebuilt from the heads on disk at start.
//!
//! Eviction is LFU with dynamic aging (LFU-DA, as squid's `heap LFUDA`): an object's priority is the number
//! of requests it served plus the priority of the last object evicted. On a thin uplink the byte hit ratio
//! is what counts, and LFU-DA keeps it highest among the simple policies: the video a whole year group
//! watches every week is not pushed out by one pupil's one-off large download, as it would be under LRU,
//! and unlike size-weighted policies (GDSF) it does not sacrifice large popular objects to keep many small
//! ones. The aging term lets yesterday's popular objects go once they stop being asked for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::entry::{self, Key, Meta};
use super::fill::Fill;

/// One stored response and the download writing into it, if any.
pub struct Object {
    pub key: Key,
    pub state: Mutex<ObjectState>,
}

pub struct ObjectState {
    pub meta: Meta,
    /// A download writing into this object's body right now.
    pub fill: Option<Arc<Fill>>,
    /// Slices whose bytes this process has hashed (written or read and checked): read again without hashing.
    /// A damaged file is caught at its first read after a start, which is when damage shows (a crash, a
    /// failing disk found at boot); hashing every read of a hot object would halve the hit throughput.
    pub verified: Vec<bool>,
}

impl ObjectState {
    pub fn is_verified(&self, slice: usize) -> bool {
        self.verified.get(slice).copied().unwrap_or(false)
    }

    pub fn set_verified(&mut self, slice: usize) {
        if self.verified.len() <= slice {
            self.verified.resize(slice + 1, false);
        }
        self.verified[slice] = true;
    }
}

impl Object {
    pub fn new(key: Key, meta: Meta) -> Arc<Object> {
        Arc::new(Object { key, state: Mutex::new(ObjectState { meta, fill: None, verified: Vec::new() }) })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ObjectState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn meta(&self) -> Meta {
        self.lock().meta.clone()
    }
}

struct Slot {
    object: Arc<Object>,
    size: u64,
    priority: f64,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    /// The header names each URL's responses vary on (from its latest stored response).
    vary: HashMap<String, Vec<String>>,
    bytes: u64,
    /// LFU-DA's aging term: the priority of the last object evicted.
    age: f64,
}

pub struct Index {
    root: PathBuf,
    inner: Mutex<Inner>,
}

/// What was found on disk at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: usize,
    pub bytes: u64,
    /// Heads that could not be read, and files no head refers to; all removed.
    pub dropped: usize,
}

impl Index {
    /// Reads every head under `root`, drops what cannot be used (unreadable heads, orphaned bodies,
    /// leftovers of an interrupted write) and returns the index.
    pub fn load(root: &Path) -> std::io::Result<(Index, Loaded)> {
        std::fs::create_dir_all(root)?;
        let mut inner = Inner::default();
        let mut loaded = Loaded::default();
        let mut bodies: Vec<PathBuf> = Vec::new();
        for dir in std::fs::read_dir(root)? {
            let dir = dir?.path();
            if !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir)? {
                let path = file?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                if name.ends_with(".meta") {
                    let key = name.trim_end_matches(".meta").to_string();
                    match entry::read_meta(&path) {
                        Ok(meta) if key.len() == 32 => {
                            let size = meta.disk_size();
                            inner.bytes += size;
                            inner.vary.insert(meta.url.clone(), meta.vary.iter().map(|(n, _)| n.clone()).collect());
                            let priority = meta.hits as f64;
                            inner.slots.insert(key.clone(), Slot { object: Object::new(key, meta), size, priority });
                        }
                        Ok(_) | Err(_) => {
                            log::warn!("cache: dropping unreadable entry {}", path.display());
                            let _ = std::fs::remove_file(&path);
                            loaded.dropped += 1;
                        }
                    }
                } else if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(&path);
                } else {
                    bodies.push(path);
                }
            }
        }
        for body in bodies {
            let name = body.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let used = name.split_once('.').is_some_and(|(key, generation)| {
                inner.slots.get(key).is_some_and(|slot| slot.object.lock().meta.generation.to_string() == generation)
            });
            if !used {
                let _ = std::fs::remove_file(&body);
                loaded.dropped += 1;
            }
        }
        loaded.objects = inner.slots.len();
        loaded.bytes = inner.bytes;
        Ok((Index { root: root.to_owned(), inner: Mutex::new(inner) }, loaded))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The header names responses for `url` vary on; empty when unknown.
    pub fn vary_names(&self, url: &str) -> Vec<String> {
        self.inner().vary.get(url).cloned().unwrap_or_default()
    }

    /// The object stored under `key`, counting one use of it.
    pub fn get(&self, key: &str) -> Option<Arc<Object>> {
        let mut inner = self.inner();
        let age = inner.age;
        let slot = inner.slots.get_mut(key)?;
        slot.priority = slot.priority.max(age) + 1.0;
        Some(slot.object.clone())
    }

    /// Stores `object` under its key, replacing (and returning) what was there.
    pub fn insert(&self, object: Arc<Object>, vary: Vec<String>) -> Option<Arc<Object>> {
        let (url, size) = {
            let state = object.lock();
            (state.meta.url.clone(), state.meta.disk_size())
        };
        let mut inner = self.inner();
        inner.vary.insert(url, vary);
        let priority = inner.age + 1.0;
        inner.bytes += size;
        let old = inner.slots.insert(object.key.clone(), Slot { object, size, priority });
        if let Some(old) = &old {
            inner.bytes -= old.size;
        }
        old.map(|slot| slot.object)
    }

    /// Drops `object` (if it is still the one stored under its key); its files are the caller's to remove.
    pub fn remove(&self, object: &Arc<Object>) -> bool {
        let mut inner = self.inner();
        match inner.slots.get(&object.key) {
            Some(slot) if Arc::ptr_eq(&slot.object, object) => {
                let size = slot.size;
                inner.slots.remove(&object.key);
                inner.bytes -= size;
                true
            }
            _ => false,
        }
    }

    /// Records an object's new weight (its download progressed).
    pub fn resize(&self, object: &Arc<Object>, size: u64) {
        let mut inner = self.inner();
        if let Some(slot) = inner.slots.get_mut(&object.key) {
            if Arc::ptr_eq(&slot.object, object) {
                let old = std::mem::replace(&mut slot.size, size);
                inner.bytes = inner.bytes + size - old;
            }
        }
    }

    /// Objects and bytes stored.
    pub fn usage(&self) -> (u64, u64) {
        let inner = self.inner();
        (inner.slots.len() as u64, inner.bytes)
    }

    /// Takes objects out, lowest priority first, until the cache weighs at most `target`; objects being
    /// downloaded stay. Returns them so the caller removes their files outside the lock.
    pub fn evict_to(&self, target: u64) -> Vec<Arc<Object>> {
        let mut inner = self.inner();
        if inner.bytes <= target {
            return Vec::new();
        }
        let mut candidates: Vec<(f64, Key)> = inner
            .slots
            .iter()
            .filter(|(_, slot)| slot.object.lock().fill.is_none())
            .map(|(key, slot)| (slot.priority, key.clone()))
            .collect();
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut evicted = Vec::new();
        for (priority, key) in candidates {
            if inner.bytes <= target {
                break;
            }
            if let Some(slot) = inner.slots.remove(&key) {
                inner.bytes -= slot.size;
                inner.age = inner.age.max(priority);
                evicted.push(slot.object);
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(url: &str, len: u64) -> Meta {
        Meta {
            url: url.into(),
            vary: vec![],
            status: 200,
            headers: vec![],
            request_time: 0,
            response_time: 0,
            length: Some(len),
            slices: vec![Some("h".into())],
            generation: 1,
            hits: 0,
        }
    }

    #[test]
    fn the_often_used_object_outlives_the_big_one_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (index, _) = Index::load(dir.path()).expect("load");
        let video = Object::new("v".repeat(32), meta("http://x/video", 1000));
        let iso = Object::new("i".repeat(32), meta("http://x/iso", 1000));
        index.insert(video.clone(), vec![]);
        for _ in 0..5 {
            index.get(&video.key);
        }
        index.insert(iso.clone(), vec![]);
        // Over budget: the one-off goes, though it is the most recent.
        let evicted = index.evict_to(2500);
        assert_eq!(evicted.len(), 1);
        assert!(Arc::ptr_eq(&evicted[0], &iso));
        // Aging: a newcomer starts at the evicted priority, so stale favourites can go in time.
        let next = Object::new("n".repeat(32), meta("http://x/next", 10));
        index.insert(next, vec![]);
        let (entries, bytes) = index.usage();
        assert_eq!((entries, bytes), (2, 1024 + 1000 + 1024 + 10));
    }

    #[test]
    fn load_keeps_heads_and_drops_orphans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = entry::key("http://x/a", &[]);
        let mut m = meta("http://x/a", 3);
        m.vary = vec![("accept-encoding".into(), "gzip".into())];
        entry::write_meta(dir.path(), &key, &m).expect("meta");
        std::fs::write(entry::body_path(dir.path(), &key, 1), b"abc").expect("body");
        std::fs::write(entry::body_path(dir.path(), &key, 0), b"old").expect("old body");
        std::fs::write(entry::dir_of(dir.path(), &key).join("junk.meta"), b"{").expect("junk");
        let (index, loaded) = Index::load(dir.path()).expect("load");
        assert_eq!((loaded.objects, loaded.dropped), (1, 2));
        assert!(index.get(&key).is_some());
        assert_eq!(index.vary_names("http://x/a"), vec!["accept-encoding".to_string()]);
        assert!(!entry::body_path(dir.path(), &key, 0).exists());
    }
}

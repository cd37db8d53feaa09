//! Small file contents kept in memory, by hash.
//!
//! Content addressing makes this cache trivially correct: a hash always names the same bytes, so an entry
//! never goes stale and needs no invalidation. It serves the portal's common case (many GETs of small
//! files) without a trip to a blocking thread. Eviction drops the least recently used entry.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::Hash;

pub struct BlobCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Hash, (Bytes, u64)>,
    size: usize,
    tick: u64,
}

impl BlobCache {
    pub fn new(budget: usize) -> BlobCache {
        BlobCache { budget, inner: Mutex::new(Inner::default()) }
    }

    pub fn get(&self, hash: &Hash) -> Option<Bytes> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tick += 1;
        let tick = inner.tick;
        let (bytes, used) = inner.entries.get_mut(hash)?;
        *used = tick;
        Some(bytes.clone())
    }

    /// Keeps `bytes` (already verified against `hash`) if they fit the budget.
    pub fn put(&self, hash: Hash, bytes: Bytes) {
        if bytes.len() > self.budget / 8 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while inner.size + bytes.len() > self.budget {
            // A linear scan: the cache holds a few thousand entries at most and only a miss gets here.
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(h, _)| *h) else {
                break;
            };
            if let Some((gone, _)) = inner.entries.remove(&oldest) {
                inner.size -= gone.len();
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.size += bytes.len();
        if let Some((old, _)) = inner.entries.insert(hash, (bytes, tick)) {
            inner.size -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_recent_entries_within_its_budget() {
        let cache = BlobCache::new(100);
        let h = |i: u8| Hash([i; 32]);
        cache.put(h(1), Bytes::from(vec![1; 10]));
        cache.put(h(2), Bytes::from(vec![2; 10]));
        assert!(cache.get(&h(1)).is_some());
        for i in 3..20 {
            cache.put(h(i), Bytes::from(vec![i; 10]));
        }
        assert!(cache.get(&h(2)).is_none(), "the least recently used entry went first");
        let inner = cache.inner.lock().expect("lock");
        assert!(inner.size <= 100);
        drop(inner);
        cache.put(h(99), Bytes::from(vec![0; 50]));
        assert!(cache.get(&h(99)).is_none(), "entries over an eighth of the budget are not kept");
    }
}

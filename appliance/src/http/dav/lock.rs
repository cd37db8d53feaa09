//! WebDAV locks (class 2, what Windows and macOS need to mount the drive read-write), in memory.
//!
//! Locks are keyed by view path, and `me/` is a different folder for each user: each user's `me/` has its own
//! lock table, while everything else of a school (`classes/…`, `school/`, the virtual folders) shares one, so a
//! teacher's lock on `classes/6A/cours.odt` holds against their colleague. A restart forgets locks, as a file
//! server's reboot does; clients take them again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use dav_server::davpath::DavPath;
use dav_server::ls::{DavLock, DavLockSystem, LsFuture};
use dav_server::memls::MemLs;
use xmltree::Element;

/// Every lock table of the process.
#[derive(Default)]
pub struct Locks {
    /// `me/` tables by login.
    personal: Mutex<HashMap<String, Box<MemLs>>>,
    /// The shared table of each school (`""` on a box; the UAI at the region).
    shared: Mutex<HashMap<String, Box<MemLs>>>,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Locks")
    }
}

fn table(map: &Mutex<HashMap<String, Box<MemLs>>>, key: &str) -> Box<MemLs> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(key.to_string()).or_insert_with(MemLs::new).clone()
}

impl Locks {
    /// The lock system one request of `login` (of `school`) sees.
    pub fn for_user(&self, login: &str, school: Option<&str>) -> Scoped {
        Scoped { personal: table(&self.personal, login), shared: table(&self.shared, school.unwrap_or_default()) }
    }
}

/// Sends each path to its table: `me/…` to the user's own, the rest to the school's.
#[derive(Debug, Clone)]
pub struct Scoped {
    personal: Box<MemLs>,
    shared: Box<MemLs>,
}

impl Scoped {
    fn of(&self, path: &DavPath) -> &MemLs {
        let first = path.as_bytes().split(|b| *b == b'/').find(|s| !s.is_empty());
        if first == Some(b"me".as_slice()) {
            &self.personal
        } else {
            &self.shared
        }
    }
}

impl DavLockSystem for Scoped {
    fn lock(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        owner: Option<&Element>,
        timeout: Option<Duration>,
        shared: bool,
        deep: bool,
    ) -> LsFuture<'_, Result<DavLock, DavLock>> {
        self.of(path).lock(path, principal, owner, timeout, shared, deep)
    }

    fn unlock(&self, path: &DavPath, token: &str) -> LsFuture<'_, Result<(), ()>> {
        self.of(path).unlock(path, token)
    }

    fn refresh(&self, path: &DavPath, token: &str, timeout: Option<Duration>) -> LsFuture<'_, Result<DavLock, ()>> {
        self.of(path).refresh(path, token, timeout)
    }

    fn check(
        &self,
        path: &DavPath,
        principal: Option<&str>,
        ignore_principal: bool,
        deep: bool,
        submitted_tokens: &[String],
    ) -> LsFuture<'_, Result<(), DavLock>> {
        self.of(path).check(path, principal, ignore_principal, deep, submitted_tokens)
    }

    fn discover(&self, path: &DavPath) -> LsFuture<'_, Vec<DavLock>> {
        self.of(path).discover(path)
    }

    fn delete(&self, path: &DavPath) -> LsFuture<'_, Result<(), ()>> {
        self.of(path).delete(path)
    }
}

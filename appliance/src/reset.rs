//! Erasing a data folder: the factory reset, and `provision apply --force-reset` to another school.

use std::fs;
use std::io;
use std::path::Path;

/// Where a wipe moves things before deleting them; a wipe cut short leaves it, and the next one (or the next
/// start of the store) finishes the job.
pub const ASIDE: &str = ".reset";
/// The data folder's lock file (see `store::DataLock`): the caller holds it, it stays.
const LOCK: &str = "lock";

/// Erases everything in `data` except its lock file; the caller holds the lock. Returns how many top-level
/// items went. Everything is first renamed into one hidden folder — the identity first, then the metadata —
/// so that a power cut part-way leaves a box that is no longer provisioned and has no readable store, rather
/// than one school's identity over half of another's data; the hidden folder is removed last.
pub fn wipe(data: &Path) -> io::Result<u64> {
    let aside = data.join(ASIDE);
    fs::create_dir_all(&aside)?;
    let mut names: Vec<_> = fs::read_dir(data)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|n| n != LOCK && n != ASIDE)
        .collect();
    let rank = |n: &std::ffi::OsStr| match n.to_str() {
        Some("identity") => 0,
        Some(crate::PROVISIONED_CONFIG) => 1,
        Some("meta") => 2,
        _ => 3,
    };
    names.sort_by_key(|n| rank(n));
    let count = names.len() as u64;
    for (i, name) in names.iter().enumerate() {
        // Numbered, so a leftover of a cut wipe with the same name is never in the way.
        fs::rename(data.join(name), aside.join(format!("{i}-{}", name.to_string_lossy())))?;
        fs::File::open(data)?.sync_all()?;
    }
    remove_aside(data)?;
    Ok(count)
}

/// Removes what a cut wipe left aside.
pub fn remove_aside(data: &Path) -> io::Result<()> {
    let aside = data.join(ASIDE);
    match fs::remove_dir_all(&aside) {
        Ok(()) => fs::File::open(data)?.sync_all(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_keeps_only_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        for sub in ["identity", "meta", "blobs/ab", "tmp"] {
            fs::create_dir_all(data.join(sub)).expect("mkdir");
        }
        fs::write(data.join("identity/uai"), "0123456A\n").expect("write");
        fs::write(data.join("blobs/ab/abcd"), "x").expect("write");
        fs::write(data.join(crate::PROVISIONED_CONFIG), "").expect("write");
        fs::write(data.join(LOCK), "42").expect("write");
        // A wipe cut short earlier left this behind.
        fs::create_dir_all(data.join(ASIDE).join("0-identity")).expect("mkdir");
        assert_eq!(wipe(data).expect("wipe"), 5);
        let left: Vec<_> = fs::read_dir(data).expect("read").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from(LOCK)]);
    }
}

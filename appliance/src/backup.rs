//! Backups of a box, and their restore into a new data folder.
//!
//! A backup is one zip:
//!
//! | member | what |
//! |---|---|
//! | `backup.json` | the [`Manifest`]: format, relais version, date, UAI, counts, blake3 of every other member but blobs |
//! | `users.jsonl` | the accounts, one JSON record per line (password hashes only) |
//! | `entries.jsonl` | the file tree, one `{"path","entry"}` per line |
//! | `blobs/<hash>` | every content the tree references, once, named by its blake3 hash |
//! | `relais.toml` | the configuration the provisioning bundle wrote, if any |
//! | `identity/uai`, `identity/region-ca.crt` | the school and the pinned regional root, if provisioned |
//!
//! The box's private keys and its enrollment token are left out on purpose: a key never leaves the box that
//! made it. A restored box knows its school and region; it enrolls again with a fresh bundle for the same UAI
//! (`relais provision apply`), and takes a new replica id so replication never mistakes it for the old box.
//!
//! Restore is all or nothing: everything is written into a hidden folder beside the target, checked (every
//! content against its hash, the tree against the contents), and renamed into place only when complete.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::enroll::identity;
use crate::store::{DataLock, Hash, Snapshot, Store, StoreError};

/// Version of the archive layout; a restore refuses a newer one rather than guess.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "backup.json";
const USERS: &str = "users.jsonl";
const ENTRIES: &str = "entries.jsonl";
const CONFIG: &str = "relais.toml";
const IDENTITY_UAI: &str = "identity/uai";
const IDENTITY_CA: &str = "identity/region-ca.crt";
/// Members besides blobs that a restore accepts.
const KNOWN: [&str; 5] = [USERS, ENTRIES, CONFIG, IDENTITY_UAI, IDENTITY_CA];
/// Copy buffer; progress is reported after each.
const CHUNK: usize = 256 << 10;
/// The manifest and the identity files are small; a bigger one is not ours.
const SMALL_MEMBER: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path} is not a relais backup: {reason}")]
    NotABackup { path: PathBuf, reason: String },
    #[error("{path} is damaged ({member}: {reason}); nothing was restored")]
    Damaged { path: PathBuf, member: String, reason: String },
    #[error(
        "{path} was made by a newer relais (backup format {format}, this one reads {FORMAT}); update this box first"
    )]
    Newer { path: PathBuf, format: u32 },
    #[error("{data} is not empty: a backup is restored into a new or empty folder (to replace this box's data, run `relais reset --factory --data {data}` first)")]
    NotEmpty { data: PathBuf },
    #[error("not enough free space in {folder}: the backup needs {need} bytes, {free} are free")]
    NoSpace { folder: PathBuf, need: u64, free: u64 },
    #[error("writing the backup: {0}")]
    Zip(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

/// What `backup.json` says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub relais_version: String,
    /// Unix seconds.
    pub created: u64,
    pub uai: Option<String>,
    /// The replica id of the box the backup was taken on (a restored box gets a new one).
    pub replica_id: String,
    pub users: u64,
    pub entries: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// blake3 (hex) of every member except the blobs, which are named by theirs.
    pub members: BTreeMap<String, String>,
}

/// The files of the data folder that go with the store into a backup.
#[derive(Debug, Default)]
pub struct Extras {
    members: Vec<(&'static str, Vec<u8>)>,
    uai: Option<String>,
}

impl Extras {
    /// Reads the provisioned configuration and the public part of the identity, where they exist.
    pub fn read(data: &Path) -> Result<Extras, BackupError> {
        let mut extras = Extras::default();
        let files = [
            (CONFIG, data.join(crate::PROVISIONED_CONFIG)),
            (IDENTITY_UAI, identity::Identity::dir_of(data).join(identity::UAI)),
            (IDENTITY_CA, identity::Identity::dir_of(data).join(identity::REGION_CA)),
        ];
        for (member, path) in files {
            match fs::read(&path) {
                Ok(bytes) => extras.members.push((member, bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        extras.uai = extras
            .members
            .iter()
            .find(|(m, _)| *m == IDENTITY_UAI)
            .map(|(_, bytes)| String::from_utf8_lossy(bytes).trim().to_owned());
        Ok(extras)
    }
}

/// Bytes of content a backup of `snapshot` copies: what progress is measured against.
pub fn content_bytes(snapshot: &Snapshot) -> u64 {
    let file = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    snapshot.blobs.iter().map(|(_, size, _)| size).sum::<u64>() + file(&snapshot.users) + file(&snapshot.entries)
}

/// Writes the backup of `snapshot` into `out` (a file, or the control socket's response), calling `progress`
/// with the bytes of content copied so far. Blocking: run it on a blocking thread.
pub fn write(
    snapshot: &Snapshot,
    extras: &Extras,
    out: impl Write,
    progress: &mut dyn FnMut(u64),
) -> Result<Manifest, BackupError> {
    let zip_err = |e: zip::result::ZipError| BackupError::Zip(e.to_string());
    let mut members = BTreeMap::new();
    for (name, path) in [(USERS, &snapshot.users), (ENTRIES, &snapshot.entries)] {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(File::open(path).map_err(io_err(path))?).map_err(io_err(path))?;
        members.insert(name.to_owned(), hasher.finalize().to_hex().to_string());
    }
    for (name, bytes) in &extras.members {
        members.insert((*name).to_owned(), blake3::hash(bytes).to_hex().to_string());
    }
    let manifest = Manifest {
        format: FORMAT,
        relais_version: env!("CARGO_PKG_VERSION").to_owned(),
        created: identity::unix_now(),
        uai: extras.uai.clone(),
        replica_id: snapshot.replica_id.clone(),
        users: snapshot.user_count,
        entries: snapshot.entry_count,
        blobs: snapshot.blobs.len() as u64,
        blob_bytes: snapshot.blobs.iter().map(|(_, size, _)| size).sum(),
        members,
    };
    // Contents are mostly PDFs, photos and office files, already compressed: storing keeps the box's CPU for
    // its users while a backup runs.
    let options = |size: u64| {
        SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(size >= u64::from(u32::MAX))
            .unix_permissions(0o600)
    };
    let mut zip = ZipWriter::new_stream(out);
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Zip(e.to_string()))?;
    zip.start_file(MANIFEST, options(0)).map_err(zip_err)?;
    zip.write_all(&manifest_json).map_err(io_err(Path::new(MANIFEST)))?;
    for (name, bytes) in &extras.members {
        zip.start_file(*name, options(0)).map_err(zip_err)?;
        zip.write_all(bytes).map_err(io_err(Path::new(name)))?;
    }
    let mut done = 0;
    let mut copy = |zip: &mut ZipWriter<_>, name: &str, path: &Path| -> Result<(), BackupError> {
        let mut file = File::open(path).map_err(io_err(path))?;
        let size = file.metadata().map_err(io_err(path))?.len();
        zip.start_file(name, options(size)).map_err(zip_err)?;
        let mut buf = vec![0; CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(io_err(path))?;
            if n == 0 {
                return Ok(());
            }
            zip.write_all(&buf[..n]).map_err(io_err(Path::new(name)))?;
            done += n as u64;
            progress(done);
        }
    };
    copy(&mut zip, USERS, &snapshot.users)?;
    copy(&mut zip, ENTRIES, &snapshot.entries)?;
    for (hash, _, path) in &snapshot.blobs {
        copy(&mut zip, &format!("blobs/{}", hash.to_hex()), path)?;
    }
    let mut out = zip.finish().map_err(zip_err)?.into_inner();
    out.flush().map_err(io_err(Path::new("backup")))?;
    Ok(manifest)
}

/// Writes a backup file of a stopped box (the caller holds the data folder's lock and opened its store):
/// into `FILE.part`, fsynced, then renamed, so an interrupted backup never leaves a file that looks whole.
pub async fn write_file(
    store: &Store,
    data: &Path,
    out: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Manifest, BackupError> {
    let snapshot = store.snapshot().await?;
    let extras = Extras::read(data)?;
    let total = content_bytes(&snapshot);
    let manifest = tokio::task::block_in_place(|| {
        write_atomically(out, |file| write(&snapshot, &extras, file, &mut |done| progress(done, total)))
    });
    drop(snapshot);
    store.collect_deferred().await?;
    manifest
}

/// Runs `fill` on `FILE.part` (mode 0600: a backup holds everyone's files and password hashes), then fsyncs
/// and renames it to `FILE`. The part file is removed on failure.
pub fn write_atomically<T>(
    out: &Path,
    fill: impl FnOnce(&mut io::BufWriter<&File>) -> Result<T, BackupError>,
) -> Result<T, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let part = part_path(out);
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&part)
        .map_err(io_err(&part))?;
    let result = (|| {
        let mut writer = io::BufWriter::with_capacity(CHUNK, &file);
        let value = fill(&mut writer)?;
        writer.flush().map_err(io_err(&part))?;
        drop(writer);
        file.sync_all().map_err(io_err(&part))?;
        fs::rename(&part, out).map_err(io_err(out))?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    result
}

pub fn part_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    /// The restored box's own, new replica id.
    pub replica_id: String,
}

/// Reads and checks a backup's manifest (and the list of its members), without writing anything.
pub fn inspect(archive: &Path) -> Result<Manifest, BackupError> {
    let mut zip = open_archive(archive)?;
    read_manifest(archive, &mut zip)
}

fn open_archive(archive: &Path) -> Result<ZipArchive<BufReader<File>>, BackupError> {
    let file = File::open(archive).map_err(io_err(archive))?;
    let not_backup = |reason: String| BackupError::NotABackup { path: archive.to_owned(), reason };
    let zip = ZipArchive::new(BufReader::new(file)).map_err(|e| not_backup(format!("not a readable zip ({e})")))?;
    for name in zip.file_names() {
        let name = name.map_err(|e| not_backup(format!("a member name is not readable ({e})")))?;
        let name = name.as_ref();
        let blob = name.strip_prefix("blobs/").is_some_and(|hex| hex.len() == 64 && Hash::from_hex(hex).is_some());
        if !(blob || name == MANIFEST || KNOWN.contains(&name)) {
            return Err(not_backup(format!("unexpected member « {name} »")));
        }
    }
    Ok(zip)
}

fn read_manifest(archive: &Path, zip: &mut ZipArchive<BufReader<File>>) -> Result<Manifest, BackupError> {
    let not_backup = |reason: String| BackupError::NotABackup { path: archive.to_owned(), reason };
    let bytes = read_small(archive, zip, MANIFEST)?.ok_or_else(|| not_backup(format!("no {MANIFEST}")))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| not_backup(format!("{MANIFEST} is not valid: {e}")))?;
    if manifest.format > FORMAT {
        return Err(BackupError::Newer { path: archive.to_owned(), format: manifest.format });
    }
    Ok(manifest)
}

/// A small member whole, checked against the manifest when it lists it; `None` if absent.
fn read_small(
    archive: &Path,
    zip: &mut ZipArchive<BufReader<File>>,
    name: &str,
) -> Result<Option<Vec<u8>>, BackupError> {
    let damaged = |reason: String| BackupError::Damaged { path: archive.to_owned(), member: name.into(), reason };
    let member = match zip.by_name(name) {
        Ok(member) => member,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(damaged(e.to_string())),
    };
    let mut bytes = Vec::new();
    member.take(SMALL_MEMBER + 1).read_to_end(&mut bytes).map_err(|e| damaged(e.to_string()))?;
    if bytes.len() as u64 > SMALL_MEMBER {
        return Err(damaged("too large".into()));
    }
    Ok(Some(bytes))
}

/// Hashes what passes through, to check a member read as a stream against the manifest.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Restores `archive` into `data`, which must not exist or be empty. `progress` gets (bytes done, total).
pub async fn restore(
    archive: &Path,
    data: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Restored, BackupError> {
    match fs::read_dir(data) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty { data: data.to_owned() });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(data)(e)),
    }
    let mut zip = open_archive(archive)?;
    let manifest = read_manifest(archive, &mut zip)?;
    let parent = match data.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let need = manifest.blob_bytes.saturating_add(manifest.blob_bytes / 20);
    let free = free_bytes(&parent)?;
    if need > free {
        return Err(BackupError::NoSpace { folder: parent, need, free });
    }
    let name = data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    let staging = parent.join(format!(".{name}.restoring-{:08x}", rand::random::<u32>()));
    let result = fill(archive, &mut zip, &manifest, &staging, progress).await;
    let result = result.and_then(|replica_id| {
        if data.exists() {
            fs::remove_dir(data).map_err(io_err(data))?;
        }
        fs::rename(&staging, data).map_err(io_err(data))?;
        File::open(&parent).and_then(|d| d.sync_all()).map_err(io_err(&parent))?;
        Ok(replica_id)
    });
    match result {
        Ok(replica_id) => Ok(Restored { manifest, replica_id }),
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Writes the whole restored data folder into `staging`; returns its new replica id.
async fn fill(
    archive: &Path,
    zip: &mut ZipArchive<BufReader<File>>,
    manifest: &Manifest,
    staging: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<String, BackupError> {
    let damaged = |member: &str, reason: String| BackupError::Damaged {
        path: archive.to_owned(),
        member: member.to_owned(),
        reason,
    };
    let _lock = DataLock::acquire(staging)
        .map_err(|e| BackupError::Io { path: staging.into(), source: io::Error::other(e) })?;
    let store = Store::open(staging)?;
    let mut streams = Vec::new();
    for name in [USERS, ENTRIES] {
        let member = zip.by_name(name).map_err(|e| damaged(name, e.to_string()))?;
        let mut scratch = store.scratch_file()?;
        let mut reader = Hashing { inner: member, hasher: blake3::Hasher::new() };
        io::copy(&mut reader, &mut scratch.1).map_err(|e| damaged(name, e.to_string()))?;
        if manifest.members.get(name) != Some(&reader.hasher.finalize().to_hex().to_string()) {
            return Err(damaged(name, "its content does not match the manifest".into()));
        }
        streams.push(scratch.0);
    }
    let open = |p: &Path| File::open(p).map(BufReader::new).map_err(io_err(p));
    let loaded = store.load(open(&streams[0])?, open(&streams[1])?).map_err(|e| match e {
        StoreError::Corrupt { key, source } => damaged(&key, source.to_string()),
        e => e.into(),
    })?;
    for path in &streams {
        let _ = fs::remove_file(path);
    }

    let total = manifest.blob_bytes;
    let mut done = 0;
    let mut buf = vec![0; CHUNK];
    for hash in loaded.blobs {
        let name = format!("blobs/{}", hash.to_hex());
        let mut member =
            zip.by_name(&name).map_err(|_| damaged(&name, "missing: a file of the tree has no content".into()))?;
        let mut writer = store.blob_writer(None)?;
        loop {
            let n = member.read(&mut buf).map_err(|e| damaged(&name, e.to_string()))?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n]).await?;
            done += n as u64;
            progress(done, total);
        }
        drop(member);
        let staged = writer.finish().await?;
        if staged.hash != hash {
            return Err(damaged(&name, "its content does not match its hash".into()));
        }
        store.install_blob(staged).await?;
    }

    let small = |zip: &mut ZipArchive<BufReader<File>>, member: &str| -> Result<Option<Vec<u8>>, BackupError> {
        let Some(bytes) = read_small(archive, zip, member)? else {
            return Ok(None);
        };
        if manifest.members.get(member) != Some(&blake3::hash(&bytes).to_hex().to_string()) {
            return Err(damaged(member, "its content does not match the manifest".into()));
        }
        Ok(Some(bytes))
    };
    if let Some(config) = small(zip, CONFIG)? {
        let text = String::from_utf8(config).map_err(|_| damaged(CONFIG, "not UTF-8 text".into()))?;
        firmware_config::Config::parse(Path::new(CONFIG), &text).map_err(|e| damaged(CONFIG, e.to_string()))?;
        identity::write_atomic(&staging.join(crate::PROVISIONED_CONFIG), text.as_bytes(), identity::PUBLIC_MODE)
            .map_err(|e| BackupError::Io { path: staging.join(CONFIG), source: io::Error::other(e) })?;
    }
    let uai = small(zip, IDENTITY_UAI)?;
    let ca = small(zip, IDENTITY_CA)?;
    if let (Some(uai), Some(ca)) = (uai, ca) {
        let uai = String::from_utf8_lossy(&uai).trim().to_owned();
        if !firmware_config::is_uai(&uai) {
            return Err(damaged(IDENTITY_UAI, format!("« {uai} » is not a UAI")));
        }
        if identity::pem_certificates(&ca).map(|c| c.is_empty()).unwrap_or(true) {
            return Err(damaged(IDENTITY_CA, "no certificate in it".into()));
        }
        let dir = identity::Identity::dir_of(staging);
        let write = |file: &str, bytes: &[u8]| {
            identity::write_atomic(&dir.join(file), bytes, identity::PUBLIC_MODE)
                .map_err(|e| BackupError::Io { path: dir.join(file), source: io::Error::other(e) })
        };
        identity::create_private_dir(&dir)
            .map_err(|e| BackupError::Io { path: dir.clone(), source: io::Error::other(e) })?;
        write(identity::REGION_CA, &ca)?;
        // The UAI last: its presence is what makes the folder a provisioned box.
        write(identity::UAI, format!("{uai}\n").as_bytes())?;
    }
    store.flush().await?;
    let replica_id = store.replica_id()?;
    File::open(staging).and_then(|d| d.sync_all()).map_err(io_err(staging))?;
    Ok(replica_id)
}

/// Free bytes for an unprivileged writer on the filesystem of `folder`.
pub fn free_bytes(folder: &Path) -> Result<u64, BackupError> {
    let stat = nix::sys::statvfs::statvfs(folder).map_err(|e| io_err(folder)(io::Error::from(e)))?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

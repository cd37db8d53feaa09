//! A download into the cache: one upstream response body written into an object's body file, slice by
//! slice, while any number of clients read what has arrived so far (request coalescing that feeds every
//! waiting client as the bytes come, not after the download ends).
//!
//! The download belongs to the cache, not to the client that started it: it goes on when that client
//! leaves, so the bytes already paid for on the uplink are not paid for again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::sync::watch;

use super::entry::{self, SLICE};
use super::index::Object;
use super::Cache;
use crate::uplink::{Class, Direction};

/// Writes are gathered up to this size when the upstream is faster than the disk calls.
const WRITE_BATCH: usize = 256 << 10;
/// A partial object's head is saved every this many bytes, so a cut keeps most of what came.
const SAVE_EVERY: u64 = 16 * SLICE;

/// How far a download got.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Bytes of the body written, from its start (the download began at `Fill::start`).
    pub end: u64,
    /// Set once the download is over: `Ok` when the whole body is stored, `Err` with the cause otherwise.
    pub done: Option<Result<(), String>>,
}

pub struct Fill {
    /// Offset of the first byte this download writes (a slice boundary).
    pub start: u64,
    /// Which body generation it writes into.
    pub generation: u64,
    progress: watch::Sender<Progress>,
}

impl Fill {
    pub fn new(start: u64, generation: u64) -> Arc<Fill> {
        let (progress, _) = watch::channel(Progress { end: start, done: None });
        Arc::new(Fill { start, generation, progress })
    }

    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Ends a download that handed over to another one: its readers look again and find the other.
    pub fn finish_empty(&self) {
        self.progress.send_modify(|p| p.done = Some(Ok(())));
    }

    /// Ends a download that never started (its request failed).
    pub fn fail(&self, cause: String) {
        self.progress.send_modify(|p| p.done = Some(Err(cause)));
    }
}

/// Where the body bytes come from.
pub type Incoming = hyper::body::Incoming;

/// Runs one download to its end; see the module doc. `body` is the upstream response body starting at
/// `fill.start`.
pub async fn run(cache: Arc<Cache>, object: Arc<Object>, fill: Arc<Fill>, mut body: Incoming, class: Class) {
    let path = entry::body_path(cache.index.root(), &object.key, fill.generation);
    let written = write_body(&cache, &object, &fill, &mut body, &path, class).await;
    let (end, pending) = match &written {
        Ok((end, pending)) => (Some(*end), pending.clone()),
        Err(_) => (None, Vec::new()),
    };
    let outcome = written.map(|_| ());
    let (keep, meta) = {
        let state = object.lock();
        if let Err(cause) = &outcome {
            log::info!("cache: download of {} stopped at byte {}: {cause}", state.meta.url, fill.progress().end);
        }
        // The head to save: with the last slices, not yet shown to readers (see below).
        let mut meta = state.meta.clone();
        if let Some(end) = end {
            meta.length.get_or_insert(end);
        }
        for (slice, hash) in &pending {
            set_slice(&mut meta.slices, *slice, hash.clone());
        }
        // A cut download is worth keeping only if it can be resumed: known length and a validator for If-Range.
        let resumable = meta.length.is_some()
            && super::policy::if_range_validator(&meta.header_map()).is_some()
            && meta.stored_prefix() > 0;
        (outcome.is_ok() || resumable, meta)
    };
    let saved = if keep { save(&cache, &object.key, meta.clone()).await } else { Err("not resumable".into()) };
    match saved {
        Ok(()) => {
            let mut state = object.lock();
            if state.meta.generation == meta.generation {
                state.meta.length = meta.length;
                for (slice, _) in &pending {
                    state.set_verified(*slice);
                }
                state.meta.slices.clone_from(&meta.slices);
            }
            drop(state);
            cache.index.resize(&object, meta.disk_size());
        }
        Err(cause) => {
            if keep {
                log::warn!("cache: cannot save {}: {cause}", meta.url);
            }
            cache.drop_object(&object).await;
        }
    }
    // The last bytes are announced only now, with the head saved: a client that has the whole object knows
    // the box has it too, even if the box is killed the next instant. Until then readers wait on this download.
    {
        let mut state = object.lock();
        if state.fill.as_ref().is_some_and(|f| Arc::ptr_eq(f, &fill)) {
            state.fill = None;
        }
    }
    fill.progress.send_modify(|p| {
        if let Some(end) = end {
            p.end = end;
        }
        p.done = Some(outcome);
    });
    cache.make_room().await;
}

async fn write_body(
    cache: &Arc<Cache>,
    object: &Arc<Object>,
    fill: &Arc<Fill>,
    body: &mut Incoming,
    path: &std::path::Path,
    class: Class,
) -> Result<(u64, Vec<(usize, String)>), String> {
    let file = {
        let at = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new().create(true).write(true).read(true).truncate(false).open(&at)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", path.display()))?
    };
    let file = Arc::new(file);
    let length = object.lock().meta.length;
    let timeout = cache.config.upstream_timeout.0;
    let mut pos = fill.start;
    let mut hasher = blake3::Hasher::new();
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
    let mut saved_at = pos;
    loop {
        // Take what is already there without waiting, write it when none is left or the batch is full.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None if !batch.is_empty() => {
                pos = write_batch(cache, object, fill, &file, &mut batch, pos, &mut hasher, None).await?;
                continue;
            }
            None => match tokio::time::timeout(timeout, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => return Err(format!("the upstream sent nothing for {}", humantime::format_duration(timeout))),
            },
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| format!("upstream body: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        cache.uplink.acquire_async(class, Direction::Down, data.len() as u64).await;
        cache.stats.upstream_bytes.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if length.is_some_and(|len| pos + (batch.len() + data.len()) as u64 > len) {
            return Err("the upstream sent more than its Content-Length".into());
        }
        batch.extend_from_slice(&data);
        if batch.len() >= WRITE_BATCH {
            pos = write_batch(cache, object, fill, &file, &mut batch, pos, &mut hasher, None).await?;
        }
        if pos - saved_at >= SAVE_EVERY {
            saved_at = pos;
            save_partial(cache, object).await;
        }
    }
    // The last batch and the last, short slice are held back from readers until the head is saved (`run`).
    let mut pending = Vec::new();
    pos = write_batch(cache, object, fill, &file, &mut batch, pos, &mut hasher, Some(&mut pending)).await?;
    match length {
        Some(len) if pos < len => return Err(format!("the upstream body ended at {pos} of {len} bytes")),
        _ => {}
    }
    if !pos.is_multiple_of(SLICE) {
        pending.push(((pos / SLICE) as usize, hasher.finalize().to_hex().to_string()));
    }
    Ok((pos, pending))
}

fn set_slice(slices: &mut Vec<Option<String>>, slice: usize, hash: String) {
    if slices.len() <= slice {
        slices.resize(slice + 1, None);
    }
    slices[slice] = Some(hash);
}

/// Writes `batch` at `pos`, hashes it into the slices it completes, and tells readers — unless `held` is given:
/// then the completed slices go there and readers are not told.
#[allow(clippy::too_many_arguments)]
async fn write_batch(
    cache: &Arc<Cache>,
    object: &Arc<Object>,
    fill: &Arc<Fill>,
    file: &Arc<File>,
    batch: &mut Vec<u8>,
    pos: u64,
    hasher: &mut blake3::Hasher,
    held: Option<&mut Vec<(usize, String)>>,
) -> Result<u64, String> {
    if batch.is_empty() {
        return Ok(pos);
    }
    let data = Bytes::from(std::mem::replace(batch, Vec::with_capacity(WRITE_BATCH)));
    cache.reserve_disk(data.len() as u64)?;
    let written = {
        let (file, data) = (file.clone(), data.clone());
        tokio::task::spawn_blocking(move || file.write_all_at(&data, pos)).await.map_err(|e| e.to_string())?
    };
    written.map_err(|e| format!("writing the cache: {e}"))?;
    // Hash slice by slice.
    let mut offset = 0usize;
    let mut at = pos;
    let mut completed = Vec::new();
    while offset < data.len() {
        let room = (SLICE - at % SLICE) as usize;
        let take = room.min(data.len() - offset);
        hasher.update(&data[offset..offset + take]);
        offset += take;
        at += take as u64;
        if at.is_multiple_of(SLICE) {
            completed.push(((at / SLICE - 1) as usize, hasher.finalize().to_hex().to_string()));
            *hasher = blake3::Hasher::new();
        }
    }
    if let Some(held) = held {
        held.extend(completed);
        return Ok(at);
    }
    if !completed.is_empty() {
        let mut state = object.lock();
        for (slice, hash) in completed {
            set_slice(&mut state.meta.slices, slice, hash);
            state.set_verified(slice);
        }
        let size = state.meta.disk_size();
        drop(state);
        cache.index.resize(object, size);
    }
    fill.progress.send_modify(|p| p.end = at);
    Ok(at)
}

/// Saves the head of an object still downloading, so that a crash keeps the slices already hashed.
async fn save_partial(cache: &Arc<Cache>, object: &Arc<Object>) {
    if let Err(e) = save(cache, &object.key, object.meta()).await {
        log::warn!("cache: {e}");
    }
}

/// Makes an object's body durable, then its head (in that order: see `entry`).
async fn save(cache: &Cache, key: &str, meta: entry::Meta) -> Result<(), String> {
    let (root, key) = (cache.index.root().to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || {
        let body = entry::body_path(&root, &key, meta.generation);
        File::open(&body).and_then(|f| f.sync_data()).map_err(|e| format!("{}: {e}", body.display()))?;
        entry::write_meta(&root, &key, &meta).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

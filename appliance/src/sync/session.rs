//! One replication session, run by the box: say hello, push what the region lacks, pull what the box lacks.
//!
//! Contents go before the changes that name them, as chunks: the receiver says which chunks it lacks (not
//! staged, not in any of its files), only those cross, on several connections at once, and the file is
//! assembled and checked whole before a change may point to it. Every step is idempotent, so a session cut
//! anywhere (link, kill, full disk) is just run again: staged chunks stay, so at most the chunks in flight
//! cross twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::app::App;
use crate::store::sync::{Change, Record, Sides};
use crate::store::{Hash, StoreError};
use crate::sync::chunk::Manifest;
use crate::sync::chunk::MAX_CHUNK;
use crate::sync::client::{Client, SyncError};
use crate::sync::protocol::{self, frame, Hello, Pull, Push, BATCH, CHUNK_BATCH_BYTES, CHUNK_BATCH_COUNT};
use crate::uplink::Class;

/// What a session did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub pushed: usize,
    pub pulled: usize,
    pub conflicts: usize,
    pub chunks_up: usize,
    pub chunks_down: usize,
    /// What the region said was waiting for the box when the session began.
    pub backlog_changes: u64,
    pub backlog_bytes: u64,
    /// The region's high-water marks once the push is done: what it has of this box.
    pub region_seen: BTreeMap<String, u64>,
}

/// Runs one session over `client` with `connections` transfers at once.
pub async fn run(app: &Arc<App>, client: Arc<Client>, connections: usize) -> Result<Report, SyncError> {
    let store = &app.store;
    let hello = Hello { replica: store.me().to_owned(), seen: store.high_water("")? };
    let reply = blocking(&client, move |c| c.hello(&hello)).await?;
    let sides = Sides { region: reply.replica.clone() };
    let mut report =
        Report { backlog_changes: reply.backlog_changes, backlog_bytes: reply.backlog_bytes, ..Report::default() };

    // Push: every local change the region has not seen, contents first.
    let mut region_seen = reply.seen;
    loop {
        let batch = store.changes_since("", &[], &region_seen, BATCH)?;
        if batch.is_empty() {
            break;
        }
        // Contents the region holds already (the same file elsewhere, a copy in another class) cost one
        // question for the whole batch; each other content is sent once, however many files share it.
        let contents: Vec<String> = batch.iter().filter_map(|c| c.record.content()).map(|(h, _)| h.to_hex()).collect();
        let ask = protocol::Have { files: contents.clone() };
        let held = if contents.is_empty() { Vec::new() } else { blocking(&client, move |c| c.have(&ask)).await?.files };
        let mut present: HashSet<Hash> = held.iter().filter_map(|h| Hash::from_hex(h)).collect();
        for change in &batch {
            if let Some((hash, _)) = change.record.content() {
                if present.insert(hash) {
                    let prev = change.version.prev.as_deref().and_then(Hash::from_hex).filter(|p| *p != hash);
                    report.chunks_up += send_content(app, &client, hash, prev, connections).await?;
                }
            }
        }
        let push = Push { changes: batch.clone() };
        let pushed = blocking(&client, move |c| c.push(&push)).await?;
        report.pushed += pushed.applied + pushed.conflicts;
        app.metrics.sync_changes_out.add((pushed.applied + pushed.conflicts) as u64);
        report.conflicts += pushed.conflicts;
        for refused in &pushed.refused {
            log::warn!("the region refused a change: {refused}");
        }
        for change in &batch {
            let seen = region_seen.entry(change.version.writer.clone()).or_default();
            *seen = (*seen).max(change.version.counter);
        }
    }
    report.region_seen = region_seen;

    // Pull: every region change the box has not seen, contents first.
    loop {
        let pull = Pull { seen: store.high_water("")?, limit: BATCH };
        let batch = blocking(&client, move |c| c.pull(&pull)).await?;
        if batch.changes.is_empty() {
            break;
        }
        for change in &batch.changes {
            if let Some((hash, _)) = change.record.content() {
                if !store.has_blob(hash) {
                    let base = local_base(app, change)?;
                    let class = class_of(change);
                    report.chunks_down += fetch_content(app, &client, hash, base, class, connections).await?;
                }
            }
        }
        let applied = store.apply_remote("", &[], &batch.changes, &sides).await?;
        report.pulled += applied.applied + applied.conflicts;
        app.metrics.sync_changes_in.add((applied.applied + applied.conflicts) as u64);
        app.metrics.sync_conflicts.add(applied.conflicts as u64);
        report.conflicts += applied.conflicts;
        if !batch.more {
            break;
        }
    }
    Ok(report)
}

/// Resources the region publishes for every school (`school/ressources/`) are bulk material that nobody is
/// waiting for: they come down as prefetch, behind the school's own work and what users are waiting on.
fn class_of(change: &Change) -> Class {
    match &change.record {
        Record::File { path, .. } if path.len() > 2 && path[0] == "school" && path[1] == "ressources" => {
            Class::Prefetch
        }
        _ => Class::Replication,
    }
}

/// The content the box holds at the changed path: what the region's new version most likely shares chunks
/// with (the previous version of the same file).
fn local_base(app: &App, change: &Change) -> Result<Option<Hash>, StoreError> {
    let Record::File { path, .. } = &change.record else { return Ok(None) };
    Ok(app.store.stat(path)?.and_then(|e| e.blob()))
}

/// Makes sure the region holds `hash`: offers its manifest (as a delta against `prev` when the region
/// probably has that), uploads the chunks it lacks, until it says the file is assembled. Returns the chunks
/// sent.
async fn send_content(
    app: &Arc<App>,
    client: &Arc<Client>,
    hash: Hash,
    prev: Option<Hash>,
    connections: usize,
) -> Result<usize, SyncError> {
    let store = &app.store;
    let manifest = store.manifest(hash).await?.ok_or_else(|| StoreError::MissingContent(hash.to_hex()))?;
    let mut base = match prev {
        Some(prev) => store.manifest(prev).await.ok().flatten(),
        None => None,
    };
    let mut sent = 0;
    for _ in 0..4 {
        let bytes = match &base {
            Some(base) => manifest.encode_delta(base),
            None => manifest.encode(),
        };
        let base_hash = base.as_ref().map(|b| b.file);
        let reply = blocking(client, move |c| c.content(&bytes, base_hash)).await?;
        if reply.installed {
            return Ok(sent);
        }
        if reply.base_unknown {
            base = None;
            continue;
        }
        let missing: Vec<Hash> = reply.missing.iter().filter_map(|h| Hash::from_hex(h)).collect();
        sent += missing.len();
        let lens: BTreeMap<Hash, u32> = manifest.chunks.iter().copied().collect();
        let sized = missing.into_iter().map(|h| (h, lens.get(&h).copied().unwrap_or(MAX_CHUNK))).collect();
        let app = app.clone();
        transfer(client, batches(sized), connections, move |c, batch| {
            let mut framed = Vec::with_capacity(CHUNK_BATCH_BYTES + 4096);
            for (chunk, _) in &batch {
                let bytes = app
                    .store
                    .local_chunk(chunk)
                    .map_err(|e| SyncError::Store(StoreError::io(std::path::Path::new("chunk"), e)))?
                    .ok_or_else(|| StoreError::MissingContent(chunk.to_hex()))?;
                app.metrics.sync_chunk_bytes_out.add(bytes.len() as u64);
                frame(&mut framed, chunk, &bytes);
            }
            c.put_chunks(&framed)?;
            app.metrics.sync_chunks_out.add(batch.len() as u64);
            Ok(())
        })
        .await?;
    }
    Err(SyncError::BadResponse {
        url: "content".into(),
        message: format!("the region did not assemble {} after the upload", hash.to_hex()),
    })
}

/// Brings `hash` from the region: its manifest (a delta against `base` when the box has one), the chunks the
/// box lacks, then the checked assembly. Returns the chunks received.
async fn fetch_content(
    app: &Arc<App>,
    client: &Arc<Client>,
    hash: Hash,
    base: Option<Hash>,
    class: Class,
    connections: usize,
) -> Result<usize, SyncError> {
    let store = &app.store;
    let base: Option<Manifest> = match base {
        Some(base) => store.manifest(base).await.ok().flatten(),
        None => None,
    };
    let manifest = blocking(client, move |c| c.manifest(hash, base.as_ref())).await?;
    let stage = store.chunk_stage();
    let missing = stage.missing(&manifest, &|h| store.has_chunk(h));
    let lens: BTreeMap<Hash, u32> = manifest.chunks.iter().copied().collect();
    let count = missing.len();
    let wanted: Vec<(Hash, u32)> = missing.into_iter().map(|h| (h, lens.get(&h).copied().unwrap_or(0))).collect();
    let app2 = app.clone();
    transfer(client, batches(wanted), connections, move |c, batch| {
        c.get_chunks(class, &batch, &mut |chunk, bytes| {
            app2.store.chunk_stage().put(&chunk, &bytes)?;
            app2.metrics.sync_chunks_in.inc();
            app2.metrics.sync_chunk_bytes_in.add(bytes.len() as u64);
            Ok(())
        })
    })
    .await?;
    store.assemble(&manifest).await?;
    Ok(count)
}

/// Groups chunks into batches of about `CHUNK_BATCH_BYTES`, in file order.
fn batches(chunks: Vec<(Hash, u32)>) -> Vec<Vec<(Hash, u32)>> {
    let mut out: Vec<Vec<(Hash, u32)>> = Vec::new();
    let mut bytes = 0usize;
    for chunk in chunks {
        let full = out.last().is_none_or(|b| bytes >= CHUNK_BATCH_BYTES || b.len() >= CHUNK_BATCH_COUNT);
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += chunk.1 as usize;
        if let Some(batch) = out.last_mut() {
            batch.push(chunk);
        }
    }
    // Workers take batches from the end: reversed, the file goes out in order.
    out.reverse();
    out
}

/// Runs `each` over `items` on `connections` blocking threads; the first failure stops the others.
async fn transfer<T, F>(client: &Arc<Client>, items: Vec<T>, connections: usize, each: F) -> Result<(), SyncError>
where
    T: Send + 'static,
    F: Fn(&Client, T) -> Result<(), SyncError> + Send + Sync + 'static,
{
    if items.is_empty() {
        return Ok(());
    }
    let queue = Arc::new(Mutex::new(items));
    let failed = Arc::new(AtomicBool::new(false));
    let each = Arc::new(each);
    let workers = connections.clamp(1, 32).min(queue.lock().map(|q| q.len()).unwrap_or(1));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (queue, failed, each, client) = (queue.clone(), failed.clone(), each.clone(), client.clone());
        tasks.push(tokio::task::spawn_blocking(move || -> Result<(), SyncError> {
            while !failed.load(Ordering::Relaxed) {
                let Some(item) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else { return Ok(()) };
                if let Err(e) = each(&client, item) {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(())
        }));
    }
    let mut first = Ok(());
    for task in tasks {
        let result = task.await.map_err(|e| SyncError::Transport { url: "transfer".into(), message: e.to_string() });
        if first.is_ok() {
            first = result.and_then(|r| r);
        }
    }
    first
}

/// Runs a blocking client call off the async threads.
async fn blocking<T, F>(client: &Arc<Client>, call: F) -> Result<T, SyncError>
where
    T: Send + 'static,
    F: FnOnce(&Client) -> Result<T, SyncError> + Send + 'static,
{
    let client = client.clone();
    tokio::task::spawn_blocking(move || call(&client))
        .await
        .map_err(|e| SyncError::Transport { url: "session".into(), message: e.to_string() })?
}

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
use crate::sync::client::{Client, SyncError};
use crate::sync::protocol::{
    self, frame, Hello, Offer, Pull, Push, BATCH, CHUNK_BATCH_BYTES, CHUNK_BATCH_COUNT, OFFER_BATCH_BYTES,
    OFFER_BATCH_COUNT,
};
use crate::uplink::Class;

/// Bytes the region lacks per push batch: about two minutes of a 2 Mbit/s line.
const PUSH_BYTES: u64 = 32 << 20;

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

    // A push the region answered with a refusal of its own (its disk is full, its store failed) must not stop
    // what comes down: edits from home, accounts, deletions still reach the school. The session then reports
    // the push's failure all the same.
    let pushed = push(app, &client, reply.seen, connections, &mut report).await;
    match pushed {
        Err(e @ SyncError::Status { .. }) if !e.is_refusal() => {
            log::warn!("pushing failed ({e}); pulling all the same");
            pull(app, &client, &sides, connections, &mut report).await?;
            Err(e)
        }
        Err(e) => Err(e),
        Ok(()) => {
            pull(app, &client, &sides, connections, &mut report).await?;
            Ok(report)
        }
    }
}

/// Push: every local change the region has not seen, contents first. `report.region_seen` ends as the region's
/// high-water marks.
async fn push(
    app: &Arc<App>,
    client: &Arc<Client>,
    mut region_seen: BTreeMap<String, u64>,
    connections: usize,
    report: &mut Report,
) -> Result<(), SyncError> {
    let store = &app.store;
    loop {
        let batch = store.changes_since("", &[], &region_seen, BATCH)?;
        if batch.is_empty() {
            break;
        }
        // Contents the region holds already (the same file elsewhere, a copy in another class) cost one
        // question for the whole batch; each other content is sent once, however many files share it.
        let contents: Vec<String> = batch.iter().filter_map(|c| c.record.content()).map(|(h, _)| h.to_hex()).collect();
        let ask = protocol::Have { files: contents.clone() };
        let held = if contents.is_empty() { Vec::new() } else { blocking(client, move |c| c.have(&ask)).await?.files };
        let mut present: HashSet<Hash> = held.iter().filter_map(|h| Hash::from_hex(h)).collect();
        // (Change, content, previous version) of each content to send, in change order.
        let mut outgoing = Vec::new();
        for (i, change) in batch.iter().enumerate() {
            if let Some((hash, _)) = change.record.content() {
                if present.insert(hash) {
                    let prev = change.version.prev.as_deref().and_then(Hash::from_hex).filter(|p| *p != hash);
                    outgoing.push((i, hash, prev));
                }
            }
        }
        let contents: Vec<(Hash, Option<Hash>)> = outgoing.iter().map(|&(_, hash, prev)| (hash, prev)).collect();
        let (chunks, placed) = send_contents(app, client, &contents, connections).await?;
        report.chunks_up += chunks;
        // The batch ends before the first content this round could not carry.
        let mut batch = batch;
        if let Some(&(cut, _, _)) = outgoing.get(placed) {
            batch.truncate(cut);
        }
        let push = Push { changes: batch.clone() };
        let pushed = blocking(client, move |c| c.push(&push)).await?;
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
    Ok(())
}

/// Pull: every region change the box has not seen, contents first.
async fn pull(
    app: &Arc<App>,
    client: &Arc<Client>,
    sides: &Sides,
    connections: usize,
    report: &mut Report,
) -> Result<(), SyncError> {
    let store = &app.store;
    loop {
        let pull = Pull { seen: store.high_water("")?, limit: BATCH };
        let batch = blocking(client, move |c| c.pull(&pull)).await?;
        if batch.changes.is_empty() {
            break;
        }
        // Contents first, each once; what users wait for before prefetch, otherwise in change order.
        let (mut wanted, mut named) = (Vec::new(), HashSet::new());
        for change in &batch.changes {
            if let Some((hash, size)) = change.record.content() {
                if !store.has_blob(hash) && named.insert(hash) {
                    wanted.push(Wanted { hash, base: local_base(app, change)?, class: class_of(change), size });
                }
            }
        }
        wanted.sort_by_key(|w| w.class);
        report.chunks_down += fetch_contents(app, client, wanted, connections).await?;
        let applied = store.apply_remote("", &[], &batch.changes, sides).await?;
        report.pulled += applied.applied + applied.conflicts;
        app.metrics.sync_changes_in.add((applied.applied + applied.conflicts) as u64);
        app.metrics.sync_conflicts.add(applied.conflicts as u64);
        report.conflicts += applied.conflicts;
        if !batch.more {
            break;
        }
    }
    Ok(())
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

/// A content the region lacks, on its way there.
struct Outgoing {
    manifest: Manifest,
    /// The previous version of the file, which the region probably holds: the manifest goes as a delta.
    base: Option<Manifest>,
    /// The region kept this manifest from an earlier offer: naming the file is enough.
    offered: bool,
}

impl Outgoing {
    async fn load(app: &App, hash: Hash, prev: Option<Hash>) -> Result<Outgoing, SyncError> {
        let store = &app.store;
        let manifest = store.manifest(hash).await?.ok_or_else(|| StoreError::MissingContent(hash.to_hex()))?;
        let base = match prev {
            Some(prev) => store.manifest(prev).await.ok().flatten(),
            None => None,
        };
        Ok(Outgoing { manifest, base, offered: false })
    }

    /// What an offer carries for this file: its manifest, as a delta when there is a base, or nothing once
    /// the region keeps it.
    fn offer(&self) -> Vec<u8> {
        match (&self.base, self.offered) {
            (_, true) => Vec::new(),
            (Some(base), false) => self.manifest.encode_delta(base),
            (None, false) => self.manifest.encode(),
        }
    }

    /// Bytes of the chunks `offer` says the region lacks.
    fn lacking(&self, offer: &Offer) -> u64 {
        let chunks = &self.manifest.chunks;
        let range = |&[start, end]: &[u32; 2]| chunks.get(start as usize..end as usize).unwrap_or_default();
        offer.missing.iter().flat_map(range).map(|&(_, len)| u64::from(len)).sum()
    }
}

/// Rounds of offers after the first before giving up on a file the region will not assemble: the one after
/// the chunks, and a few for bases or manifests the region no longer holds.
const OFFER_ROUNDS: usize = 5;
/// Most content a push batch offers, whatever the region lacks of it: bounds the manifests in memory (about
/// 0.45 % of it) when large files changed little.
const OFFER_CONTENT: u64 = 4 << 30;

fn bad_offer(message: String) -> SyncError {
    SyncError::BadResponse { url: "contents".into(), message }
}

/// Makes sure the region holds contents (a hash and its previous version), in order: offers their manifests,
/// a request at a time, until the region lacks [`PUSH_BYTES`] of them; sends the chunks it lacks for all the
/// files offered in shared batches on several connections; then names those files again so that it
/// assembles them. Returns the chunks sent and how many contents (a prefix) are now at the region: the push
/// batch ends there, so that a day of videos becomes visible as it goes, and what a batch costs is what the
/// region lacks, not the size of the files (ten 100 MB files edited in a few places go together).
async fn send_contents(
    app: &Arc<App>,
    client: &Arc<Client>,
    contents: &[(Hash, Option<Hash>)],
    connections: usize,
) -> Result<(usize, usize), SyncError> {
    let (mut taken, mut lacking, mut covered) = (0, 0u64, 0u64);
    let mut answered = Vec::new();
    while taken < contents.len() && lacking < PUSH_BYTES && covered < OFFER_CONTENT {
        let (mut group, mut body) = (Vec::new(), Vec::new());
        while taken < contents.len() && group.len() < OFFER_BATCH_COUNT && body.len() < OFFER_BATCH_BYTES {
            let (hash, prev) = contents[taken];
            taken += 1;
            let item = Outgoing::load(app, hash, prev).await?;
            frame(&mut body, &hash, &item.offer());
            covered += item.manifest.size;
            group.push(item);
        }
        let reply = blocking(client, move |c| c.offer(&body)).await?;
        if reply.files.len() != group.len() {
            return Err(bad_offer(format!("{} answers for {} files", reply.files.len(), group.len())));
        }
        for (item, offer) in group.into_iter().zip(reply.files) {
            lacking += item.lacking(&offer);
            answered.push((item, offer));
        }
    }

    let mut sent = 0;
    for _ in 0..=OFFER_ROUNDS {
        // What each file still needs; the chunks the region lacks, each once, in file order.
        let (mut chunks, mut queued, mut pending) = (Vec::new(), HashSet::new(), Vec::new());
        for (mut item, offer) in answered {
            if offer.installed {
                continue;
            }
            if offer.base_unknown {
                item.base = None;
                item.offered = false;
            } else if offer.manifest_unknown {
                item.offered = false;
            } else if offer.missing.is_empty() {
                let file = item.manifest.file.to_hex();
                return Err(bad_offer(format!("{file} is neither installed nor missing chunks")));
            } else {
                item.offered = true;
                for [start, end] in &offer.missing {
                    let range = item.manifest.chunks.get(*start as usize..*end as usize);
                    for &(hash, len) in range.ok_or_else(|| bad_offer(format!("chunks {start}..{end} asked")))? {
                        if queued.insert(hash) {
                            chunks.push((hash, len));
                        }
                    }
                }
            }
            pending.push(item);
        }
        sent += chunks.len();
        send_chunks(app, client, chunks, connections).await?;
        if pending.is_empty() {
            return Ok((sent, taken));
        }
        answered = offer_again(client, pending, connections).await?;
    }
    match answered.first() {
        None => Ok((sent, taken)),
        Some((item, _)) => {
            Err(bad_offer(format!("the region did not assemble {} after the upload", item.manifest.file.to_hex())))
        }
    }
}

/// Offers `items` again, in requests of up to `OFFER_BATCH_BYTES` of manifests, several at once.
async fn offer_again(
    client: &Arc<Client>,
    items: Vec<Outgoing>,
    connections: usize,
) -> Result<Vec<(Outgoing, Offer)>, SyncError> {
    let mut requests: Vec<(Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let bytes = item.offer();
        let full = requests.last().is_none_or(|(files, body)| {
            files.len() >= OFFER_BATCH_COUNT || (!files.is_empty() && body.len() + bytes.len() > OFFER_BATCH_BYTES)
        });
        if full {
            requests.push((Vec::new(), Vec::new()));
        }
        if let Some((files, body)) = requests.last_mut() {
            files.push(i);
            frame(body, &item.manifest.file, &bytes);
        }
    }
    let answers = Arc::new(Mutex::new(vec![None; items.len()]));
    let into = answers.clone();
    transfer(client, requests, connections, move |c, (files, body)| {
        let reply = c.offer(&body)?;
        if reply.files.len() != files.len() {
            return Err(bad_offer(format!("{} answers for {} files", reply.files.len(), files.len())));
        }
        let mut answers = into.lock().unwrap_or_else(|e| e.into_inner());
        for (i, offer) in files.into_iter().zip(reply.files) {
            answers[i] = Some(offer);
        }
        Ok(())
    })
    .await?;
    let answers = std::mem::take(&mut *answers.lock().unwrap_or_else(|e| e.into_inner()));
    items
        .into_iter()
        .zip(answers)
        .map(|(item, offer)| Ok((item, offer.ok_or_else(|| bad_offer("a file without an answer".into()))?)))
        .collect()
}

/// Uploads `chunks` (read from the local blobs that hold them) in framed batches on several connections.
async fn send_chunks(
    app: &Arc<App>,
    client: &Arc<Client>,
    chunks: Vec<(Hash, u32)>,
    connections: usize,
) -> Result<(), SyncError> {
    let app = app.clone();
    transfer(client, batches(chunks), connections, move |c, batch| {
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
    .await
}

/// A content the box lacks, named by a pull.
struct Wanted {
    hash: Hash,
    /// What the box holds at the file's path: its manifest makes the region's a delta.
    base: Option<Hash>,
    class: Class,
    size: u64,
}

/// Brings contents from the region, in groups of one class and up to [`PUSH_BYTES`]: one request for the
/// group's manifests (deltas against the box's bases where the region holds them too), the chunks the box
/// lacks for all of them in shared batches on several connections, then each file assembled and checked.
/// Returns the chunks received.
async fn fetch_contents(
    app: &Arc<App>,
    client: &Arc<Client>,
    wanted: Vec<Wanted>,
    connections: usize,
) -> Result<usize, SyncError> {
    let store = &app.store;
    let mut received = 0;
    let mut rest = wanted.into_iter().peekable();
    while let Some(first) = rest.next() {
        let (class, mut bytes) = (first.class, first.size);
        let mut group = vec![first];
        while let Some(next) = rest.next_if(|n| {
            n.class == class && group.len() < OFFER_BATCH_COUNT && bytes.saturating_add(n.size) <= PUSH_BYTES
        }) {
            bytes += next.size;
            group.push(next);
        }
        let mut asks = Vec::with_capacity(group.len());
        for w in &group {
            let base = match w.base {
                Some(base) => store.manifest(base).await.ok().flatten(),
                None => None,
            };
            asks.push((w.hash, base));
        }
        let manifests = blocking(client, move |c| {
            let asks: Vec<(Hash, Option<&Manifest>)> = asks.iter().map(|(h, b)| (*h, b.as_ref())).collect();
            c.manifests(&asks)
        })
        .await?;
        let stage = store.chunk_stage();
        let (mut chunks, mut queued) = (Vec::new(), HashSet::new());
        for manifest in &manifests {
            let missing: HashSet<Hash> = stage.missing(manifest, &|h| store.has_chunk(h)).into_iter().collect();
            for &(hash, len) in &manifest.chunks {
                if missing.contains(&hash) && queued.insert(hash) {
                    chunks.push((hash, len));
                }
            }
        }
        received += chunks.len();
        let app2 = app.clone();
        transfer(client, batches(chunks), connections, move |c, batch| {
            c.get_chunks(class, &batch, &mut |chunk, bytes| {
                app2.store.chunk_stage().put(&chunk, &bytes)?;
                app2.metrics.sync_chunks_in.inc();
                app2.metrics.sync_chunk_bytes_in.add(bytes.len() as u64);
                Ok(())
            })
        })
        .await?;
        for manifest in &manifests {
            store.assemble(manifest).await?;
        }
    }
    Ok(received)
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

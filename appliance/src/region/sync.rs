//! The gateway's end of replication (`/sync/v1/…`, see `sync::protocol`).
//!
//! The school is the one the box's certificate is bound to (mutual TLS), never a request field: a box reaches
//! only `schools/<its UAI>/` and its own people. Contents are addressed by hash and shared between schools on
//! disk, so reading is gated too: a box may fetch the manifest of a file only after a `pull` offered it that
//! file, and a chunk only of a manifest it was served (kept in memory per school; after a restart of the
//! gateway the box asks again and is offered again).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Gateway;
use crate::http::{body, json, ApiError, Ctx, Request, Response};
use crate::store::sync::Sides;
use crate::store::{Hash, Store, StoreError};
use crate::sync::chunk::{ChunkError, Manifest, MAX_CHUNK};
use crate::sync::protocol::{
    self, ContentReply, Hello, HelloReply, Offer, OfferReply, Pull, PullReply, Push, PushReply,
};

/// What each school's box may read, by hash.
#[derive(Default)]
pub struct Offers(Mutex<HashMap<String, Offered>>);

struct Offered {
    blobs: HashSet<Hash>,
    chunks: HashSet<Hash>,
    /// Manifests the box offered (`POST contents`) whose files are not assembled yet, so that asking again
    /// once the chunks are sent needs only the file's hash.
    pending: HashMap<Hash, Manifest>,
    /// Chunks listed by `pending`, to bound its memory.
    pending_chunks: usize,
    touched: Instant,
}

/// Most chunks the pending manifests of one school may list (36 bytes each in memory): past this they are all
/// forgotten, and the box, told `manifest_unknown`, sends them again.
const PENDING_CHUNKS: usize = 1 << 20;

impl Offered {
    fn keep(&mut self, manifest: Manifest) {
        self.forget(&manifest.file);
        if self.pending_chunks + manifest.chunks.len() > PENDING_CHUNKS {
            self.pending.clear();
            self.pending_chunks = 0;
        }
        self.pending_chunks += manifest.chunks.len();
        self.pending.insert(manifest.file, manifest);
    }

    fn forget(&mut self, file: &Hash) {
        if let Some(old) = self.pending.remove(file) {
            self.pending_chunks -= old.chunks.len();
        }
    }
}

/// Offers unused this long are forgotten (the box is offered them again at its next pull).
const OFFER_TTL: Duration = Duration::from_secs(6 * 3600);

impl Offers {
    fn with<T>(&self, uai: &str, f: impl FnOnce(&mut Offered) -> T) -> T {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|_, o| o.touched.elapsed() < OFFER_TTL);
        let offered = all.entry(uai.to_owned()).or_insert_with(|| Offered {
            blobs: HashSet::new(),
            chunks: HashSet::new(),
            pending: HashMap::new(),
            pending_chunks: 0,
            touched: Instant::now(),
        });
        offered.touched = Instant::now();
        f(offered)
    }
}

fn school_root(uai: &str) -> Vec<String> {
    crate::app::school_root(Some(uai))
}

pub async fn handle(ctx: &mut Ctx, gateway: &Gateway, req: Request) -> Result<Response, ApiError> {
    let Some(uai) = ctx.conn.box_uai.clone() else {
        return Err(ApiError::EnrollmentRefused("réplication refusée : présentez le certificat de la box".into()));
    };
    let app = ctx.app.clone();
    let store = &app.store;
    let idle = app.config.limits.body_idle_timeout.0;
    let path = req.uri().path().trim_start_matches(protocol::PREFIX).to_owned();
    let root = school_root(&uai);
    let sides = Sides { region: store.me().to_owned() };
    let internal = |e: crate::store::StoreError| ApiError::Internal(format!("{uai}: {e}"));
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "hello") => {
            let hello: Hello = read_json(req, idle).await?;
            let waiting = store.changes_since(&uai, &root, &hello.seen, 10_000).map_err(internal)?;
            let backlog_bytes = waiting.iter().filter_map(|c| c.record.content()).map(|(_, size)| size).sum();
            log::info!("{uai} box {} connected for replication", hello.replica);
            Ok(json(
                StatusCode::OK,
                &HelloReply {
                    replica: store.me().to_owned(),
                    uai: uai.clone(),
                    seen: store.high_water(&uai).map_err(internal)?,
                    backlog_changes: waiting.len() as u64,
                    backlog_bytes,
                },
            ))
        }
        (Method::POST, "push") => {
            let push: Push = read_json(req, idle).await?;
            let applied = store.apply_remote(&uai, &root, &push.changes, &sides).await.map_err(|e| match e {
                crate::store::StoreError::MissingContent(hash) => {
                    ApiError::Conflict(format!("contenu {hash} absent : envoyez-le d'abord"))
                }
                e => internal(e),
            })?;
            for refused in &applied.refused {
                log::warn!("{uai} change refused: {refused}");
            }
            if applied.applied + applied.conflicts > 0 {
                log::info!(
                    "{uai} received {} changes ({} conflicts) from its box",
                    applied.applied + applied.conflicts,
                    applied.conflicts
                );
            }
            app.metrics.sync_changes_in.add((applied.applied + applied.conflicts) as u64);
            app.metrics.sync_conflicts.add(applied.conflicts as u64);
            let reply = PushReply {
                applied: applied.applied,
                known: applied.known,
                conflicts: applied.conflicts,
                refused: applied.refused,
            };
            Ok(json(StatusCode::OK, &reply))
        }
        (Method::POST, "pull") => {
            let pull: Pull = read_json(req, idle).await?;
            let limit = pull.limit.clamp(1, protocol::BATCH);
            let changes = store.changes_since(&uai, &root, &pull.seen, limit + 1).map_err(internal)?;
            let more = changes.len() > limit;
            let changes: Vec<_> = changes.into_iter().take(limit).collect();
            gateway
                .offers
                .with(&uai, |o| o.blobs.extend(changes.iter().filter_map(|c| c.record.content().map(|(h, _)| h))));
            app.metrics.sync_changes_out.add(changes.len() as u64);
            Ok(json(StatusCode::OK, &PullReply { changes, more }))
        }
        (Method::GET, p) if p.starts_with("manifest/") => {
            let hash = hash_in(&p["manifest/".len()..])?;
            if !gateway.offers.with(&uai, |o| o.blobs.contains(&hash)) {
                return Err(ApiError::Forbidden);
            }
            let manifest = store.manifest(hash).await.map_err(internal)?.ok_or(ApiError::NotFound)?;
            gateway.offers.with(&uai, |o| o.chunks.extend(manifest.chunks.iter().map(|(h, _)| *h)));
            // A base not held here (released since, and never indexed) or unreadable: the whole manifest, which
            // the box tells from a delta by its first byte.
            let base = match query_base(&req) {
                Some(base) => store.manifest(base).await.ok().flatten(),
                None => None,
            };
            let bytes = match &base {
                Some(base) => manifest.encode_delta(base),
                None => manifest.encode(),
            };
            Ok(binary(bytes))
        }
        (Method::POST, "manifests") => {
            // `GET manifest/` for a group of files in one round trip (see `protocol`).
            let ask: protocol::ManifestAsk = read_json(req, idle).await?;
            if ask.files.len() > protocol::OFFER_BATCH_COUNT {
                return Err(ApiError::BadRequest(format!("au plus {} fichiers par lot", protocol::OFFER_BATCH_COUNT)));
            }
            let files: Vec<(Hash, Option<Hash>)> = ask
                .files
                .iter()
                .map(|w| Ok((hash_in(&w.file)?, w.base.as_deref().map(hash_in).transpose()?)))
                .collect::<Result<_, ApiError>>()?;
            if !gateway.offers.with(&uai, |o| files.iter().all(|(file, _)| o.blobs.contains(file))) {
                return Err(ApiError::Forbidden);
            }
            let mut out = Vec::new();
            for (file, base) in files {
                let manifest = store.manifest(file).await.map_err(internal)?.ok_or(ApiError::NotFound)?;
                gateway.offers.with(&uai, |o| o.chunks.extend(manifest.chunks.iter().map(|(h, _)| *h)));
                // As for `manifest/`: the whole manifest when the base is not held here or unreadable.
                let base = match base {
                    Some(base) => store.manifest(base).await.ok().flatten(),
                    None => None,
                };
                let bytes = match &base {
                    Some(base) => manifest.encode_delta(base),
                    None => manifest.encode(),
                };
                protocol::frame(&mut out, &file, &bytes);
            }
            Ok(binary(out))
        }
        (Method::POST, "have") => {
            // Says only whether contents the box names are here, not what they are: the box has them.
            let ask: protocol::Have = read_json(req, idle).await?;
            let files =
                ask.files.into_iter().filter(|h| Hash::from_hex(h).is_some_and(|h| store.has_blob(h))).collect();
            Ok(json(StatusCode::OK, &protocol::Have { files }))
        }
        (Method::POST, "chunks") => {
            let list: protocol::ChunkList = read_json(req, idle).await?;
            if list.chunks.len() > protocol::CHUNK_BATCH_COUNT {
                return Err(ApiError::BadRequest(format!("au plus {} morceaux par lot", protocol::CHUNK_BATCH_COUNT)));
            }
            let hashes: Vec<Hash> = list.chunks.iter().map(|h| hash_in(h)).collect::<Result<_, _>>()?;
            if !gateway.offers.with(&uai, |o| hashes.iter().all(|h| o.chunks.contains(h))) {
                return Err(ApiError::Forbidden);
            }
            let mut out = Vec::with_capacity(protocol::CHUNK_BATCH_BYTES + 4096);
            for hash in &hashes {
                let bytes = tokio::task::block_in_place(|| store.local_chunk(hash))
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .ok_or(ApiError::NotFound)?;
                app.metrics.sync_chunks_out.inc();
                app.metrics.sync_chunk_bytes_out.add(bytes.len() as u64);
                protocol::frame(&mut out, hash, &bytes);
            }
            Ok(binary(out))
        }
        (Method::PUT, "chunks") => {
            // Staged one by one as they arrive: a cut mid-batch keeps every complete chunk.
            let mut body = req.into_body();
            let mut buf = Vec::new();
            let stage = store.chunk_stage();
            let limit = protocol::CHUNK_BATCH_BYTES * 4;
            let mut received = 0usize;
            while let Some(piece) = body::next_chunk(&mut body, idle).await? {
                received += piece.len();
                if received > limit {
                    return Err(ApiError::PayloadTooLarge);
                }
                buf.extend_from_slice(&piece);
                let whole = protocol::unframe(&mut buf, MAX_CHUNK as usize).map_err(ApiError::BadRequest)?;
                for (hash, bytes) in whole {
                    tokio::task::block_in_place(|| stage.put(&hash, &bytes))
                        .map_err(|e| not_stored(&uai, "morceau", e.into()))?;
                    app.metrics.sync_chunks_in.inc();
                    app.metrics.sync_chunk_bytes_in.add(bytes.len() as u64);
                }
            }
            if !buf.is_empty() {
                return Err(ApiError::BadRequest("lot de morceaux coupé au milieu d'un morceau".into()));
            }
            let mut resp = hyper::Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            Ok(resp)
        }
        (Method::POST, "content") => {
            let base = req.headers().get(protocol::BASE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let bytes = body::read_small(req.into_body(), idle, protocol::MAX_JSON).await?;
            let bad = |e: crate::sync::chunk::ChunkError| ApiError::BadRequest(format!("manifeste refusé : {e}"));
            let manifest = match base {
                Some(base) => {
                    let base = hash_in(&base)?;
                    match store.manifest(base).await.map_err(internal)? {
                        Some(base) => Manifest::decode_delta(&bytes, &base).map_err(bad)?,
                        None => {
                            return Ok(json(StatusCode::OK, &ContentReply { base_unknown: true, ..Default::default() }))
                        }
                    }
                }
                None => Manifest::decode(&bytes).map_err(bad)?,
            };
            let missing = place(store, &uai, &manifest).await?;
            if !missing.is_empty() {
                let missing = missing.iter().map(|h| h.to_hex()).collect();
                return Ok(json(StatusCode::OK, &ContentReply { missing, ..Default::default() }));
            }
            Ok(json(StatusCode::OK, &ContentReply { installed: true, ..Default::default() }))
        }
        (Method::POST, "contents") => {
            // `content` for a whole batch of files in one round trip (see `protocol`).
            let mut body = body::read_small(req.into_body(), idle, protocol::MAX_JSON).await?.to_vec();
            let entries = protocol::unframe(&mut body, protocol::MAX_JSON).map_err(ApiError::BadRequest)?;
            if !body.is_empty() {
                return Err(ApiError::BadRequest("liste de manifestes coupée au milieu".into()));
            }
            if entries.len() > protocol::OFFER_BATCH_COUNT {
                return Err(ApiError::BadRequest(format!("au plus {} fichiers par lot", protocol::OFFER_BATCH_COUNT)));
            }
            let bad = |e: ChunkError| ApiError::BadRequest(format!("manifeste refusé : {e}"));
            let mut files = Vec::with_capacity(entries.len());
            for (file, bytes) in entries {
                let manifest = if bytes.is_empty() {
                    match gateway.offers.with(&uai, |o| o.pending.get(&file).cloned()) {
                        Some(manifest) => manifest,
                        None => {
                            files.push(Offer { manifest_unknown: true, ..Offer::default() });
                            continue;
                        }
                    }
                } else if let Some(base) = Manifest::delta_base(&bytes) {
                    match store.manifest(base).await.map_err(internal)? {
                        Some(base) => Manifest::decode_delta(&bytes, &base).map_err(bad)?,
                        None => {
                            files.push(Offer { base_unknown: true, ..Offer::default() });
                            continue;
                        }
                    }
                } else {
                    Manifest::decode(&bytes).map_err(bad)?
                };
                if manifest.file != file {
                    return Err(ApiError::BadRequest(format!("manifeste d'un autre fichier que {}", file.to_hex())));
                }
                let missing: HashSet<Hash> = place(store, &uai, &manifest).await?.into_iter().collect();
                if missing.is_empty() {
                    gateway.offers.with(&uai, |o| o.forget(&file));
                    files.push(Offer { installed: true, ..Offer::default() });
                    continue;
                }
                let mut named = HashSet::new();
                let positions =
                    manifest.chunks.iter().enumerate().filter_map(|(i, (hash, _))| {
                        (missing.contains(hash) && named.insert(*hash)).then_some(i as u32)
                    });
                files.push(Offer { missing: protocol::ranges(positions), ..Offer::default() });
                gateway.offers.with(&uai, |o| o.keep(manifest));
            }
            Ok(json(StatusCode::OK, &OfferReply { files }))
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Places an offered file: nothing to do when it is here already (another school's copy, or sent before);
/// assembled and checked now when every chunk is staged or held; otherwise the distinct chunks still to come,
/// in file order (an empty list means installed).
async fn place(store: &Store, uai: &str, manifest: &Manifest) -> Result<Vec<Hash>, ApiError> {
    if store.has_blob(manifest.file) {
        return Ok(Vec::new());
    }
    let missing = store.chunk_stage().missing(manifest, &|h| store.has_chunk(h));
    if missing.is_empty() {
        store.assemble(manifest).await.map_err(|e| not_stored(uai, "assemblage", e))?;
    }
    Ok(missing)
}

/// Why a chunk or an assembled file could not be stored. A full disk is the region's to fix: said in its log,
/// and a 507 that the box shows in its status and retries later; another I/O or database failure is the
/// gateway's too (500); what remains (bytes that are not what they claim) is the box's request.
fn not_stored(uai: &str, what: &str, e: StoreError) -> ApiError {
    let io = match &e {
        StoreError::Io { source, .. }
        | StoreError::Chunk(
            ChunkError::Io { source, .. } | ChunkError::Write(source) | ChunkError::Local { source, .. },
        ) => Some(source),
        StoreError::Db(_) => return ApiError::Internal(format!("{uai}: {what}: {e}")),
        _ => None,
    };
    match io {
        Some(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            ApiError::DiskFull(format!("{uai}: {what} : disque plein à la région ({e})"))
        }
        Some(_) => ApiError::Internal(format!("{uai}: {what}: {e}")),
        None => ApiError::BadRequest(format!("{uai}: {what} refusé : {e}")),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request, idle: Duration) -> Result<T, ApiError> {
    let bytes = body::read_small(req.into_body(), idle, protocol::MAX_JSON).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("JSON invalide : {e}")))
}

fn hash_in(text: &str) -> Result<Hash, ApiError> {
    Hash::from_hex(text).ok_or_else(|| ApiError::BadRequest(format!("« {text} » n'est pas une empreinte blake3")))
}

fn query_base(req: &Request) -> Option<Hash> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "base").and_then(|(_, v)| Hash::from_hex(&v))
}

fn binary(bytes: Vec<u8>) -> Response {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(bytes)).map_err(|e| match e {}).boxed());
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
    resp
}

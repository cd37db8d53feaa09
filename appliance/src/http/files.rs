//! `/api/files/<path>`: read, write, list, delete and zip the spaces of DESIGN.md.

use std::time::{Duration, UNIX_EPOCH};

use futures_util::{Stream, StreamExt as _, TryStreamExt};
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{body, empty, full, json, set, with_status, zipstream, ApiError, Ctx, Request, Response};
use crate::account::{Role, User};
use crate::app::{App, Family};
use crate::path::{self, UserPath};
use crate::space::{self, Kind, Target};
use crate::store::{Entry, StoreError, Written};

/// Files up to this size are read into memory in one go: many small GETs is the portal's common case.
const SMALL_FILE: u64 = 64 << 10;
/// Read size when streaming larger files.
const STREAM_CHUNK: usize = 256 << 10;

/// One line of a folder listing.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub name: String,
    pub size: u64,
    pub modified: String,
    pub etag: Option<String>,
    pub dir: bool,
    #[serde(skip)]
    pub modified_ms: i64,
}

/// What a view path holds for a user.
pub enum Node {
    Folder(Vec<Item>),
    File(Entry),
}

pub fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)).to_string()
}

fn item(name: String, entry: &Entry) -> Item {
    Item {
        name,
        size: entry.size,
        modified: rfc3339(entry.modified),
        etag: entry.hash.as_ref().map(|h| format!("\"{h}\"")),
        dir: entry.dir,
        modified_ms: entry.modified,
    }
}

fn folder(name: &str) -> Item {
    Item { name: name.to_string(), size: 0, modified: rfc3339(0), etag: None, dir: true, modified_ms: 0 }
}

/// Resolves and checks read access; `Forbidden` if the user may not read it.
pub fn target(app: &App, user: &User, view: &[String]) -> Result<(Target, Family), ApiError> {
    let family = app.family(user)?;
    let mut target =
        space::resolve(user, view, &family.children_classes, &family.children).ok_or(ApiError::NotFound)?;
    // At the region, each school's files live under its own folder: a user reaches only their school's.
    if let (Some(internal), Some(_)) = (target.internal.as_mut(), user.school.as_deref()) {
        let mut rooted = crate::app::school_root(user.school.as_deref());
        rooted.append(internal);
        *internal = rooted;
    }
    Ok((target, family))
}

/// What `user` sees at `target`: a folder's listing (virtual folders and filtered hand-ins included) or a file.
pub fn lookup(app: &App, user: &User, target: &Target, family: &Family) -> Result<Node, ApiError> {
    if !target.read {
        return Err(ApiError::Forbidden);
    }
    let stored = |internal: &[String]| -> Result<Vec<Item>, ApiError> {
        Ok(app.store.list(internal)?.into_iter().map(|(n, e)| item(n, &e)).collect())
    };
    let internal = target.internal.as_deref().unwrap_or(&[]);
    let entry = match target.internal.as_deref() {
        Some(p) => app.store.stat(p)?,
        None => None,
    };
    if let Some(e) = &entry {
        if !e.dir {
            return Ok(Node::File(e.clone()));
        }
    }
    let exists = entry.is_some();
    let mut items = match &target.kind {
        Kind::Root => vec![folder("me"), folder("classes"), folder("school")],
        Kind::Classes => {
            let classes = match user.role {
                Role::Admin | Role::Staff => app.all_classes(user.school.as_deref())?,
                _ => space::classes_of(user, &family.children_classes),
            };
            classes.iter().map(|c| folder(c)).collect()
        }
        Kind::ClassRoot => {
            let mut items = if exists { stored(internal)? } else { Vec::new() };
            if !items.iter().any(|i| i.name == "rendus") {
                items.push(folder("rendus"));
            }
            items
        }
        Kind::Rendus { class } => {
            let mut items: Vec<Item> = if exists { stored(internal)? } else { Vec::new() };
            items.retain(|i| space::may_see_handin(user, class, &i.name, &family.children_classes, &family.children));
            if user.role == Role::Pupil && !items.iter().any(|i| i.name == user.login) {
                items.push(folder(&user.login));
            }
            items
        }
        Kind::SpaceRoot => {
            if exists {
                stored(internal)?
            } else {
                Vec::new()
            }
        }
        Kind::Inside => {
            if !exists {
                return Err(ApiError::NotFound);
            }
            stored(internal)?
        }
    };
    items.sort_by(|a, b| b.dir.cmp(&a.dir).then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase())));
    Ok(Node::Folder(items))
}

fn has_query_flag(req: &Request, flag: &str) -> bool {
    req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == flag || kv.starts_with(&format!("{flag}="))))
}

pub async fn handle(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let user = ctx.authenticate(req.headers())?;
    let raw = req.uri().path().strip_prefix("/api/files").unwrap_or("");
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    let upath = path::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let app = ctx.app.clone();
    let (target, family) = target(&app, &user, &upath.segments)?;
    match *req.method() {
        Method::GET | Method::HEAD => {
            let head = req.method() == Method::HEAD;
            match lookup(&app, &user, &target, &family)? {
                Node::Folder(items) if has_query_flag(&req, "zip") => zip_folder(&app, &upath, &target, items),
                Node::Folder(items) => Ok(json(StatusCode::OK, &items)),
                Node::File(entry) => send_file(&app, req.headers(), head, &entry, upath.segments.last()).await,
            }
        }
        Method::PUT => put(ctx, &user, &upath, &target, req).await,
        Method::DELETE => {
            let internal = writable(&target)?;
            app.store.delete(internal).await?;
            log::info!("{} deleted {}", user.login, upath.segments.join("/"));
            Ok(with_status(StatusCode::NO_CONTENT, empty()))
        }
        Method::POST if has_query_flag(&req, "op=mkdir") => {
            let internal = writable(&target)?;
            match app.store.mkdir(internal, &user.login).await {
                Ok(entry) => {
                    Ok(json(StatusCode::CREATED, &item(upath.segments.last().cloned().unwrap_or_default(), &entry)))
                }
                Err(StoreError::Exists) => Ok(with_status(StatusCode::OK, empty())),
                Err(e) => Err(e.into()),
            }
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// The store path of a target the user may modify.
pub fn writable(target: &Target) -> Result<&[String], ApiError> {
    match (&target.internal, target.write) {
        (Some(internal), true) => Ok(internal),
        _ => Err(ApiError::Forbidden),
    }
}

/// Bytes the user may still add, counting back the file being replaced if it is theirs.
pub fn room(app: &App, user: &User, replaced: Option<&Entry>) -> Result<Option<u64>, ApiError> {
    let Some(limit) = app.quota(user.role) else {
        return Ok(None);
    };
    let used = app.store.usage(&user.login)?;
    let credit = replaced.filter(|e| e.owner == user.login).map_or(0, |e| e.size);
    Ok(Some((limit + credit).saturating_sub(used)))
}

async fn put(ctx: &Ctx, user: &User, upath: &UserPath, target: &Target, req: Request) -> Result<Response, ApiError> {
    if upath.trailing_slash {
        return Err(ApiError::BadRequest("un nom de fichier ne peut pas finir par « / »".into()));
    }
    if !target.read && !target.write {
        return Err(ApiError::Forbidden);
    }
    let internal = writable(target)?.to_vec();
    let app = &ctx.app;
    let old = app.store.stat(&internal)?;
    if old.as_ref().is_some_and(|e| e.dir) {
        return Err(ApiError::Conflict("un dossier porte déjà ce nom".into()));
    }
    let room = room(app, user, old.as_ref())?;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let (Some(room), Some(len)) = (room, declared) {
        if len > room {
            return Err(ApiError::QuotaExceeded);
        }
    }
    let idle = app.config.limits.body_idle_timeout.0;
    let written = store_upload(app, user, &internal, room, body::stream(req.into_body(), idle)).await?;
    log::info!("{} wrote {} ({} bytes)", user.login, upath.segments.join("/"), written.entry.size);
    let status = if written.created { StatusCode::CREATED } else { StatusCode::NO_CONTENT };
    let mut resp = with_status(status, empty());
    if let Some(hash) = &written.entry.hash {
        set(&mut resp, header::ETAG, &format!("\"{hash}\""));
    }
    Ok(resp)
}

/// The one write path of the API's PUT and the portal's form: streams `chunks` into a blob limited to `room`,
/// then commits it as `internal`, charged to `user` (the quota is checked again at commit). Durable when
/// it returns.
pub async fn store_upload(
    app: &App,
    user: &User,
    internal: &[String],
    room: Option<u64>,
    chunks: impl Stream<Item = Result<bytes::Bytes, ApiError>>,
) -> Result<Written, ApiError> {
    let mut chunks = std::pin::pin!(chunks);
    let mut writer = app.store.blob_writer(room)?;
    while let Some(chunk) = chunks.next().await {
        writer.write(&chunk?).await?;
    }
    let staged = writer.finish().await?;
    let size = staged.size;
    let written = app.store.commit_file(internal, staged, &user.login, app.quota(user.role)).await?;
    app.metrics.uploads.inc();
    app.metrics.upload_bytes.add(size);
    Ok(written)
}

/// A single `bytes=` range, resolved against `size`. `Ok(None)` means "send the whole file" (no range,
/// several ranges, or a syntax we ignore as RFC 9110 allows).
pub(crate) fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let Ok(n) = suffix.parse::<u64>() else { return Ok(None) };
            if n == 0 || size == 0 {
                return Err(ApiError::RangeNotSatisfiable(size));
            }
            (size.saturating_sub(n), size - 1)
        }
        (first, last) => {
            let Ok(first) = first.parse::<u64>() else { return Ok(None) };
            let last = if last.is_empty() {
                size.saturating_sub(1)
            } else {
                match last.parse::<u64>() {
                    Ok(l) if l >= first => l.min(size.saturating_sub(1)),
                    _ => return Ok(None),
                }
            };
            if first >= size {
                return Err(ApiError::RangeNotSatisfiable(size));
            }
            (first, last)
        }
    };
    Ok(Some((start, end)))
}

fn etag_matches(header_value: &str, etag: &str) -> bool {
    header_value.split(',').map(str::trim).any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// Sends a file's content with validators and range support. HTML, SVG and XML are sent as attachments
/// and every file under a sandboxing CSP, so a pupil's upload cannot run script in the portal's origin.
pub async fn send_file(
    app: &App,
    headers: &HeaderMap,
    head: bool,
    entry: &Entry,
    name: Option<&String>,
) -> Result<Response, ApiError> {
    let hash = entry.blob().ok_or_else(|| ApiError::Internal("file entry without content hash".into()))?;
    let etag = format!("\"{}\"", hash.to_hex());
    let modified = UNIX_EPOCH + Duration::from_millis(entry.modified.max(0) as u64);
    let last_modified = httpdate::fmt_http_date(modified);
    let header_str = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());

    let not_modified = match (header_str(header::IF_NONE_MATCH), header_str(header::IF_MODIFIED_SINCE)) {
        (Some(inm), _) => etag_matches(inm, &etag),
        // HTTP dates have whole seconds: compare against the modification time truncated to the second.
        (None, Some(ims)) => httpdate::parse_http_date(ims)
            .is_ok_and(|since| since >= UNIX_EPOCH + Duration::from_secs(entry.modified.max(0) as u64 / 1000)),
        _ => false,
    };
    let mut resp;
    if not_modified {
        resp = with_status(StatusCode::NOT_MODIFIED, empty());
    } else {
        let size = entry.size;
        let if_range_ok = match header_str(header::IF_RANGE) {
            None => true,
            Some(v) => v == etag || v == last_modified,
        };
        let range = match header_str(header::RANGE) {
            Some(r) if if_range_ok => parse_range(r, size)?,
            _ => None,
        };
        let (status, start, len) = match range {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
            None => (StatusCode::OK, 0, size),
        };
        let body = if head || len == 0 {
            empty()
        } else {
            app.metrics.download_bytes.add(len);
            file_body(app, hash, start, len, size).await?
        };
        resp = with_status(status, body);
        set(&mut resp, header::CONTENT_LENGTH, &len.to_string());
        if status == StatusCode::PARTIAL_CONTENT {
            set(&mut resp, header::CONTENT_RANGE, &format!("bytes {start}-{}/{size}", start + len - 1));
        }
        let name = name.map(String::as_str).unwrap_or("fichier");
        let mime = mime_guess::from_path(name).first_or_octet_stream();
        let active = matches!(mime.subtype().as_str(), "html" | "xhtml+xml" | "svg+xml" | "xml");
        let content_type = if mime.type_() == "text" { format!("{mime}; charset=utf-8") } else { mime.to_string() };
        set(&mut resp, header::CONTENT_TYPE, if active { "application/octet-stream" } else { &content_type });
        let disposition = if active { "attachment" } else { "inline" };
        let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        set(&mut resp, header::CONTENT_DISPOSITION, &format!("{disposition}; filename*=UTF-8''{encoded}"));
        set(
            &mut resp,
            header::CONTENT_SECURITY_POLICY,
            "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'",
        );
    }
    set(&mut resp, header::ETAG, &etag);
    set(&mut resp, header::LAST_MODIFIED, &last_modified);
    set(&mut resp, header::ACCEPT_RANGES, "bytes");
    set(&mut resp, header::CACHE_CONTROL, "private, no-cache");
    Ok(resp)
}

/// A blob's bytes `start..start+len`. When the whole file is sent, its hash is checked on the way: a blob
/// damaged on disk is refused (small files) or its transfer cut before the end (large ones), so the client
/// never takes a corrupt file for a good one.
async fn file_body(
    app: &App,
    hash: crate::store::Hash,
    start: u64,
    len: u64,
    size: u64,
) -> Result<super::Body, ApiError> {
    let whole = start == 0 && len == size;
    if size <= SMALL_FILE {
        if let Some(bytes) = app.store.small_blobs.get(&hash) {
            return Ok(full(bytes.slice(start as usize..(start + len) as usize)));
        }
    }
    if len <= SMALL_FILE {
        // One hop to a blocking thread for open, seek and read together: per-call tokio::fs hops were most of
        // the cost of a small GET.
        let path = app.store.blob_path(hash);
        let buf = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Seek};
            let mut file = std::fs::File::open(&path)?;
            file.seek(std::io::SeekFrom::Start(start))?;
            let mut buf = Vec::with_capacity(len as usize);
            file.take(len).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("read blob {hash:?}: {e}")))?
        .map_err(|e| ApiError::Internal(format!("read blob {hash:?}: {e}")))?;
        if whole && blake3::hash(&buf).as_bytes() != &hash.0 || buf.len() as u64 != len {
            return Err(ApiError::Internal(format!("blob {hash:?} is damaged on disk")));
        }
        let buf = bytes::Bytes::from(buf);
        if whole {
            app.store.small_blobs.put(hash, buf.clone());
        }
        return Ok(full(buf));
    }
    let mut file = app.store.open_blob(hash).await?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::Internal(format!("seek in blob {hash:?}: {e}")))?;
    }
    let chunks = ReaderStream::with_capacity(file.take(len), STREAM_CHUNK);
    if !whole {
        return Ok(BodyExt::boxed(StreamBody::new(chunks.map_ok(Frame::data))));
    }
    // Each chunk is held back until the next one is read, so the last one goes out only once the hash of the
    // whole file checked out: with a Content-Length, a client that got every byte would take the file as good.
    let checked = futures_util::stream::unfold(
        (chunks, blake3::Hasher::new(), 0u64, None::<bytes::Bytes>, false),
        move |(mut chunks, mut hasher, mut read, mut pending, done)| async move {
            if done {
                return None;
            }
            loop {
                match chunks.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        read += chunk.len() as u64;
                        if let Some(previous) = pending.replace(chunk) {
                            return Some((Ok(Frame::data(previous)), (chunks, hasher, read, pending, false)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (chunks, hasher, read, None, true))),
                    None if read == len && hasher.finalize().as_bytes() == &hash.0 => {
                        return pending.map(|last| (Ok(Frame::data(last)), (chunks, hasher, read, None, true)));
                    }
                    None => return Some((Err(damaged(hash)), (chunks, hasher, read, None, true))),
                }
            }
        },
    );
    Ok(BodyExt::boxed(StreamBody::new(checked)))
}

fn damaged(hash: crate::store::Hash) -> std::io::Error {
    log::error!("blob {hash:?} is damaged on disk: transfer cut");
    std::io::Error::other(format!("blob {hash:?} is damaged"))
}

fn zip_folder(app: &App, upath: &UserPath, target: &Target, items: Vec<Item>) -> Result<Response, ApiError> {
    let internal = target.internal.as_deref().ok_or(ApiError::Forbidden)?;
    // The listing already filtered what this user may see (a teacher sees all hand-ins, a pupil their own);
    // the zip takes exactly those top-level names and everything below them.
    let mut files = Vec::new();
    for it in items {
        let mut child = internal.to_vec();
        child.push(it.name.clone());
        if it.dir {
            for (rel, entry) in app.store.walk_files(&child)? {
                files.push((format!("{}/{}", it.name, rel.join("/")), entry));
            }
        } else if let Some(entry) = app.store.stat(&child)? {
            files.push((it.name, entry));
        }
    }
    let name = upath.segments.last().map_or("fichiers", String::as_str);
    let parent = upath.segments.iter().rev().nth(1).map(String::as_str);
    let zip_name = match (name, parent) {
        ("rendus", Some(class)) => format!("rendus-{class}.zip"),
        (name, _) => format!("{name}.zip"),
    };
    let entries = files
        .into_iter()
        .filter_map(|(name, entry)| {
            let hash = entry.blob()?;
            Some(zipstream::Member {
                name,
                path: app.store.blob_path(hash),
                size: entry.size,
                modified_ms: entry.modified,
            })
        })
        .collect();
    let mut resp = with_status(StatusCode::OK, zipstream::stream(entries));
    set(&mut resp, header::CONTENT_TYPE, "application/zip");
    let encoded = percent_encoding::utf8_percent_encode(&zip_name, percent_encoding::NON_ALPHANUMERIC);
    set(&mut resp, header::CONTENT_DISPOSITION, &format!("attachment; filename*=UTF-8''{encoded}"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100).ok().flatten(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).ok().flatten(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).ok().flatten(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-500", 100).ok().flatten(), Some((0, 99)));
        assert_eq!(parse_range("bytes=50-500", 100).ok().flatten(), Some((50, 99)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100).ok().flatten(), None);
        assert_eq!(parse_range("lines=1-2", 100).ok().flatten(), None);
        assert!(matches!(parse_range("bytes=100-", 100), Err(ApiError::RangeNotSatisfiable(100))));
        assert!(matches!(parse_range("bytes=0-0", 0), Err(ApiError::RangeNotSatisfiable(0))));
    }

    #[test]
    fn etags_match_lists_and_wildcards() {
        assert!(etag_matches("\"a\", \"b\"", "\"b\""));
        assert!(etag_matches("*", "\"b\""));
        assert!(etag_matches("W/\"b\"", "\"b\""));
        assert!(!etag_matches("\"c\"", "\"b\""));
    }
}

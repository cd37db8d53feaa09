//! The tree one user sees, as dav-server's `DavFileSystem`: every call resolves the view path with the
//! portal's rules (`files::target`, `space::resolve`) and reads or writes the same store as `/api/files`, so
//! permissions, quotas, durability and replication are the portal's by construction.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, DavProp, FsError, FsFuture, FsResult, FsStream, OpenOptions,
    ReadDirMeta,
};
use futures_util::FutureExt;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::account::User;
use crate::app::App;
use crate::http::files::{self, Node};
use crate::http::ApiError;
use crate::path;
use crate::space::{Kind, Target};
use crate::store::props::{DeadProp, PropChange};
use crate::store::{BlobWriter, Entry, StoreError};

/// What one user sees: cloned per request (an `Arc` and the user record).
#[derive(Clone)]
pub struct UserFs {
    pub app: Arc<App>,
    pub user: User,
}

/// The view path of a dav-server path (percent-decoded, prefix stripped): each name checked and NFC-normalised
/// like the portal's, so Finder's decomposed accents name the same file as Windows' composed ones.
pub fn view(path: &DavPath) -> FsResult<Vec<String>> {
    let raw = std::str::from_utf8(path.as_bytes()).map_err(|_| FsError::Forbidden)?;
    let mut segments = Vec::new();
    for part in raw.split('/').filter(|s| !s.is_empty()) {
        segments.push(path::normalize_segment(part).map_err(|_| FsError::Forbidden)?);
    }
    if segments.len() > path::MAX_DEPTH || segments.iter().map(|s| s.len() + 1).sum::<usize>() > path::MAX_PATH {
        return Err(FsError::PathTooLong);
    }
    Ok(segments)
}

/// The status dav-server answers for one of our errors; the cause of a 500 goes to the log.
pub fn fs_error(e: ApiError) -> FsError {
    match e {
        ApiError::NotFound => FsError::NotFound,
        ApiError::Forbidden | ApiError::BadRequest(_) => FsError::Forbidden,
        ApiError::Conflict(_) => FsError::Exists,
        ApiError::QuotaExceeded | ApiError::DiskFull(_) => FsError::InsufficientStorage,
        ApiError::PayloadTooLarge => FsError::TooLarge,
        other => {
            log::error!("webdav: {other:?}");
            FsError::GeneralFailure
        }
    }
}

fn store_error(e: StoreError) -> FsError {
    match e {
        StoreError::NotADirectory | StoreError::IsADirectory => FsError::Forbidden,
        other => fs_error(other.into()),
    }
}

/// A file's or folder's metadata; virtual folders (`/`, `classes/`, a space not written yet) are folders of
/// date zero.
#[derive(Debug, Clone)]
pub struct Meta {
    dir: bool,
    size: u64,
    modified: i64,
    hash: Option<String>,
}

impl Meta {
    fn of(entry: &Entry) -> Meta {
        Meta { dir: entry.dir, size: entry.size, modified: entry.modified, hash: entry.hash.clone() }
    }

    fn folder() -> Meta {
        Meta { dir: true, size: 0, modified: 0, hash: None }
    }
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.size
    }

    fn modified(&self) -> FsResult<SystemTime> {
        Ok(UNIX_EPOCH + Duration::from_millis(self.modified.max(0) as u64))
    }

    fn is_dir(&self) -> bool {
        self.dir
    }

    /// The content hash, as `/api/files` sends it: the same file has the same ETag over both.
    fn etag(&self) -> Option<String> {
        match &self.hash {
            Some(h) => Some(h.clone()),
            None => Some(format!("d{:x}", self.modified.max(0))),
        }
    }
}

struct DirEntry {
    name: String,
    meta: Meta,
}

impl DavDirEntry for DirEntry {
    fn name(&self) -> Vec<u8> {
        self.name.clone().into_bytes()
    }

    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        Box::pin(async move { Ok(meta) })
    }
}

impl UserFs {
    /// The target of a path the user may at least read.
    fn readable(&self, path: &DavPath) -> FsResult<Target> {
        let (target, _) = files::target(&self.app, &self.user, &view(path)?).map_err(fs_error)?;
        if !target.read {
            return Err(FsError::Forbidden);
        }
        Ok(target)
    }

    /// The store path of a place the user may modify.
    fn writable(&self, path: &DavPath) -> FsResult<Vec<String>> {
        let (target, _) = files::target(&self.app, &self.user, &view(path)?).map_err(fs_error)?;
        files::writable(&target).map(<[String]>::to_vec).map_err(fs_error)
    }

    /// What stands at a readable target: its store record, or a virtual folder.
    fn stat(&self, target: &Target) -> FsResult<Meta> {
        let meta = match &target.internal {
            None => Meta::folder(),
            Some(internal) => match self.app.store.stat(internal).map_err(store_error)? {
                Some(entry) => Meta::of(&entry),
                None if target.kind == Kind::Inside => return Err(FsError::NotFound),
                None => Meta::folder(),
            },
        };
        Ok(if meta.dir { Meta { size: self.folder_len(), ..meta } } else { meta })
    }

    /// The size a folder reports: the user's usage. dav-server answers RFC 4331's `quota-used-bytes` of a
    /// folder with its size (and `quota-available-bytes` as the quota minus it), and no client reads a
    /// folder's size otherwise (`getcontentlength` is for files only).
    fn folder_len(&self) -> u64 {
        self.app.store.usage(&self.user.login).unwrap_or(0)
    }

    /// WebDAV creates nothing implicitly: a PUT, MKCOL, COPY or MOVE whose parent folder is missing is a 409.
    fn parent_exists(&self, path: &DavPath) -> FsResult<()> {
        let parent = path.parent();
        match self.readable(&parent).and_then(|t| self.stat(&t)) {
            Ok(meta) if meta.dir => Ok(()),
            Ok(_) | Err(FsError::NotFound) => Err(FsError::NotFound),
            Err(e) => Err(e),
        }
    }

    fn quota(&self) -> Option<u64> {
        self.app.quota(self.user.role)
    }
}

impl DavFileSystem for UserFs {
    fn open<'a>(&'a self, path: &'a DavPath, options: OpenOptions) -> FsFuture<'a, Box<dyn DavFile>> {
        async move {
            if !options.write {
                let target = self.readable(path)?;
                let meta = self.stat(&target)?;
                let hash = meta.hash.as_deref().and_then(crate::store::Hash::from_hex).ok_or(FsError::Forbidden)?;
                let file = self.app.store.open_blob(hash).await.map_err(store_error)?;
                return Ok(Box::new(ReadFile { file, meta }) as Box<dyn DavFile>);
            }
            if options.append {
                return Err(FsError::NotImplemented);
            }
            let internal = self.writable(path)?;
            let old = self.app.store.stat(&internal).map_err(store_error)?;
            match &old {
                Some(e) if e.dir => return Err(FsError::Forbidden),
                Some(_) if options.create_new => return Err(FsError::Exists),
                None if !options.create => return Err(FsError::NotFound),
                None => self.parent_exists(path)?,
                Some(_) => {}
            }
            let room = files::room(&self.app, &self.user, old.as_ref()).map_err(fs_error)?;
            if let (Some(room), Some(size)) = (room, options.size) {
                if size > room {
                    return Err(FsError::InsufficientStorage);
                }
            }
            let writer = self.app.store.blob_writer(room).map_err(store_error)?;
            Ok(Box::new(WriteFile {
                app: self.app.clone(),
                login: self.user.login.clone(),
                limit: self.quota(),
                internal,
                writer: Some(writer),
                written: None,
            }) as Box<dyn DavFile>)
        }
        .boxed()
    }

    fn read_dir<'a>(&'a self, path: &'a DavPath, _meta: ReadDirMeta) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let (target, family) = files::target(&self.app, &self.user, &view(path)?).map_err(fs_error)?;
            let items = match files::lookup(&self.app, &self.user, &target, &family).map_err(fs_error)? {
                Node::Folder(items) => items,
                Node::File(_) => return Err(FsError::Forbidden),
            };
            let folder_len = self.folder_len();
            let entries = items.into_iter().map(|item| {
                let meta = Meta {
                    dir: item.dir,
                    size: if item.dir { folder_len } else { item.size },
                    modified: item.modified_ms,
                    hash: item.etag.map(|e| e.trim_matches('"').to_string()),
                };
                Ok(Box::new(DirEntry { name: item.name, meta }) as Box<dyn DavDirEntry>)
            });
            Ok(Box::pin(futures_util::stream::iter(entries.collect::<Vec<_>>())) as FsStream<Box<dyn DavDirEntry>>)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let target = self.readable(path)?;
            Ok(Box::new(self.stat(&target)?) as Box<dyn DavMetaData>)
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let internal = self.writable(path)?;
            self.parent_exists(path)?;
            match self.app.store.mkdir(&internal, &self.user.login).await {
                Ok(_) => Ok(()),
                Err(StoreError::Exists | StoreError::NotADirectory) => Err(FsError::Exists),
                Err(e) => Err(store_error(e)),
            }
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let internal = self.writable(path)?;
            self.app.store.delete(&internal).await.map_err(store_error)?;
            log::info!("{} deleted {} (webdav)", self.user.login, internal.join("/"));
            Ok(())
        }
        .boxed()
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        self.remove_dir(path)
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let source = self.writable(from)?;
            let dest = self.writable(to)?;
            self.parent_exists(to)?;
            match self.app.store.rename(&source, &dest).await {
                Ok(()) => {
                    log::info!("{} moved {} to {} (webdav)", self.user.login, source.join("/"), dest.join("/"));
                    Ok(())
                }
                Err(StoreError::NotADirectory) => Err(FsError::Forbidden),
                Err(e) => Err(store_error(e)),
            }
        }
        .boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let source = self.readable(from)?.internal.ok_or(FsError::Forbidden)?;
            let dest = self.writable(to)?;
            self.parent_exists(to)?;
            self.app.store.copy_file(&source, &dest, &self.user.login, self.quota()).await.map_err(store_error)?;
            Ok(())
        }
        .boxed()
    }

    fn have_props<'a>(&'a self, _path: &'a DavPath) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(std::future::ready(true))
    }

    fn patch_props<'a>(
        &'a self,
        path: &'a DavPath,
        patch: Vec<(bool, DavProp)>,
    ) -> FsFuture<'a, Vec<(StatusCode, DavProp)>> {
        async move {
            let internal = match self.writable(path) {
                Ok(internal) => internal,
                Err(FsError::Forbidden) => {
                    return Ok(patch.into_iter().map(|(_, p)| (StatusCode::FORBIDDEN, p)).collect());
                }
                Err(e) => return Err(e),
            };
            let changes: Vec<PropChange> = patch
                .iter()
                .map(|(set, p)| {
                    let namespace = p.namespace.clone().unwrap_or_default();
                    if *set {
                        PropChange::Set(DeadProp {
                            namespace,
                            name: p.name.clone(),
                            prefix: p.prefix.clone(),
                            xml: p.xml.as_ref().map(|x| String::from_utf8_lossy(x).into_owned()),
                        })
                    } else {
                        PropChange::Remove { namespace, name: p.name.clone() }
                    }
                })
                .collect();
            let status = match self.app.store.patch_props(&internal, &changes).await {
                Ok(()) => StatusCode::OK,
                Err(StoreError::QuotaExceeded) => StatusCode::INSUFFICIENT_STORAGE,
                Err(e) => return Err(store_error(e)),
            };
            Ok(patch.into_iter().map(|(_, p)| (status, p)).collect())
        }
        .boxed()
    }

    fn get_props<'a>(&'a self, path: &'a DavPath, do_content: bool) -> FsFuture<'a, Vec<DavProp>> {
        async move {
            let Some(internal) = self.readable(path)?.internal else {
                return Ok(Vec::new());
            };
            let props = self.app.store.props(&internal).map_err(store_error)?;
            Ok(props
                .into_iter()
                .map(|p| DavProp {
                    name: p.name,
                    prefix: p.prefix,
                    namespace: Some(p.namespace),
                    xml: if do_content { p.xml.map(String::into_bytes) } else { None },
                })
                .collect())
        }
        .boxed()
    }

    fn get_prop<'a>(&'a self, path: &'a DavPath, prop: DavProp) -> FsFuture<'a, Vec<u8>> {
        async move {
            let internal = self.readable(path)?.internal.ok_or(FsError::NotFound)?;
            let namespace = prop.namespace.unwrap_or_default();
            self.app
                .store
                .props(&internal)
                .map_err(store_error)?
                .into_iter()
                .find(|p| p.namespace == namespace && p.name == prop.name)
                .map(|p| p.xml.unwrap_or_default().into_bytes())
                .ok_or(FsError::NotFound)
        }
        .boxed()
    }

    /// RFC 4331: the user's own quota, wherever they look (what they may still write is what the file
    /// manager should show); see `folder_len`.
    fn get_quota(&self) -> FsFuture<'_, (u64, Option<u64>)> {
        async move {
            let used = self.app.store.usage(&self.user.login).map_err(store_error)?;
            Ok((used, self.quota()))
        }
        .boxed()
    }
}

use std::future::Future;

/// A file opened for reading (dav-server reads through it only where our own GET does not serve).
#[derive(Debug)]
struct ReadFile {
    file: tokio::fs::File,
    meta: Meta,
}

impl DavFile for ReadFile {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta: Box<dyn DavMetaData> = Box::new(self.meta.clone());
        Box::pin(async move { Ok(meta) })
    }

    fn write_buf(&mut self, _buf: Box<dyn bytes::Buf + Send>) -> FsFuture<'_, ()> {
        Box::pin(std::future::ready(Err(FsError::Forbidden)))
    }

    fn write_bytes(&mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        Box::pin(std::future::ready(Err(FsError::Forbidden)))
    }

    fn read_bytes(&mut self, count: usize) -> FsFuture<'_, Bytes> {
        async move {
            let mut buf = vec![0u8; count];
            let mut filled = 0;
            while filled < count {
                let n = self.file.read(&mut buf[filled..]).await.map_err(|_| FsError::GeneralFailure)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            Ok(Bytes::from(buf))
        }
        .boxed()
    }

    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move { self.file.seek(pos).await.map_err(|_| FsError::GeneralFailure) }.boxed()
    }

    fn flush(&mut self) -> FsFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A PUT on its way: streamed into a blob limited to the user's room, committed at `flush` (the end of the
/// body) through the same path as the portal's uploads, so it is durable before dav-server answers 201/204.
struct WriteFile {
    app: Arc<App>,
    login: String,
    limit: Option<u64>,
    internal: Vec<String>,
    writer: Option<BlobWriter>,
    written: Option<Entry>,
}

impl std::fmt::Debug for WriteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFile").field("internal", &self.internal).finish_non_exhaustive()
    }
}

impl DavFile for WriteFile {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let meta = match &self.written {
            Some(entry) => Meta::of(entry),
            None => {
                Meta { dir: false, size: self.writer.as_ref().map_or(0, BlobWriter::size), modified: 0, hash: None }
            }
        };
        Box::pin(async move { Ok(Box::new(meta) as Box<dyn DavMetaData>) })
    }

    fn write_buf(&mut self, mut buf: Box<dyn bytes::Buf + Send>) -> FsFuture<'_, ()> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        self.write_bytes(bytes)
    }

    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        async move {
            let writer = self.writer.as_mut().ok_or(FsError::GeneralFailure)?;
            writer.write_bytes(buf).await.map_err(store_error)
        }
        .boxed()
    }

    fn read_bytes(&mut self, _count: usize) -> FsFuture<'_, Bytes> {
        Box::pin(std::future::ready(Err(FsError::Forbidden)))
    }

    /// Only "rewind to where we are" is possible: ranged PUTs (Content-Range) are refused.
    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        let here = self.writer.as_ref().map_or(0, BlobWriter::size);
        let ok = matches!(pos, SeekFrom::Start(n) if n == here) || matches!(pos, SeekFrom::Current(0));
        Box::pin(std::future::ready(if ok { Ok(here) } else { Err(FsError::NotImplemented) }))
    }

    fn flush(&mut self) -> FsFuture<'_, ()> {
        async move {
            let Some(writer) = self.writer.take() else {
                return Ok(());
            };
            let staged = writer.finish().await.map_err(store_error)?;
            let size = staged.size;
            let written = self
                .app
                .store
                .commit_file(&self.internal, staged, &self.login, self.limit)
                .await
                .map_err(store_error)?;
            self.app.metrics.uploads.inc();
            self.app.metrics.upload_bytes.add(size);
            log::info!("{} wrote {} ({size} bytes, webdav)", self.login, self.internal.join("/"));
            self.written = Some(written.entry);
            Ok(())
        }
        .boxed()
    }
}

//! The chunk index: which local blob holds each content-defined chunk, so a chunk any file here already has is
//! never asked of the peer, and can be served to it from the blob that holds it.
//!
//! `manifests` maps a blob to its chunk list (encoded [`Manifest`]); `chunks` maps a chunk to one place that
//! holds it (`blob hash | offset | length`). Entries are made when a blob is first sent or received, not at
//! upload time: uploads on the LAN never pay for chunking. A chunk whose blob has gone since is detected when
//! read (the blob is missing, or the bytes fail their hash) and treated as absent.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::{Hash, Store, StoreError};
use crate::sync::chunk::{ChunkStage, Manifest};

/// How long a content assembled from a peer's chunks is kept unreferenced across restarts, waiting for the
/// change that names it; past this it is an orphan (its change will not come), swept at a later start.
const AWAITING_CHANGE: std::time::Duration = std::time::Duration::from_secs(7 * 86400);

/// `blob (32) | offset (8, big endian) | length (4, big endian)`.
fn location(blob: Hash, offset: u64, len: u32) -> [u8; 44] {
    let mut out = [0u8; 44];
    out[..32].copy_from_slice(&blob.0);
    out[32..40].copy_from_slice(&offset.to_be_bytes());
    out[40..].copy_from_slice(&len.to_be_bytes());
    out
}

fn parse_location(bytes: &[u8]) -> Option<(Hash, u64, u32)> {
    let blob = <[u8; 32]>::try_from(bytes.get(..32)?).ok()?;
    let offset = u64::from_be_bytes(bytes.get(32..40)?.try_into().ok()?);
    let len = u32::from_be_bytes(bytes.get(40..44)?.try_into().ok()?);
    Some((Hash(blob), offset, len))
}

impl Store {
    /// Where received chunks wait for their file to be complete (`DATA/chunks/`).
    pub fn chunk_stage(&self) -> &ChunkStage {
        &self.stage
    }

    /// The chunk list of a local blob, from the index, else made now (reading the blob once) and indexed.
    pub async fn manifest(&self, blob: Hash) -> Result<Option<Manifest>, StoreError> {
        if let Some(bytes) = self.manifests.get(blob.0)? {
            if let Ok(manifest) = Manifest::decode(&bytes) {
                return Ok(Some(manifest));
            }
        }
        let path = self.blob_path(blob);
        if !path.is_file() {
            return Ok(None);
        }
        let made = tokio::task::spawn_blocking(move || Manifest::from_file(&path))
            .await
            .map_err(|e| StoreError::io(Path::new("chunking"), io::Error::other(e)))?
            .map_err(|e| StoreError::io(&self.blob_path(blob), e))?;
        if made.file != blob {
            // The blob's bytes are not what its name says: never offer them.
            return Err(StoreError::io(&self.blob_path(blob), io::Error::other("content does not match its hash")));
        }
        self.index(&made)?;
        Ok(Some(made))
    }

    /// Records where each chunk of a local blob lies.
    pub fn index(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for chunk in manifest.refs() {
            batch.insert(&chunk.hash.0, &location(manifest.file, chunk.offset, chunk.len)[..]);
        }
        self.chunks.apply_batch(batch)?;
        self.manifests.insert(manifest.file.0, manifest.encode())?;
        Ok(())
    }

    /// Whether some local blob holds `chunk` (per the index; the read checks it).
    pub fn has_chunk(&self, chunk: &Hash) -> bool {
        match self.chunks.get(chunk.0) {
            Ok(Some(loc)) => parse_location(&loc).is_some_and(|(blob, _, _)| self.has_blob(blob)),
            _ => false,
        }
    }

    /// A chunk's bytes from the local blob that holds it, checked against its hash; `None` if no blob does.
    pub fn local_chunk(&self, chunk: &Hash) -> io::Result<Option<Vec<u8>>> {
        local_chunk(&self.chunks, &self.blobs, chunk)
    }

    /// Whether an unreferenced blob is a content assembled from a peer's chunks whose change has not come yet:
    /// indexed (as every assembled content is), and assembled less than [`AWAITING_CHANGE`] ago. The sweep at
    /// start keeps it: a session pushes (or applies) a batch's changes only once every content of the batch is
    /// here, so on a thin line a content can wait hours for its change, and sweeping it at a restart meanwhile
    /// would make the peer send it all again.
    pub(super) fn awaits_its_change(&self, blob: Hash) -> Result<bool, StoreError> {
        if !self.manifests.contains_key(blob.0)? {
            return Ok(false);
        }
        let made = std::fs::metadata(self.blob_path(blob)).and_then(|m| m.modified());
        Ok(made.is_ok_and(|t| t.elapsed().unwrap_or_default() < AWAITING_CHANGE))
    }

    /// Builds the file `manifest` describes from staged and local chunks, checks it whole, installs it as a
    /// blob (no file points to it until a change does) and indexes it; its staged chunks are then dropped.
    pub async fn assemble(&self, manifest: &Manifest) -> Result<(), StoreError> {
        if self.has_blob(manifest.file) {
            return Ok(());
        }
        self.blobs.ensure_room(manifest.size)?;
        let (path, file) = self.scratch_file()?;
        let (stage, chunks, blobs) = (self.stage.clone(), self.chunks.clone(), self.blobs.clone());
        let (m, p) = (manifest.clone(), path.clone());
        let assembled = tokio::task::spawn_blocking(move || {
            let mut out = io::BufWriter::with_capacity(1 << 20, &file);
            stage.assemble(&m, &|h| local_chunk(&chunks, &blobs, h), &mut out)?;
            drop(out);
            file.sync_all().map_err(|e| StoreError::io(&p, e))
        })
        .await
        .map_err(|e| StoreError::io(Path::new("assembly"), io::Error::other(e)))
        .and_then(|r| r);
        if let Err(e) = assembled {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let staged = super::Staged::adopt(path, manifest.file, manifest.size);
        self.install_blob(staged).await?;
        self.index(manifest)?;
        for (chunk, _) in &manifest.chunks {
            let _ = self.stage.remove(chunk);
        }
        Ok(())
    }
}

fn local_chunk(chunks: &sled::Tree, blobs: &super::blob::BlobStore, chunk: &Hash) -> io::Result<Option<Vec<u8>>> {
    let Some(loc) = chunks.get(chunk.0).map_err(io::Error::other)? else { return Ok(None) };
    let Some((blob, offset, len)) = parse_location(&loc) else { return Ok(None) };
    let mut file = match File::open(blobs.path(blob)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = vec![0; len as usize];
    if file.read_exact(&mut bytes).is_err() || blake3::hash(&bytes).as_bytes() != &chunk.0 {
        return Ok(None);
    }
    Ok(Some(bytes))
}

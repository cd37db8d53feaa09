//! What the box and the gateway say to each other under `/sync/v1/` (HTTPS, mutual TLS: the gateway knows
//! the school from the box's certificate, never from the request).
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST hello` | [`Hello`]: the box's replica id and high-water marks | [`HelloReply`]: the region's |
//! | `POST push` | [`Push`]: changes the region lacks (their contents sent first) | [`PushReply`] |
//! | `POST pull` | [`Pull`]: the box's high-water marks | [`PullReply`]: changes the box lacks |
//! | `POST have` | [`Have`]: file hashes | [`Have`]: those the region holds already |
//! | `POST content` | a manifest (binary; a delta if `x-relais-base` names its base) | [`ContentReply`] |
//! | `POST contents` | many files at once, framed ([`frame`]: file hash, manifest) | [`OfferReply`] |
//! | `GET manifest/<hash>[?base=<hash>]` | | the manifest of a file offered by `pull` (binary) |
//! | `POST manifests` | [`ManifestAsk`]: files offered by `pull`, each with a base | their manifests, framed |
//! | `POST chunks` | [`ChunkList`] of chunks of manifests served to this box | those chunks, framed ([`frame`]) |
//! | `PUT chunks` | chunks, framed | 204 once each is staged |
//!
//! Chunks average 8 KiB: one request each would leave a 200 ms link idle most of the time, so they travel in
//! batches of about [`CHUNK_BATCH_BYTES`], several batches at once. Within a batch each chunk is framed
//! (`hash | length | bytes`) and staged as soon as it is whole, so a cut mid-batch keeps every complete chunk.
//!
//! Files go the same way: one `POST contents` offers the manifests of a whole batch of files (each answered
//! "installed", or with the chunks to send as position ranges), their missing chunks then share batches, and
//! a second `POST contents` naming the files without their manifests (the gateway kept them) assembles them.
//! A push of 300 small files thus costs a few round trips, not three per file. Pulling is alike: one
//! `POST manifests` for a group of files, then their missing chunks in shared batches.
//!
//! Every step is idempotent: a session cut anywhere is simply run again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::sync::Change;

pub const PREFIX: &str = "/sync/v1/";
/// Header of `POST content`: the base (hex) a delta manifest is relative to.
pub const BASE_HEADER: &str = "x-relais-base";
/// Largest JSON body of a sync request or answer: a batch of changes.
pub const MAX_JSON: usize = 16 << 20;
/// Changes per push or pull batch: small enough that a cut costs little, large enough to amortise the RTT.
pub const BATCH: usize = 500;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub replica: String,
    pub seen: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloReply {
    pub replica: String,
    pub uai: String,
    /// What the region holds of each writer, for this school.
    pub seen: BTreeMap<String, u64>,
    /// Changes waiting for the box, and the bytes of their contents (counted up to a bound).
    pub backlog_changes: u64,
    pub backlog_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Push {
    pub changes: Vec<Change>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PushReply {
    pub applied: usize,
    pub known: usize,
    pub conflicts: usize,
    pub refused: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pull {
    pub seen: BTreeMap<String, u64>,
    pub limit: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PullReply {
    pub changes: Vec<Change>,
    pub more: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Have {
    /// Hex hashes of whole files.
    pub files: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ContentReply {
    /// The file is assembled and checked at the region.
    pub installed: bool,
    /// Chunks (hex) to upload before asking again.
    pub missing: Vec<String>,
    /// The delta's base is not known there: send the whole manifest.
    pub base_unknown: bool,
}

/// One file's answer to `POST contents`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The file is assembled and checked at the region.
    #[serde(default, skip_serializing_if = "is_false")]
    pub installed: bool,
    /// The delta's base is not known there: send the whole manifest.
    #[serde(default, skip_serializing_if = "is_false")]
    pub base_unknown: bool,
    /// The file was named without its manifest, and the gateway no longer holds the one offered before.
    #[serde(default, skip_serializing_if = "is_false")]
    pub manifest_unknown: bool,
    /// Chunks to upload before offering again: `[start, end)` ranges of positions in the manifest, each
    /// distinct chunk named once (at its first position).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<[u32; 2]>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OfferReply {
    /// One answer per file, in the order of the request.
    pub files: Vec<Offer>,
}

/// Files whose manifests the box wants (`POST manifests`), each as a delta against its base when the gateway
/// holds that base too; the answer frames each manifest (whole or delta, told by its first byte) under the
/// file's hash, in the order asked.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ManifestAsk {
    pub files: Vec<Wanted>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Wanted {
    /// Hex hash of the file.
    pub file: String,
    /// Hex hash of the box's content at that path, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// Bytes of manifests per `POST contents`: a few hundred typical files, a second of the line at most.
pub const OFFER_BATCH_BYTES: usize = 256 << 10;
/// Files per `POST contents` or `POST manifests`.
pub const OFFER_BATCH_COUNT: usize = 1000;

/// `[start, end)` ranges covering the positions `positions` (ascending).
pub fn ranges(positions: impl IntoIterator<Item = u32>) -> Vec<[u32; 2]> {
    let mut out: Vec<[u32; 2]> = Vec::new();
    for p in positions {
        match out.last_mut() {
            Some(last) if last[1] == p => last[1] = p + 1,
            _ => out.push([p, p + 1]),
        }
    }
    out
}

/// Bytes of chunks per batch request: about a second of a 2 Mbit/s line, so a cut costs little and a few
/// batches in flight keep a 200 ms link full.
pub const CHUNK_BATCH_BYTES: usize = 256 << 10;
/// Chunks per batch request, whatever their size.
pub const CHUNK_BATCH_COUNT: usize = 128;
/// Bytes before each framed chunk: its blake3 (32) and its length (4, big endian).
pub const FRAME_HEADER: usize = 36;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChunkList {
    /// Hex hashes.
    pub chunks: Vec<String>,
}

/// Appends one framed chunk to `out`.
pub fn frame(out: &mut Vec<u8>, hash: &crate::store::Hash, bytes: &[u8]) {
    out.extend_from_slice(&hash.0);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Takes the complete framed chunks off the front of `buf`, leaving a partial one; `Err` on a frame
/// longer than `max`.
pub fn unframe(buf: &mut Vec<u8>, max: usize) -> Result<Vec<(crate::store::Hash, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= FRAME_HEADER {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&buf[at..at + 32]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&buf[at + 32..at + 36]);
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(format!("a framed chunk of {len} bytes (at most {max})"));
        }
        if buf.len() - at - FRAME_HEADER < len {
            break;
        }
        let start = at + FRAME_HEADER;
        out.push((crate::store::Hash(hash), buf[start..start + len].to_vec()));
        at = start + len;
    }
    buf.drain(..at);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Hash;

    #[test]
    fn positions_become_ranges() {
        assert_eq!(ranges([]), Vec::<[u32; 2]>::new());
        assert_eq!(ranges([0, 1, 2, 5, 7, 8]), vec![[0, 3], [5, 6], [7, 9]]);
        let offer = Offer { missing: ranges([3]), ..Offer::default() };
        assert_eq!(serde_json::to_string(&offer).expect("json"), r#"{"missing":[[3,4]]}"#);
        assert_eq!(serde_json::from_str::<Offer>("{}").expect("json"), Offer::default());
    }

    #[test]
    fn frames_come_apart_whole_whatever_the_cut() {
        let chunks: Vec<(Hash, Vec<u8>)> = (0..5u8).map(|i| (Hash([i; 32]), vec![i; 100 * usize::from(i)])).collect();
        let mut wire = Vec::new();
        for (h, b) in &chunks {
            frame(&mut wire, h, b);
        }
        for step in [1, 7, 36, 137, wire.len()] {
            let (mut buf, mut got) = (Vec::new(), Vec::new());
            for piece in wire.chunks(step) {
                buf.extend_from_slice(piece);
                got.extend(unframe(&mut buf, 1000).expect("frames"));
            }
            assert_eq!(got, chunks, "read {step} bytes at a time");
            assert!(buf.is_empty());
        }
        let mut big = Vec::new();
        frame(&mut big, &Hash([9; 32]), &[0; 2000]);
        assert!(unframe(&mut big, 1000).is_err());
    }
}

//! What the box and the gateway say to each other under `/sync/v1/` (HTTPS, mutual TLS: the gateway knows
//! the school from the box's certificate, never from the request).
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST hello` | [`Hello`]: the box's replica id and high-water marks | [`HelloReply`]: the region's |
//! | `POST push` | [`Push`]: changes the region lacks (their contents sent first) | [`PushReply`] |
//! | `POST pull` | [`Pull`]: the box's high-water marks | [`PullReply`]: changes the box lacks |
//! | `POST content` | a manifest (binary; a delta if `x-relais-base` names its base) | [`ContentReply`] |
//! | `PUT chunk/<hash>` | the chunk's bytes | 204 |
//! | `GET manifest/<hash>[?base=<hash>]` | | the manifest of a file offered by `pull` (binary) |
//! | `GET chunk/<hash>` | | the bytes of a chunk of a manifest served to this box |
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
pub struct ContentReply {
    /// The file is assembled and checked at the region.
    pub installed: bool,
    /// Chunks (hex) to upload before asking again.
    pub missing: Vec<String>,
    /// The delta's base is not known there: send the whole manifest.
    pub base_unknown: bool,
}

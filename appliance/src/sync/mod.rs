//! Replication between the box and the region.

pub mod chunk;
pub mod protocol;

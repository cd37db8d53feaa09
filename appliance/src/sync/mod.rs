//! Replication between the box and the region.

pub mod chunk;
pub mod client;
pub mod protocol;
pub mod session;
pub mod worker;

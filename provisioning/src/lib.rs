//! Trust for the box and the regional gateway: the regional CA, box enrollment (EST-like), provisioning
//! bundles, and backup and restore archives.
//!
//! Empty until the trust issue lands: the crate exists now so the workspace has its final shape and the
//! appliance can depend on it without a layout change.

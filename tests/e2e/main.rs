//! End-to-end tests: the real `relais` binary on loopback, driven over HTTP. This file is the table of contents.
//!
//! Each test starts its own server (ephemeral port, temp data folder) and kills it on drop, so tests run in
//! parallel and leave nothing behind. Run with `cargo test --test e2e -- --test-threads=2`.

/// Starting, restarting and killing the server; HTTP clients; raw sockets; deterministic content.
mod util;

/// Login, sessions, cookies, throttling, admin-only endpoints, the data-folder lock, the first admin password.
mod auth;
/// Backup while uploads run and restore under a new replica id; damaged backups; status; factory reset.
mod backup;
/// The LAN cache (issue 6): RFC 9111 freshness and validation, private content, Vary, ranges, one origin
/// request for many clients, restarts, the origin down or lying, damaged entries, the disk budget, the forward
/// proxy and CONNECT, HTTPS upstreams, prefetch.
mod cache;
/// Crash safety: SIGKILL during uploads, many times over; every acknowledged upload survives.
mod crash;
/// Revocation lists: the gateway's at the URLs its certificates name, a revocation published at once, and the
/// box's copy of the LAN list served on the school LAN, uplink or not.
mod crl;
/// WebDAV on `/dav/` (issue 8): the portal's permissions and quotas, one tree with `/api/files`, PROPFIND,
/// MOVE/COPY, locks, Basic authentication under the login throttle, and the litmus suites.
mod dav;
/// Directory imports: ONDE, AAF and CSV exports over HTTP and the CLI, refusals, moves, leavers, undo, activation.
mod directory;
/// Upload and download, ranges, ETags, listings, mkdir and delete, quotas, dedup, restarts, Unicode names, zip.
mod files;
/// Hostile paths and requests: traversal, control characters, huge headers, over-quota and stalling clients.
mod hostile;
/// LAN HTTPS: the self-signed and the LAN certificate, renewal without restart, refused old protocols,
/// `/ca.crt` and the plain-HTTP redirect listener.
mod lan_tls;
/// Health check, metrics, SIGTERM/SIGINT and draining.
mod lifecycle;
/// The emulated rural link (`tests/link/`): box and gateway in network namespaces, cuts and restores.
mod link;
/// Servers inside a link's network namespace, reached from the test through a forwarder.
mod netns;
/// A programmable origin server (plain HTTP or TLS from a test CA) for the cache tests: routes, faults, holds,
/// counters, stopped and started again on the same port.
mod origin;
/// Who may read and write where: one table over the five roles and the four kinds of space.
mod permissions;
/// Replication between a real box and a real gateway: both ways, conflicts, isolation between schools.
mod replication;
/// Replication under faults: box or gateway SIGKILLed mid-session, a full disk at the region, resumption cost.
mod replication_faults;
/// Replication across the emulated rural line: convergence, and cuts that lose nothing and re-send little.
mod rural;
/// Provisioning bundles refused whole or applied all at once; enrollment, renewal and revocation with the region.
mod trust;

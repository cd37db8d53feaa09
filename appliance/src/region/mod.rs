//! The regional gateway: its certificate authority on disk, the HTTPS server with client certificates, and
//! the enrollment endpoints (EST, RFC 7030, in a JSON flavour).

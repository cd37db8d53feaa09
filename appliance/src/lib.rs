//! Relais: the school box of a French ENT. This library holds everything; `main.rs` only wires it.

pub mod account;
pub mod app;
pub mod backup;
pub mod cache;
pub mod cli;
pub mod command;
pub mod control;
pub mod directory;
pub mod enroll;
pub mod http;
pub mod lan_tls;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod redirect;
pub mod region;
pub mod reset;
pub mod server;
pub mod session;
pub mod space;
pub mod status;
pub mod store;
pub mod sync;
pub mod throttle;
pub mod uplink;

use std::path::Path;

/// The configuration file `relais provision apply` writes into the data folder; `serve` reads it when no
/// `--config` is given.
pub const PROVISIONED_CONFIG: &str = "relais.toml";

use firmware_config::{Config, ConfigError};

/// Loads the configuration file if one is given, else the embedded defaults.
pub fn load_config(file: Option<&Path>) -> Result<Config, ConfigError> {
    match file {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    }
}

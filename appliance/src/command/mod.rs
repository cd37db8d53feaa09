//! The technician commands behind `relais …`. Each returns `Err(Failure)` with the exit code and the message
//! for the technician; `main` prints it and exits with that code (0 ok, 1 runtime failure, 2 bad input).

pub mod config;
pub mod import;
pub mod serve;

use std::fmt;

#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Bad usage or bad input: exit code 2.
    pub fn input(message: impl fmt::Display) -> Failure {
        Failure { code: 2, message: message.to_string() }
    }

    /// Something failed while running: exit code 1.
    pub fn runtime(message: impl fmt::Display) -> Failure {
        Failure { code: 1, message: message.to_string() }
    }
}

pub type Outcome = Result<(), Failure>;

/// Loads the configuration and applies the `--data` override common to every command.
pub fn effective_config(
    file: Option<&std::path::Path>,
    data: Option<std::path::PathBuf>,
) -> Result<firmware_config::Config, Failure> {
    let mut config = crate::load_config(file).map_err(Failure::input)?;
    if let Some(data) = data {
        config.storage.data = data;
    }
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(Failure::runtime)
}

//! `relais`: parses the command line and runs the command. Exit codes: 0 ok, 1 runtime failure, 2 bad usage
//! or bad input (the message names the file, line or field).

use std::process::ExitCode;

use clap::Parser;
use relais::cli::{Cli, Command, ConfigAction, ProvisionAction};
use relais::command;

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Serve(args) => command::serve::run(args),
        Command::Import(args) => command::import::run(args),
        Command::Config { action: ConfigAction::Check { file } } => command::config::check(&file),
        Command::Config { action: ConfigAction::Show { config } } => command::config::show(config.as_deref()),
        Command::Region { action } => command::region::run(action),
        Command::Provision { action: ProvisionAction::Apply { file, data, force_reset } } => {
            command::provision::apply(&file, data, force_reset)
        }
        Command::Status { folder, json } => command::status::run(folder, json),
        Command::Backup { folder, out } => command::backup::backup(folder, &out),
        Command::Restore { file, folder } => command::backup::restore(&file, folder),
        Command::Reset { factory: _, folder, yes } => command::reset::factory(folder, yes),
    };
    relais::logging::flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("relais: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

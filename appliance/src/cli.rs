//! The command line technicians type.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "relais", version, about = "Relais : le serveur ENT de l'école / the school's ENT box")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the school box: the LAN portal and file storage.
    Serve(ServeArgs),
    /// Check or show the box configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); without it every setting takes its default.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data folder (overrides `storage.data`; default ./relais-data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Portal address (overrides `lan.listen`; default 127.0.0.1:8080; port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate a configuration file; exits 2 and names the bad key if it is wrong.
    Check { file: PathBuf },
    /// Print the effective configuration, every default filled in.
    Show {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

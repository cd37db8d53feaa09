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
    /// Import the school's people from the national exports (ONDE, AAF, CSV), all or nothing.
    Import(ImportArgs),
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

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Export files: ONDE CSVExtraction-*.csv, AAF ENT_*.xml, a generic CSV, or zips of them.
    pub files: Vec<PathBuf>,
    /// Put the directory back as it was before the last import.
    #[arg(long, conflicts_with = "files")]
    pub undo: bool,
    /// Data folder of a stopped box (default from the configuration: ./relais-data).
    #[arg(long, conflicts_with = "url")]
    pub data: Option<PathBuf>,
    /// Portal of a running box, e.g. http://127.0.0.1:8080 (admin password in RELAIS_ADMIN_PASSWORD).
    #[arg(long)]
    pub url: Option<String>,
    /// Configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
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

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
    /// The regional gateway: its certificate authority, provisioning bundles, revocation, the server.
    Region {
        #[command(subcommand)]
        action: RegionAction,
    },
    /// Set up a box from a provisioning bundle (USB stick), with the daemon stopped.
    Provision {
        #[command(subcommand)]
        action: ProvisionAction,
    },
    /// What a technician needs to know: school, enrollment and certificate expiry, uplink, disk, backlog.
    Status {
        #[command(flatten)]
        folder: FolderArgs,
        /// Print the status as JSON (the same document as GET /api/admin/status).
        #[arg(long)]
        json: bool,
    },
    /// Write a backup of the box (accounts, files, configuration) into one zip, while it serves or stopped.
    Backup {
        #[command(flatten)]
        folder: FolderArgs,
        /// The backup file to write (a .zip; replaced atomically if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into a new or empty data folder, all or nothing; the box gets a new replica id.
    Restore {
        /// The backup file (.zip) written by `relais backup`.
        file: PathBuf,
        #[command(flatten)]
        folder: FolderArgs,
    },
    /// Erase the box: every file, account, the configuration and the identity (daemon stopped).
    Reset {
        /// Required: this is the factory reset.
        #[arg(long, required = true)]
        factory: bool,
        #[command(flatten)]
        folder: FolderArgs,
        /// Do not ask for confirmation (scripts).
        #[arg(long)]
        yes: bool,
    },
}

/// Which box a technician command is about.
#[derive(Debug, clap::Args)]
pub struct FolderArgs {
    /// Data folder (default from the configuration: ./relais-data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RegionAction {
    /// Create the regional CA (root, box and LAN intermediates, the gateway's certificate) in DIR/ca.
    Init {
        #[arg(long)]
        data: PathBuf,
        /// DNS names and IP addresses the gateway answers on (repeat the flag); default: localhost, 127.0.0.1, ::1.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Where the gateway publishes its revocation lists, http://HOST[:PORT][/PATH] (plain HTTP, written into
        /// every certificate; serve it with `[lan] http_redirect`); default: http://<first --host>.
        #[arg(long = "crl-url")]
        crl_url: Option<String>,
    },
    /// Run the regional gateway: HTTPS portal for users at home, enrollment (EST) for boxes.
    Serve(ServeArgs),
    /// Write a provisioning bundle for one school's box.
    Bundle(BundleArgs),
    /// Revoke a box's certificates: it is refused at its next connection.
    Revoke {
        #[arg(long)]
        data: PathBuf,
        /// Every certificate of this school's box.
        #[arg(long, required_unless_present = "serial", conflicts_with = "serial")]
        uai: Option<String>,
        /// One certificate, by serial number (hex).
        #[arg(long)]
        serial: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    #[arg(long)]
    pub data: PathBuf,
    /// The school's UAI (7 digits and a letter).
    #[arg(long)]
    pub uai: String,
    /// The school's name, as its portal shows it.
    #[arg(long)]
    pub name: String,
    /// The gateway's address as the box will reach it, https://HOST:PORT.
    #[arg(long)]
    pub url: String,
    /// Where to write the bundle (a .zip for the USB stick).
    #[arg(long)]
    pub out: PathBuf,
    /// Directory exports (ONDE, AAF, CSV) to carry to the box and import there.
    #[arg(long, num_args = 1..)]
    pub directory: Vec<PathBuf>,
    /// Configuration file of the region (certificate and token validity).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ProvisionAction {
    /// Check a bundle whole, then write the box's configuration, identity key and directory.
    Apply {
        /// The provisioning bundle (.zip) from the region.
        file: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
        /// Accept a bundle for another school or region on an already provisioned box: wipes its identity, and
        /// for another school (UAI) also its files and accounts.
        #[arg(long)]
        force_reset: bool,
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

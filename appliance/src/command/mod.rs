//! The technician commands behind `relais …`. Each returns `Err(Failure)` with the exit code and the message
//! for the technician; `main` prints it and exits with that code (0 ok, 1 runtime failure, 2 bad input).

pub mod backup;
pub mod config;
pub mod import;
pub mod provision;
pub mod region;
pub mod reset;
pub mod serve;
pub mod status;

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

/// The configuration a command runs with: `--config FILE` if given, else the `relais.toml` a provisioning
/// bundle wrote into the data folder, else the embedded defaults; then the `--data` override.
pub fn effective_config(
    file: Option<&std::path::Path>,
    data: Option<std::path::PathBuf>,
) -> Result<firmware_config::Config, Failure> {
    let folder = data.clone().unwrap_or_else(|| firmware_config::Storage::default().data);
    let provisioned = folder.join(crate::PROVISIONED_CONFIG);
    let file = file.map(std::path::Path::to_path_buf).or_else(|| provisioned.is_file().then_some(provisioned));
    let mut config = crate::load_config(file.as_deref()).map_err(Failure::input)?;
    if let Some(data) = data {
        config.storage.data = data;
    }
    Ok(config)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Runtime::new().map_err(Failure::runtime)
}

/// The daemons' runtime, sized by `[hardware]` (its profile's worker and blocking-thread counts).
fn daemon_runtime(hardware: &firmware_config::Hardware) -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(hardware.workers as usize)
        .max_blocking_threads(hardware.blocking_threads as usize)
        .enable_all()
        .build()
        .map_err(Failure::runtime)
}

/// What both daemons (the box and the gateway) do before serving: the configuration with the command-line
/// overrides, logging, and the data folder's lock (held as long as the returned guard lives).
pub fn daemon(
    args: crate::cli::ServeArgs,
) -> Result<(firmware_config::Config, std::path::PathBuf, crate::store::DataLock), Failure> {
    use crate::store::{DataLock, LockError};
    let mut config = effective_config(args.config.as_deref(), args.data)?;
    if let Some(listen) = args.listen {
        config.lan.listen = listen;
    }
    crate::logging::init(&config.logging.level);
    let data = config.storage.data.clone();
    let lock = DataLock::acquire(&data).map_err(|e| match e {
        LockError::Busy { .. } => Failure::input(e),
        LockError::Io { .. } => Failure::runtime(e),
    })?;
    // A factory reset cut by a power loss left the erased data aside: finish erasing it.
    crate::reset::remove_aside(&data).map_err(|e| Failure::runtime(format!("{}: {e}", data.display())))?;
    Ok((config, data, lock))
}

/// Binds the portal's listener and installs the shutdown signals, then tells the technician (and tests)
/// where it listens: `admin password …` when one was made up, then `listening on SCHEME://ADDR`.
pub async fn listen(
    app: &crate::app::App,
    scheme: &str,
    admin_password: Option<String>,
) -> Result<(tokio::net::TcpListener, impl std::future::Future<Output = ()>), Failure> {
    let listener = tokio::net::TcpListener::bind(app.config.lan.listen)
        .await
        .map_err(|e| Failure::runtime(format!("cannot listen on {}: {e}", app.config.lan.listen)))?;
    let addr = listener.local_addr().map_err(Failure::runtime)?;
    let shutdown = crate::server::shutdown_signal().map_err(Failure::runtime)?;
    if let Some(password) = admin_password {
        println!("admin password (shown once, write it down): {password}");
    }
    println!("listening on {scheme}://{addr}");
    log::info!("listening on {scheme}://{addr}, data in {}", app.config.storage.data.display());
    Ok((listener, shutdown))
}

/// Opens the store of a stopped box for a technician command, holding the folder's lock.
pub fn open_stopped(data: &std::path::Path) -> Result<(crate::store::DataLock, crate::store::Store), Failure> {
    use crate::store::{DataLock, LockError, Store};
    if !data.join("meta").exists() {
        return Err(Failure::input(format!(
            "{} holds no relais data: start the box once (relais serve) or restore a backup into it",
            data.display()
        )));
    }
    let lock = DataLock::acquire(data).map_err(|e| match e {
        LockError::Busy { .. } => Failure::runtime(format!(
            "{e}; its control socket {} does not answer",
            crate::control::socket_path(data).display()
        )),
        LockError::Io { .. } => Failure::runtime(e),
    })?;
    let store = Store::open(data).map_err(|e| Failure::runtime(format!("{}: {e}", data.display())))?;
    Ok((lock, store))
}

/// Serves the control socket beside the portal until `stop` turns true; a failure to bind it is logged, not
/// fatal: the portal matters more than the technician's shortcut.
pub fn spawn_control(
    app: &std::sync::Arc<crate::app::App>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let app = app.clone();
    let bound = crate::control::bind(&app.config.storage.data);
    tokio::spawn(async move {
        let served = match bound {
            Ok(listener) => crate::control::serve(app, listener, stop).await,
            Err(e) => Err(e),
        };
        if let Err(e) = served {
            log::warn!("control socket unavailable ({e}); relais status and backup will not reach this daemon");
        }
    })
}

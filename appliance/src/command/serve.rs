//! `relais serve`: the school box.

use crate::app::App;
use crate::cli::ServeArgs;
use crate::store::{DataLock, LockError};
use crate::{logging, server};

use super::{effective_config, Failure, Outcome};

pub fn run(args: ServeArgs) -> Outcome {
    let mut config = effective_config(args.config.as_deref(), args.data)?;
    if let Some(listen) = args.listen {
        config.lan.listen = listen;
    }
    logging::init(&config.logging.level);
    let data = config.storage.data.clone();
    let _lock = DataLock::acquire(&data).map_err(|e| match e {
        LockError::Busy { .. } => Failure::input(e),
        LockError::Io { .. } => Failure::runtime(e),
    })?;
    super::runtime()?.block_on(async {
        let (app, admin_password) =
            App::open(config, &data).await.map_err(|e| Failure::runtime(format!("{}: {e}", data.display())))?;
        let listener = tokio::net::TcpListener::bind(app.config.lan.listen)
            .await
            .map_err(|e| Failure::runtime(format!("cannot listen on {}: {e}", app.config.lan.listen)))?;
        let addr = listener.local_addr().map_err(Failure::runtime)?;
        let shutdown = server::shutdown_signal().map_err(Failure::runtime)?;
        if let Some(password) = admin_password {
            println!("admin password (shown once, write it down): {password}");
        }
        println!("listening on http://{addr}");
        log::info!("portal on http://{addr}, data in {}", data.display());
        // Enrollment and renewal with the regional gateway, beside the portal; stopped once the server is.
        let (stop_enroll, enroll_stopped) = tokio::sync::watch::channel(false);
        let _enroll = crate::enroll::spawn(&app.config, enroll_stopped);
        let served = server::run(app, listener, server::Transport::Plain, shutdown).await;
        let _ = stop_enroll.send(true);
        served.map_err(Failure::runtime)
    })
}

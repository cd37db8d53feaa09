//! `relais serve`: the school box.

use crate::app::App;
use crate::cli::ServeArgs;
use crate::server;

use super::{Failure, Outcome};

pub fn run(args: ServeArgs) -> Outcome {
    let (config, data, _lock) = super::daemon(args)?;
    super::runtime()?.block_on(async {
        let (app, admin_password) =
            App::open(config, &data).await.map_err(|e| Failure::runtime(format!("{}: {e}", data.display())))?;
        let (listener, shutdown) = super::listen(&app, "http", admin_password).await?;
        // Enrollment and renewal with the regional gateway, beside the portal; stopped once the server is.
        let (stop_enroll, enroll_stopped) = tokio::sync::watch::channel(false);
        let _enroll = crate::enroll::spawn(&app.config, enroll_stopped);
        let served = server::run(app, listener, server::Transport::Plain, shutdown).await;
        let _ = stop_enroll.send(true);
        served.map_err(Failure::runtime)
    })
}

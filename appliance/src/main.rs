//! `relais`: parses the command line, loads the configuration, sets up logging, takes the data folder's lock,
//! binds the portal and hands over to `server::run`. Exit codes: 0 ok, 1 runtime failure, 2 bad usage/input.

use std::process::ExitCode;

use clap::Parser;
use relais::cli::{Cli, Command, ConfigAction, ServeArgs};
use relais::{app::App, load_config, logging, server, store::DataLock};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Config { action: ConfigAction::Check { file } } => match load_config(Some(&file)) {
            Ok(_) => {
                println!("{}: configuration valide", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, e),
        },
        Command::Config { action: ConfigAction::Show { config } } => match load_config(config.as_deref()) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, e),
        },
    }
}

fn fail(code: u8, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("relais: {e}");
    ExitCode::from(code)
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail(2, e),
    };
    if let Some(data) = args.data {
        config.storage.data = data;
    }
    if let Some(listen) = args.listen {
        config.lan.listen = listen;
    }
    logging::init(&config.logging.level);
    let data = config.storage.data.clone();
    let _lock = match DataLock::acquire(&data) {
        Ok(lock) => lock,
        Err(e @ relais::store::LockError::Busy { .. }) => return fail(2, e),
        Err(e) => return fail(1, e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(1, e),
    };
    let result = runtime.block_on(async {
        let (app, admin_password) = App::open(config, &data).await.map_err(|e| format!("{}: {e}", data.display()))?;
        let listener = tokio::net::TcpListener::bind(app.config.lan.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", app.config.lan.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        if let Some(password) = admin_password {
            println!("admin password (shown once, write it down): {password}");
        }
        println!("listening on http://{addr}");
        log::info!("portal on http://{addr}, data in {}", data.display());
        server::run(app, listener, server::shutdown_signal()).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}

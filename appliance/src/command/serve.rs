//! `relais serve`: the school box.

use crate::app::App;
use crate::cli::ServeArgs;
use crate::redirect;
use crate::server;

use super::{Failure, Outcome};

pub fn run(args: ServeArgs) -> Outcome {
    let (config, data, _lock) = super::daemon(args)?;
    let transport = crate::lan_tls::transport(&config, &data).map_err(Failure::runtime)?;
    let tls = matches!(transport, server::Transport::Tls(_));
    super::daemon_runtime(&config.hardware)?.block_on(async {
        let (app, admin_password) =
            App::open(config, &data).await.map_err(|e| Failure::runtime(format!("{}: {e}", data.display())))?;
        let redirect = redirect::bind(&app.config.lan, tls).await.map_err(Failure::runtime)?;
        // Workers stop once the server has; technician commands (status, backup) reach the daemon through its
        // control socket, bound before the daemon says it listens.
        let (stop_enroll, enroll_stopped) = tokio::sync::watch::channel(false);
        let control = super::spawn_control(&app, enroll_stopped.clone());
        let (listener, shutdown) = super::listen(&app, if tls { "https" } else { "http" }, admin_password).await?;
        let shutdown = server::Shutdown::spawn(shutdown);
        let redirecting = match redirect {
            Some(redirect) => {
                let https_port = listener.local_addr().map_err(Failure::runtime)?.port();
                let (addr, task) =
                    redirect::spawn(app.clone(), redirect, https_port, shutdown.clone()).map_err(Failure::runtime)?;
                println!("redirecting http://{addr}");
                Some(task)
            }
            None => None,
        };
        // Enrollment and renewal with the regional gateway, beside the portal.
        let enroll = crate::enroll::spawn(&app.config, enroll_stopped.clone());
        if let Some(worker) = &enroll {
            let _ = app.enroll.set(worker.handle.clone());
        }
        // Replication with the region, once enrolled; nothing on the LAN waits for it.
        let sync = crate::sync::worker::spawn(&app, enroll_stopped.clone());
        if let Some((handle, _)) = &sync {
            let _ = app.sync.set(handle.clone());
        }
        // The LAN cache's forward proxy for the school's PCs, and its prefetcher.
        let proxy = match (&app.cache, app.config.cache.proxy_address(app.config.lan.listen)) {
            (Some(cache), Some(addr)) => match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let bound = listener.local_addr().map_err(Failure::runtime)?;
                    let _ = app.proxy_addr.set(bound);
                    println!("proxy http://{bound}");
                    let stopped = shutdown.clone();
                    let limits = app.config.limits.clone();
                    let uai = app.config.identity.uai.clone();
                    Some(tokio::spawn(crate::cache::proxy::run(cache.clone(), listener, limits, uai, stopped.wait())))
                }
                // "auto" must not keep the portal from starting because something else holds port 3128.
                Err(e) if app.config.cache.proxy_listen.trim() == "auto" => {
                    log::warn!("forward proxy not started: cannot listen on {addr}: {e} (set [cache] proxy_listen)");
                    None
                }
                Err(e) => {
                    return Err(Failure::runtime(format!(
                    "cannot listen on {addr} for the forward proxy ([cache] proxy_listen; \"off\" to disable it): {e}"
                )))
                }
            },
            _ => None,
        };
        let prefetch =
            app.cache.as_ref().and_then(|cache| crate::cache::prefetch::spawn(cache, enroll_stopped.clone()));
        if let Some((status, _)) = &prefetch {
            let _ = app.prefetch.set(status.clone());
        }
        drop(enroll_stopped);
        let served = server::run(app, listener, transport, shutdown.wait()).await;
        let _ = stop_enroll.send(true);
        let _ = control.await;
        if let Some((_, task)) = sync {
            let _ = task.await;
        }
        if let Some((_, task)) = prefetch {
            let _ = task.await;
        }
        if let Some(proxy) = proxy {
            let _ = proxy.await;
        }
        if let Some(redirecting) = redirecting {
            // It stopped on the same signal; its last requests finish within the same grace period.
            let _ = redirecting.await;
        }
        served.map_err(Failure::runtime)
    })
}

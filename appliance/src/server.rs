//! Accepts connections and shuts down in order: stop accepting, let open requests finish within the grace
//! period, stop background workers, flush the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::app::App;
use crate::http::{self, Connection};

/// Where a listener's TLS configuration comes from, read at each new connection so that a renewed
/// certificate or a new revocation list applies without a restart.
pub trait TlsSource: Send + Sync {
    fn config(&self) -> Arc<rustls::ServerConfig>;
}

/// Where every TLS listener (the box's LAN portal, the gateway) starts its configuration: rustls' *ring*
/// suites, which are all AEAD with an ephemeral key exchange, and TLS 1.2 and 1.3 only.
pub fn tls_builder() -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, rustls::Error> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !has_aes_instructions() {
        // Without AES instructions (a Raspberry Pi 4) AES-GCM runs in constant-time software several times
        // slower than ChaCha20-Poly1305, which every client supports: offer it first (a stable sort keeps
        // rustls' order otherwise).
        use rustls::CipherSuite::{
            TLS13_CHACHA20_POLY1305_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        };
        let chacha = [
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ];
        provider.cipher_suites.sort_by_key(|suite| !chacha.contains(&suite.suite()));
    }
    rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
}

/// What every TLS listener sets once its certificate is in: the server's order of suites, not the client's
/// (every suite is strong, so the order is the server's speed, see [`tls_builder`]; and a client cannot steer
/// the choice), and ALPN `http/1.1`, the only protocol the server speaks.
pub fn tls_finish(mut config: rustls::ServerConfig) -> rustls::ServerConfig {
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Whether the CPU has the AES and carry-less multiply instructions AES-GCM needs to be fast.
fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Plain HTTP, or TLS with a configuration from a `TlsSource`.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(Arc<dyn TlsSource>),
}

/// Longest pause between two housekeeping passes (expired sessions, leavers due for deletion).
const HOUSEKEEPING: Duration = Duration::from_secs(600);

/// Serves the portal on `listener` until `shutdown` resolves, then drains and flushes.
pub async fn run(
    app: Arc<App>,
    listener: TcpListener,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let builder = http1(&app.config.limits);
    let graceful = GracefulShutdown::new();
    let (stop_workers, workers_stopped) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(housekeeping(app.clone(), workers_stopped));
    tokio::pin!(shutdown);
    while let Some((stream, peer)) = accept(&listener, &mut shutdown, "portal").await {
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let transport = transport.clone();
        tokio::spawn(async move {
            let served = match transport {
                Transport::Plain => {
                    let conn = Arc::new(Connection { peer, tls: false, box_uai: None });
                    let service = service_fn(move |req| http::serve(app.clone(), req, conn.clone()));
                    watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await
                }
                Transport::Tls(source) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(source.config());
                    let handshake = tokio::time::timeout(app.config.limits.header_timeout.0, acceptor.accept(stream));
                    let tls = match handshake.await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            log::info!("TLS handshake with {peer} refused: {e}");
                            return;
                        }
                        Err(_) => {
                            log::info!("TLS handshake with {peer} timed out");
                            return;
                        }
                    };
                    let box_uai = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| provisioning::uai_of_cert(leaf.as_ref()));
                    let conn = Arc::new(Connection { peer, tls: true, box_uai });
                    let service = service_fn(move |req| http::serve(app.clone(), req, conn.clone()));
                    watcher.watch(builder.serve_connection(TokioIo::new(tls), service)).await
                }
            };
            if let Err(e) = served {
                log::debug!("connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    log::info!("shutting down: finishing open requests");
    let grace = app.config.limits.shutdown_grace.0;
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        log::warn!("some connections did not finish within {grace:?}; closing them");
    }
    let _ = stop_workers.send(true);
    let _ = sweeper.await;
    app.store.flush().await.map_err(std::io::Error::other)?;
    log::info!("stopped cleanly");
    Ok(())
}

/// The HTTP/1.1 connection settings of every listener: a client gets `limits.header_timeout` to send a
/// request head of at most `limits.max_header_bytes`.
pub fn http1(limits: &firmware_config::Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.0)
        .max_buf_size(limits.max_header_bytes.0 as usize)
        .keep_alive(true);
    builder
}

/// One shutdown signal for several listeners: every clone's [`Shutdown::wait`] resolves once the signal has.
#[derive(Clone, Debug)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Watches `signal` (e.g. [`shutdown_signal`]) in a task of its own. Must be called inside a tokio runtime.
    pub fn spawn(signal: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            signal.await;
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// Resolves once the signal came.
    pub async fn wait(mut self) {
        // An error means the watching task is gone, which only happens once it has sent: stop as well.
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

/// Background worker: drops expired sessions so the store does not grow with every login, and deletes the
/// accounts of people who left once their delay has passed. Runs often enough for a shortened delay (tests).
async fn housekeeping(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = (app.config.directory.leaver_delay.0 / 4).clamp(Duration::from_secs(1), HOUSEKEEPING);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
        match app.purge_sessions() {
            Ok(0) => {}
            Ok(n) => log::info!("dropped {n} expired sessions"),
            Err(e) => log::warn!("session sweep failed: {e}"),
        }
        if let Err(e) = app.purge_leavers().await {
            log::warn!("deleting leavers failed: {e}");
        }
    }
}

/// A future that resolves on the first SIGTERM or SIGINT. The handlers are installed here, before it is
/// polled: created lazily, a signal arriving between "listening" and the first poll would kill the process
/// with the default action instead of draining it.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// The next connection, or `None` once `shutdown` has resolved. A failed accept (out of file descriptors and
/// the like) pauses a moment rather than spin.
pub async fn accept<F: Future<Output = ()>>(
    listener: &TcpListener,
    shutdown: &mut std::pin::Pin<&mut F>,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    log::warn!("{what} listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

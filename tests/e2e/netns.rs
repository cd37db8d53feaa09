//! Servers inside a network namespace (a `link::Link`'s box or gateway side), reached from the test.
//!
//! A process in a namespace has its own loopback and addresses the test process, which stays in the host
//! namespace, cannot reach. [`Forward`] listens on the host's 127.0.0.1 and hands each connection to a socket
//! made inside the namespace (by one thread that entered it with `setns`, which moves only that thread), so
//! every HTTP helper of `util` works unchanged against a server in a namespace. Seen from the server, the
//! connections come from inside its namespace (from its own loopback when it listens there, as the box does:
//! so `/metrics` answers as it does on loopback).
//!
//! Needs root (entering a namespace takes CAP_SYS_ADMIN), as making the link does.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

/// `program`, run in namespace `ns` (`ip netns exec NS program`, which execs it: the child's pid is the
/// program's) or, without a namespace, directly.
pub fn command(ns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match ns {
        Some(ns) => {
            assert!(nix::unistd::geteuid().is_root(), "running a server in namespace {ns} needs root");
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Whether this process may run servers in a link's namespaces and reach them (root).
pub fn usable() -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err("entering a network namespace (setns) needs root".into())
    }
}

/// A request to the thread inside the namespace: connect there, send back the stream.
type ConnectRequest = (SocketAddr, mpsc::Sender<io::Result<TcpStream>>);

/// A TCP forwarder: `127.0.0.1:PORT` on the host → `target` inside a namespace. Dropping it stops accepting
/// and lets the thread inside the namespace go (it holds the namespace alive while it runs); connections
/// already forwarded end when either side closes.
pub struct Forward {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    inside: Option<JoinHandle<()>>,
}

/// How long a connection inside the namespace may take to be made (it is local to the namespace).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Forward {
    /// Starts forwarding to `target` in namespace `ns` (its name under `/run/netns/`).
    pub fn start(ns: &str, target: SocketAddr) -> Result<Forward, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (connect_tx, connect_rx) = mpsc::channel::<ConnectRequest>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let path = format!("/run/netns/{ns}");
        let inside = thread::Builder::new()
            .name(format!("netns-{ns}"))
            .spawn(move || {
                let entered = File::open(&path)
                    .map_err(|e| format!("{path}: {e}"))
                    .and_then(|f| setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}")));
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                // Sockets made here belong to the namespace for good, whichever thread then uses them.
                for (to, reply) in connect_rx {
                    let _ = reply.send(TcpStream::connect_timeout(&to, CONNECT_TIMEOUT));
                }
            })
            .map_err(|e| e.to_string())?;
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = inside.join();
                return Err(e);
            }
            Err(e) => return Err(format!("the thread entering {ns} did not report: {e}")),
        }
        let target = Arc::new(Mutex::new(target));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (target.clone(), stop.clone());
        let acceptor = thread::Builder::new()
            .name(format!("forward-{ns}"))
            .spawn(move || accept_loop(listener, connect_tx, t, s))
            .map_err(|e| e.to_string())?;
        Ok(Forward { addr, target, stop, acceptor: Some(acceptor), inside: Some(inside) })
    }

    /// The host-side address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Points new connections at another address inside the namespace (a restarted server's new port).
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().expect("forward target lock") = target;
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor up; it sees `stop` and returns, dropping its end of the channel, which ends the
        // thread inside the namespace.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        if let Some(inside) = self.inside.take() {
            let _ = inside.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    connect: mpsc::Sender<ConnectRequest>,
    target: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
) {
    for outside in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(outside) = outside else { continue };
        let to = *target.lock().expect("forward target lock");
        let (reply_tx, reply_rx) = mpsc::channel();
        if connect.send((to, reply_tx)).is_err() {
            return;
        }
        let inside = match reply_rx.recv() {
            Ok(Ok(stream)) => stream,
            // Nothing listens there (the server is down or restarting): the client sees a closed connection.
            _ => {
                let _ = outside.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = outside.set_nodelay(true);
        let _ = inside.set_nodelay(true);
        splice(outside, inside);
    }
}

/// Copies both ways on two threads; an end of stream is passed on as a half close.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else { return };
    thread::spawn(move || pump(a, b2));
    thread::spawn(move || pump(b, a2));
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

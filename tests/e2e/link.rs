//! An emulated rural link for end-to-end tests: the box in one network namespace, the gateway in another,
//! joined by `tests/link/link.sh` (rate limit, loss, and a userspace delay; see `tests/link/README.md`).
//!
//! ```ignore
//! let link = match Link::up(2_000_000, 100, 1.0) {
//!     Ok(link) => link,
//!     Err(why) => return eprintln!("SKIPPED: {why}"),
//! };
//! let gw = link.command_in_gw(util::BIN).args(["region", "serve", "--listen"]).arg(format!("{}:8443", link.gw_addr()))…;
//! let bx = link.command_in_box(util::BIN).args(["serve", …]).spawn()…;
//! link.cut();      // the line is dead: every packet dropped, interfaces stay up
//! link.restore();
//! // dropping `link` runs `link.sh down`: namespaces, delay stage and whatever still runs inside are gone
//! ```
//!
//! Needs root (or password-less sudo) and the tools in `tests/link/README.md`. When they are missing,
//! [`Link::up`] returns [`Unavailable`] so that a test can skip; with `RELAIS_LINK_REQUIRED=1` in the
//! environment it panics instead, so that CI cannot skip silently. Every call to `link.sh` is bounded.

#![allow(dead_code)] // Not every test module uses every helper.

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long `link.sh up` may take (it takes about half a second; it waits up to 60 s for another `link.sh`
/// holding its lock, then 10 s for the delay stage).
const UP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `cut`, `restore` and `down` may take (`down` gives leftover processes 5 s after SIGTERM).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(90);
/// `link.sh` exits with this when namespaces cannot be made here.
const EXIT_UNAVAILABLE: i32 = 3;

/// Gives each link of this test process its own prefix, hence its own namespaces and addresses.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The link could not be made on this machine (not root, no CAP_NET_ADMIN, a tool missing): skip or fall back.
#[derive(Debug)]
pub struct Unavailable {
    pub reason: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "emulated link unavailable: {}", self.reason)
    }
}

impl std::error::Error for Unavailable {}

/// A live emulated link; dropping it tears everything down.
pub struct Link {
    prefix: String,
    box_addr: Ipv4Addr,
    gw_addr: Ipv4Addr,
    box_ns: String,
    gw_ns: String,
    /// `sudo -n` before `ip netns exec` when the tests do not run as root.
    sudo: bool,
}

impl Link {
    /// A link of `rate_bits_per_s` (0: no limit), `delay_ms` one way (RTT ≈ 2 × delay) and `loss_percent`
    /// random loss, each in both directions. Panics if `link.sh` fails for another reason than an unfit
    /// machine, or takes too long.
    pub fn up(rate_bits_per_s: u64, delay_ms: u32, loss_percent: f64) -> Result<Link, Unavailable> {
        assert!((0.0..=100.0).contains(&loss_percent), "loss_percent must be within 0..=100, not {loss_percent}");
        let prefix = format!("rlt{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let out = run_link_sh(
            &[
                "up",
                &prefix,
                "--rate",
                &format!("{rate_bits_per_s}bit"),
                "--delay-ms",
                &delay_ms.to_string(),
                "--loss",
                &format!("{loss_percent}"),
            ],
            UP_TIMEOUT,
        );
        let out = match out {
            Ok(out) => out,
            Err(timeout) => {
                let _ = run_link_sh(&["down", &prefix], CHANGE_TIMEOUT);
                panic!("{timeout}");
            }
        };
        if out.status.code() == Some(EXIT_UNAVAILABLE) {
            let reason = out
                .stderr
                .lines()
                .find_map(|l| l.split_once("UNAVAILABLE: "))
                .map_or_else(|| out.stderr.trim().to_string(), |(_, why)| why.to_string());
            if std::env::var_os("RELAIS_LINK_REQUIRED").is_some_and(|v| v != "0") {
                panic!("RELAIS_LINK_REQUIRED is set but the emulated link is unavailable: {reason}");
            }
            return Err(Unavailable { reason });
        }
        assert!(out.status.success(), "link.sh up {prefix} failed ({}):\n{}", out.status, out.stderr);
        let field = |name: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("link.sh up printed no {name}=…:\n{}", out.stdout))
                .to_string()
        };
        let addr = |name: &str| {
            field(name).parse::<Ipv4Addr>().unwrap_or_else(|e| panic!("link.sh up printed a bad {name}=: {e}"))
        };
        Ok(Link {
            box_addr: addr("box"),
            gw_addr: addr("gw"),
            box_ns: field("box_ns"),
            gw_ns: field("gw_ns"),
            sudo: !nix::unistd::geteuid().is_root(),
            prefix,
        })
    }

    /// The link of issue 5: 2 Mbit/s, 200 ms RTT, 1 % loss each way.
    pub fn rural() -> Result<Link, Unavailable> {
        Link::up(2_000_000, 100, 1.0)
    }

    /// The box's address, reachable from the gateway's namespace (and nowhere else).
    pub fn box_addr(&self) -> Ipv4Addr {
        self.box_addr
    }

    /// The gateway's address, reachable from the box's namespace (and nowhere else).
    pub fn gw_addr(&self) -> Ipv4Addr {
        self.gw_addr
    }

    /// The prefix of this link's namespaces (`PREFIX-box`, `PREFIX-gw`), for `link.sh … PREFIX` by hand.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `program` to be run inside the box's namespace: `ip netns exec PREFIX-box program`.
    pub fn command_in_box(&self, program: impl AsRef<OsStr>) -> Command {
        self.command_in(&self.box_ns, program.as_ref())
    }

    /// `program` to be run inside the gateway's namespace: `ip netns exec PREFIX-gw program`.
    pub fn command_in_gw(&self, program: impl AsRef<OsStr>) -> Command {
        self.command_in(&self.gw_ns, program.as_ref())
    }

    fn command_in(&self, ns: &str, program: &OsStr) -> Command {
        let mut cmd = if self.sudo {
            let mut c = Command::new("sudo");
            c.args(["-n", "--preserve-env", "ip"]);
            c
        } else {
            Command::new("ip")
        };
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Drops every packet between box and gateway (including those already in flight), as when the line
    /// dies: interfaces stay up, connections stall and time out by themselves. Panics on failure.
    pub fn cut(&self) {
        self.change("cut");
    }

    /// Undoes [`Link::cut`].
    pub fn restore(&self) {
        self.change("restore");
    }

    /// `link.sh status`: settings, cut or not, loss and queue counters (for a failing test's message).
    pub fn status(&self) -> String {
        match run_link_sh(&["status", &self.prefix], CHANGE_TIMEOUT) {
            Ok(out) => format!("{}{}", out.stdout, out.stderr),
            Err(e) => e,
        }
    }

    fn change(&self, what: &str) {
        let out = run_link_sh(&[what, &self.prefix], CHANGE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "link.sh {what} {} failed ({}):\n{}", self.prefix, out.status, out.stderr);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // No panic here: a drop during a panic would abort and hide the test's own message.
        match run_link_sh(&["down", &self.prefix], CHANGE_TIMEOUT) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("link.sh down {} failed ({}):\n{}", self.prefix, out.status, out.stderr),
            Err(e) => eprintln!("{e}"),
        }
    }
}

/// What a finished `link.sh` said.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// `tests/link/link.sh`, or `$RELAIS_LINK_SH`.
fn link_sh() -> PathBuf {
    std::env::var_os("RELAIS_LINK_SH").map(PathBuf::from).unwrap_or_else(|| {
        // The e2e tests are declared in appliance/Cargo.toml.
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/link/link.sh")
    })
}

/// Runs `link.sh ARGS`, killing it after `timeout` (then `Err` with what it had printed).
fn run_link_sh(args: &[&str], timeout: Duration) -> Result<Output, String> {
    let script = link_sh();
    let what = format!("{} {}", script.display(), args.join(" "));
    let mut child = Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    // Readers on threads, so that a chatty script cannot fill a pipe and stall; results come back through
    // channels so that even a pipe held open by a stray grandchild cannot make us wait past the deadline.
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            let _ = tx.send(text);
        });
        rx
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => break None,
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let err = stderr.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
        return Err(format!("{what} took more than {timeout:?}; it said:\n{err}"));
    };
    let grace = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(2));
    Ok(Output {
        status,
        stdout: stdout.recv_timeout(grace).unwrap_or_default(),
        stderr: stderr.recv_timeout(grace).unwrap_or_default(),
    })
}

/// The helper itself: a short link carries TCP with the configured delay, `cut` stops it, `restore` brings it
/// back, and dropping the link removes its namespaces. Skips (loudly) where links cannot be made.
#[test]
fn link_carries_cuts_restores_and_goes_away() {
    let link = match Link::up(10_000_000, 25, 0.0) {
        Ok(link) => link,
        Err(why) => return eprintln!("SKIPPED link_carries_cuts_restores_and_goes_away: {why}"),
    };
    let port = 5300;
    // An echo server in the gateway's namespace, a client in the box's that times one round trip.
    let server = format!(
        "import socket\ns = socket.create_server(('{gw}', {port}))\nwhile True:\n    c, _ = s.accept()\n    \
         c.sendall(c.recv(100))\n    c.close()\n",
        gw = link.gw_addr()
    );
    let client = format!(
        "import socket, sys, time\nt = time.monotonic()\ntry:\n    c = socket.create_connection(('{gw}', {port}), \
         timeout=1)\n    c.sendall(b'ping')\n    ok = c.recv(100) == b'ping'\nexcept OSError:\n    ok = False\n\
         print('%s %.1f' % (ok, (time.monotonic() - t) * 1000))\n",
        gw = link.gw_addr()
    );
    let mut srv = link
        .command_in_gw("python3")
        .args(["-c", &server])
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 in the gateway's namespace");
    let round_trip = || {
        let out = link.command_in_box("python3").args(["-c", &client]).output().expect("python3 in the box");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (ok, ms) = text.split_once(' ').unwrap_or_else(|| panic!("client said {text:?}"));
        (ok == "True", ms.parse::<f64>().unwrap_or_else(|e| panic!("client said {text:?}: {e}")))
    };
    // The server may still be starting: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut ok, mut ms) = round_trip();
    while !ok && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        (ok, ms) = round_trip();
    }
    assert!(ok, "no echo through the link:\n{}", link.status());
    // Connect (1 RTT) plus request and answer (1 RTT): at least 2 × 50 ms.
    assert!(ms >= 100.0, "two round trips took {ms} ms, less than the 100 ms the delay should add");

    link.cut();
    let (ok, _) = round_trip();
    assert!(!ok, "a cut link still carried a connection:\n{}", link.status());
    link.restore();
    let (ok, _) = round_trip();
    assert!(ok, "no echo after restore:\n{}", link.status());

    let ns = format!("/run/netns/{}-gw", link.prefix());
    drop(link); // kills the server too, as it runs inside the link's namespace
    assert!(!std::path::Path::new(&ns).exists(), "{ns} is still there after drop");
    let _ = srv.kill();
    let _ = srv.wait();
}

//! Logs go to journald when systemd started us (it sets `JOURNAL_STREAM`), to stderr otherwise.
//!
//! On stderr, lines are buffered and written at most 100 ms late by a flusher thread: one write system
//! call per request line cost a fifth of the small-file throughput. `flush` at exit writes what is left.

use std::io::{BufWriter, Stderr, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::LevelFilter;

/// How late a buffered line may reach stderr.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
struct Buffered(Arc<Mutex<BufWriter<Stderr>>>);

impl Write for Buffered {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

pub fn init(level: &str) {
    let filter: LevelFilter = level.parse().unwrap_or(LevelFilter::Info);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(logger) = systemd_journal_logger::JournalLog::new() {
            if logger.with_syslog_identifier("relais".into()).install().is_ok() {
                log::set_max_level(filter);
                return;
            }
        }
    }
    let out = Buffered(Arc::new(Mutex::new(BufWriter::with_capacity(64 << 10, std::io::stderr()))));
    let mut flusher = out.clone();
    let spawned = std::thread::Builder::new().name("log-flush".into()).spawn(move || loop {
        std::thread::sleep(FLUSH_EVERY);
        let _ = flusher.flush();
    });
    let target = match spawned {
        Ok(_) => env_logger::Target::Pipe(Box::new(out)),
        Err(_) => env_logger::Target::Stderr,
    };
    env_logger::Builder::new()
        .filter_level(filter)
        // sled and hyper are chatty at debug; their problems surface as our errors.
        .filter_module("sled", LevelFilter::Warn)
        .format_target(false)
        .target(target)
        .init();
}

/// Writes out buffered lines; call before the process exits.
pub fn flush() {
    log::logger().flush();
}

//! Logs go to journald when systemd started us (it sets `JOURNAL_STREAM`), to stderr otherwise.

use log::LevelFilter;

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
    env_logger::Builder::new()
        .filter_level(filter)
        // sled and hyper are chatty at debug; their problems surface as our errors.
        .filter_module("sled", LevelFilter::Warn)
        .format_target(false)
        .init();
}

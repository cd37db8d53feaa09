//! The prefetcher: a background worker that fetches the configured URLs (and those of the configured lists,
//! e.g. the regional ENT's list for the coming week) into the cache while the line is least busy, so that
//! on Monday at 8:00 the class's video is already in the school. Objects already stored cost a conditional
//! request (a 304 of a few hundred bytes) when stale, and nothing when fresh.
//!
//! Its downloads wait in the uplink scheduler's last class: any user's request and replication go first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Cache, Request};
use crate::uplink::Class;

/// How often the worker checks whether the line is off-peak when it is not.
const PEAK_RECHECK: Duration = Duration::from_secs(300);
/// The first pass waits this long after start, so it does not compete with the box's own start-up.
const FIRST_PASS: Duration = Duration::from_secs(2);
/// Largest list accepted.
const MAX_LIST: usize = 1 << 20;

/// What the worker did last, for the admin page.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PrefetchStatus {
    /// When the last pass ended (seconds since the epoch).
    pub last_pass: Option<u64>,
    pub urls: usize,
    pub failed: usize,
    pub last_error: Option<String>,
}

pub type StatusHandle = Arc<Mutex<PrefetchStatus>>;

/// Starts the worker when there is something to prefetch.
pub fn spawn(cache: &Arc<Cache>, mut stop: watch::Receiver<bool>) -> Option<(StatusHandle, JoinHandle<()>)> {
    if cache.config.prefetch.is_empty() && cache.config.prefetch_lists.is_empty() {
        return None;
    }
    let status: StatusHandle = Arc::default();
    let (cache, handle) = (cache.clone(), status.clone());
    let task = tokio::spawn(async move {
        let mut pause = FIRST_PASS;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            if !cache.uplink.off_peak() {
                pause = PEAK_RECHECK.min(cache.config.prefetch_interval.0);
                continue;
            }
            let outcome = tokio::select! {
                outcome = pass(&cache) => outcome,
                _ = stop.changed() => return,
            };
            *status.lock().unwrap_or_else(|e| e.into_inner()) = outcome;
            pause = cache.config.prefetch_interval.0;
        }
    });
    Some((handle, task))
}

/// One pass over every URL.
async fn pass(cache: &Arc<Cache>) -> PrefetchStatus {
    let mut status = PrefetchStatus::default();
    let mut urls: Vec<String> = cache.config.prefetch.clone();
    for list in &cache.config.prefetch_lists {
        match fetch(cache, list).await {
            Ok(text) => urls.extend(parse_list(&String::from_utf8_lossy(&text))),
            Err(e) => {
                status.failed += 1;
                status.last_error = Some(format!("{list}: {e}"));
            }
        }
    }
    urls.dedup();
    for url in &urls {
        if let Err(e) = fetch(cache, url).await {
            status.failed += 1;
            status.last_error = Some(format!("{url}: {e}"));
        }
    }
    status.urls = urls.len();
    status.last_pass = Some(super::now());
    if status.failed > 0 {
        log::warn!(
            "cache: prefetched {} URLs, {} failed; last: {}",
            urls.len(),
            status.failed,
            status.last_error.as_deref().unwrap_or("")
        );
    } else {
        log::info!("cache: prefetched {} URLs", urls.len());
    }
    status
}

/// Fetches one URL through the cache to its last byte (the download goes on into the cache either way, but
/// reading it through paces the pass: one object at a time).
async fn fetch(cache: &Arc<Cache>, url: &str) -> Result<Vec<u8>, String> {
    let request = Request {
        url: url.to_string(),
        method: Method::GET,
        headers: http::HeaderMap::new(),
        body: None,
        class: Class::Prefetch,
        counted: false,
    };
    let response = cache.handle(request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let mut body = response.into_body();
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(data) = frame.data_ref() {
            if kept.len() < MAX_LIST {
                kept.extend_from_slice(&data[..data.len().min(MAX_LIST - kept.len())]);
            }
        }
    }
    Ok(kept)
}

/// The URLs of a list: one per line, blank lines and `#` comments ignored, anything not http(s) skipped.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| firmware_config::is_http_url(line))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_keep_urls_and_skip_the_rest() {
        let list = "# semaine 12\nhttps://ent.example.fr/v/a.mp4\n\n  http://x.fr/b # vidéo\nftp://nope\nnot a url\n";
        assert_eq!(super::parse_list(list), vec!["https://ent.example.fr/v/a.mp4", "http://x.fr/b"]);
    }
}

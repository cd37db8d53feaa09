//! Failed-login throttling, per login and per client address.
//!
//! Counting failures per login stops guessing one pupil's password from many PCs; counting per address stops
//! one PC from trying every login. Both answer 429 until their window passes. State is in memory only: a
//! restart forgives, which is acceptable on a LAN box and costs an attacker a reboot they cannot cause.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked keys, expired windows are pruned so memory stays bounded under a spray.
const PRUNE_AT: usize = 10_000;

struct Window {
    start: Instant,
    failures: u32,
}

struct Counter<K> {
    max: u32,
    windows: Mutex<HashMap<K, Window>>,
}

impl<K: Hash + Eq + Clone> Counter<K> {
    fn new(max: u32) -> Self {
        Counter { max, windows: Mutex::new(HashMap::new()) }
    }

    /// `Some(wait)` while `key` has used up its failures in the current window.
    fn blocked(&self, key: &K, window: Duration, now: Instant) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = windows.get(key)?;
        let elapsed = now.duration_since(w.start);
        (elapsed < window && w.failures >= self.max).then(|| window - elapsed)
    }

    fn fail(&self, key: &K, window: Duration, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= PRUNE_AT {
            windows.retain(|_, w| now.duration_since(w.start) < window);
        }
        let w = windows.entry(key.clone()).or_insert(Window { start: now, failures: 0 });
        if now.duration_since(w.start) >= window {
            *w = Window { start: now, failures: 0 };
        }
        w.failures += 1;
    }

    fn clear(&self, key: &K) {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

pub struct Throttle {
    window: Duration,
    logins: Counter<String>,
    clients: Counter<IpAddr>,
}

impl Throttle {
    pub fn new(config: &firmware_config::Login) -> Throttle {
        Throttle {
            window: config.window.0,
            logins: Counter::new(config.max_failures_per_login),
            clients: Counter::new(config.max_failures_per_client),
        }
    }

    /// `Err(wait)` if this attempt must be refused without even checking the password.
    pub fn check(&self, login: &str, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let a = self.logins.blocked(&login.to_string(), self.window, now);
        let b = self.clients.blocked(&client, self.window, now);
        match a.max(b) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    pub fn failed(&self, login: &str, client: IpAddr) {
        let now = Instant::now();
        self.logins.fail(&login.to_string(), self.window, now);
        self.clients.fail(&client, self.window, now);
    }

    /// A successful login forgives that login's failures (the address keeps its count).
    pub fn succeeded(&self, login: &str) {
        self.logins.clear(&login.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_config::{Login, Span};

    #[test]
    fn a_login_is_blocked_after_its_failures_and_forgiven_after_the_window() {
        let config = Login { max_failures_per_login: 3, window: Span(Duration::from_millis(200)), ..Login::default() };
        let t = Throttle::new(&config);
        let ip: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(t.check("lea", ip).is_ok());
            t.failed("lea", ip);
        }
        assert!(t.check("lea", ip).is_err());
        assert!(t.check("tom", ip).is_ok(), "another login from the same PC is not blocked yet");
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.check("lea", ip).is_ok());
    }

    #[test]
    fn a_client_trying_many_logins_is_blocked() {
        let config = Login { max_failures_per_client: 4, ..Login::default() };
        let t = Throttle::new(&config);
        let ip: IpAddr = [10, 0, 0, 7].into();
        for i in 0..4 {
            t.failed(&format!("user{i}"), ip);
        }
        assert!(t.check("someone.else", ip).is_err());
        assert!(t.check("someone.else", [10, 0, 0, 8].into()).is_ok());
    }
}

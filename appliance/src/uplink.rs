//! The one scheduler of the school's uplink: every byte that crosses it (replication now, the cache later)
//! asks here first, so together they stay under the line's rate — or the share of it the time of day allows
//! (`[uplink] rate` and `windows`) — and the most urgent traffic goes first: interactive (a user waiting on a
//! cache miss), then replication, then prefetch.
//!
//! A token bucket per direction, refilled at the current rate; a request waits while a more urgent class is
//! waiting. Callers are blocking transfer threads: a wait is a sleep on a condition variable, never a spin.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use firmware_config::{BitRate, Window};

/// Who is asking, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Interactive = 0,
    Replication = 1,
    Prefetch = 2,
}

/// Which way the bytes go; each direction has its own budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up = 0,
    Down = 1,
}

/// Burst allowed after idleness: a tenth of a second of line, so a burst never swamps the link's queue.
const BURST_SECONDS: f64 = 0.1;
/// Smallest burst, so that one 64 KiB chunk can always pass.
const MIN_BURST: f64 = 65_536.0;

pub struct Scheduler {
    rate: BitRate,
    windows: Vec<Window>,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    buckets: [Bucket; 2],
    /// Waiters per class and direction.
    waiting: [[u32; 3]; 2],
    /// Bytes granted per direction since start, for the status's current rate.
    granted: [u64; 2],
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Scheduler {
    pub fn new(rate: BitRate, windows: Vec<Window>) -> Scheduler {
        let now = Instant::now();
        Scheduler {
            rate,
            windows,
            state: Mutex::new(State {
                buckets: [Bucket { tokens: 0.0, at: now }, Bucket { tokens: 0.0, at: now }],
                waiting: [[0; 3]; 2],
                granted: [0; 2],
            }),
            changed: Condvar::new(),
        }
    }

    /// Bytes per second allowed now; `None` when unlimited.
    pub fn bytes_per_second(&self) -> Option<f64> {
        if self.rate.0 == 0 {
            return None;
        }
        let minute = local_minute();
        let percent = self.windows.iter().find(|w| w.contains(minute)).map_or(100, |w| w.percent);
        Some(self.rate.0 as f64 / 8.0 * f64::from(percent) / 100.0)
    }

    /// Waits until `bytes` may cross the line in `direction`, then counts them.
    pub fn acquire(&self, class: Class, direction: Direction, bytes: u64) {
        let d = direction as usize;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting[d][class as usize] += 1;
        while let Err(wait) = self.try_take(&mut state, class, direction, bytes) {
            state = self.changed.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
        state.waiting[d][class as usize] -= 1;
        state.granted[d] += bytes;
        drop(state);
        self.changed.notify_all();
    }

    /// As [`Scheduler::acquire`], for async callers (the cache's downloads): the wait is a timer, not a
    /// blocked thread. A waiter counts as waiting until it is served or dropped.
    pub async fn acquire_async(&self, class: Class, direction: Direction, bytes: u64) {
        if self.rate.0 == 0 {
            self.count(direction, bytes);
            return;
        }
        let waiting = Waiting::new(self, class, direction);
        loop {
            let taken = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                self.try_take(&mut state, class, direction, bytes)
            };
            match taken {
                Ok(()) => break,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
        drop(waiting);
        self.count(direction, bytes);
    }

    /// Takes `bytes` from the bucket if they may pass now (no more urgent class waiting, enough tokens), else
    /// says how long to wait before trying again.
    fn try_take(&self, state: &mut State, class: Class, direction: Direction, bytes: u64) -> Result<(), Duration> {
        let d = direction as usize;
        let Some(rate) = self.bytes_per_second() else { return Ok(()) };
        let burst = (rate * BURST_SECONDS).max(MIN_BURST);
        let now = Instant::now();
        let bucket = &mut state.buckets[d];
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        let urgent_waiting = state.waiting[d][..class as usize].iter().any(|&n| n > 0);
        // A request larger than the burst passes once the bucket is full, and leaves it in debt.
        let need = (bytes as f64).min(burst);
        if !urgent_waiting && state.buckets[d].tokens >= need {
            state.buckets[d].tokens -= bytes as f64;
            return Ok(());
        }
        let short = (need - state.buckets[d].tokens).max(0.0);
        Err(Duration::from_secs_f64((short / rate).clamp(0.001, 1.0)))
    }

    fn count(&self, direction: Direction, bytes: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.granted[direction as usize] += bytes;
    }

    /// Whether the line is at its most generous share of the day now: when prefetching may run.
    pub fn off_peak(&self) -> bool {
        let share = |minute: u16| self.windows.iter().find(|w| w.contains(minute)).map_or(100, |w| w.percent);
        let best = (0..1440).map(share).max().unwrap_or(100);
        share(local_minute()) >= best
    }

    /// Bytes granted so far in each direction (up, down).
    pub fn granted(&self) -> (u64, u64) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.granted[0], state.granted[1])
    }
}

/// Counts an async waiter in its class while it waits, so less urgent classes hold back; uncounted on drop
/// (also when the waiting request is abandoned).
struct Waiting<'a> {
    scheduler: &'a Scheduler,
    class: Class,
    direction: Direction,
}

impl<'a> Waiting<'a> {
    fn new(scheduler: &'a Scheduler, class: Class, direction: Direction) -> Waiting<'a> {
        let mut state = scheduler.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting[direction as usize][class as usize] += 1;
        Waiting { scheduler, class, direction }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.scheduler.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting[self.direction as usize][self.class as usize] -= 1;
        drop(state);
        self.scheduler.changed.notify_all();
    }
}

/// Minutes after local midnight (the school's clock: windows are written in local time).
fn local_minute() -> u16 {
    let now = jiff::ZonedDateTime::now();
    (now.hour() as u16) * 60 + now.minute() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_over_time() {
        // 800 kbit/s = 100 kB/s: 300 kB take about 2 s after the first burst's worth.
        let s = Scheduler::new(BitRate(800_000), Vec::new());
        let start = Instant::now();
        for _ in 0..30 {
            s.acquire(Class::Replication, Direction::Up, 10_000);
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((2.0..10.0).contains(&elapsed), "300 kB at 100 kB/s took {elapsed:.2} s");
        assert_eq!(s.granted(), (300_000, 0));
        // The other direction has its own budget.
        let start = Instant::now();
        s.acquire(Class::Replication, Direction::Down, 10_000);
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn unlimited_never_waits_and_windows_scale_the_rate() {
        let s = Scheduler::new(BitRate(0), Vec::new());
        let start = Instant::now();
        s.acquire(Class::Prefetch, Direction::Up, 1 << 30);
        assert!(start.elapsed() < Duration::from_millis(50));
        // Two windows that cover the whole day between them: 30 % whatever the time.
        let day = vec![Window { from: 0, to: 720, percent: 30 }, Window { from: 720, to: 0, percent: 30 }];
        let s = Scheduler::new(BitRate(1_000_000), day);
        assert_eq!(s.bytes_per_second(), Some(37_500.0));
    }

    #[test]
    fn a_waiting_user_goes_before_the_prefetch() {
        // 800 kbit/s = 100 kB/s. The prefetch wants 5 s of line, a user 1 s; the user's bytes pass first.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let s = std::sync::Arc::new(Scheduler::new(BitRate(800_000), Vec::new()));
        let (user_done, prefetch_done) = runtime.block_on(async {
            let start = Instant::now();
            let prefetch = {
                let s = s.clone();
                tokio::spawn(async move {
                    for _ in 0..50 {
                        s.acquire_async(Class::Prefetch, Direction::Down, 10_000).await;
                    }
                    start.elapsed()
                })
            };
            tokio::time::sleep(Duration::from_millis(200)).await;
            for _ in 0..10 {
                s.acquire_async(Class::Interactive, Direction::Down, 10_000).await;
            }
            let user = start.elapsed();
            (user, prefetch.await.expect("prefetch task"))
        });
        assert!(user_done < prefetch_done, "user {user_done:?}, prefetch {prefetch_done:?}");
        assert!(user_done < Duration::from_secs(3), "the user waited {user_done:?} behind the prefetch");
        assert!(prefetch_done >= Duration::from_secs(4), "the rate was not held: {prefetch_done:?}");
        assert_eq!(s.granted(), (0, 600_000));
    }
}

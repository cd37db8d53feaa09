//! Crash safety: uploads (and a few deletes) from several clients while the server is SIGKILLed at random
//! moments, fifty times over. After every restart the store opens, and every path holds what its last
//! acknowledged request left — or, if requests after that were cut off unanswered, what one of those left.
//!
//! The seed comes from `RELAIS_E2E_SEED` (default fixed) and is printed, so a failure can be replayed (the
//! kill moments still depend on timing).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::util::*;

/// How many times the server is killed.
const KILLS: usize = 50;
/// The whole test must finish within this; debug builds on two cores take well under it.
const DEADLINE: Duration = Duration::from_secs(240);
const THREADS: usize = 3;
const PATHS_PER_THREAD: usize = 6;
const MAX_SIZE: u64 = 2 * MIB;
/// A worker stops by itself after this long, should the kill never come.
const WORKER_LIMIT: Duration = Duration::from_secs(10);

/// What a file holds: the bytes of `Gen::new(seed, len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Content {
    seed: u64,
    len: u64,
}

/// The model of one path. `None` is "absent".
#[derive(Debug, Default)]
struct PathState {
    /// What the last answered request left (or what was observed after a restart).
    confirmed: Option<Content>,
    /// Requests sent after `confirmed` that got no answer: each may or may not have happened.
    unanswered: Vec<Option<Content>>,
    /// Touched since the last check.
    dirty: bool,
}

impl PathState {
    fn allowed(&self) -> Vec<Option<Content>> {
        let mut all = vec![self.confirmed];
        all.extend(self.unanswered.iter().copied());
        all
    }
}

type Model = Arc<Mutex<BTreeMap<String, PathState>>>;

#[test]
fn acknowledged_uploads_survive_repeated_sigkill() {
    let seed: u64 = std::env::var("RELAIS_E2E_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_241_125);
    eprintln!("crash test seed: {seed} (set RELAIS_E2E_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut relais = Relais::start(NO_QUOTAS);
    let model: Model = Arc::new(Mutex::new(BTreeMap::new()));
    let started = Instant::now();
    let mut acknowledged = 0usize;
    let mut cut_off = 0usize;

    for kill in 0..KILLS {
        assert!(
            started.elapsed() < DEADLINE,
            "only {kill} kills in {DEADLINE:?}: server start or recovery is too slow (seed {seed})"
        );
        if kill > 0 {
            relais.respawn();
        }
        // The store opened: it answers, logs in, lists, and holds what the model allows.
        relais.anonymous().call("GET", "/healthz").expect_status(200);
        let admin = relais.admin();
        admin.list("me/");
        check(&admin, &model, true, &format!("restart #{kill} (seed {seed})"));

        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let client = admin.clone();
                let model = model.clone();
                let worker_seed: u64 = rng.gen();
                std::thread::spawn(move || work(&client, thread, worker_seed, &model))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(10..=300)));
        relais.kill9();
        for worker in workers {
            let report = worker.join().expect("a worker panicked");
            assert!(
                report.unexpected.is_empty(),
                "before kill #{kill} (seed {seed}):\n{}",
                report.unexpected.join("\n")
            );
            acknowledged += report.acknowledged;
            cut_off += usize::from(report.cut_off);
        }
    }

    relais.respawn();
    let admin = relais.admin();
    check(&admin, &model, false, &format!("the final restart (seed {seed})"));
    // The quota agrees with what is stored, crashes notwithstanding.
    let stored: u64 = admin.tree("me/").values().sum();
    assert_eq!(admin.quota_used(), stored, "quota used vs bytes in me/ after {KILLS} kills (seed {seed})");
    eprintln!(
        "crash test: {KILLS} kills, {acknowledged} acknowledged requests, {cut_off} cut off, {:?}",
        started.elapsed()
    );
    assert!(acknowledged >= KILLS, "too few acknowledged requests ({acknowledged}) for the test to mean much");
}

struct Report {
    acknowledged: usize,
    /// Whether the worker ended on a transport error (the kill), as expected.
    cut_off: bool,
    unexpected: Vec<String>,
}

/// Sends PUTs (and one DELETE in ten) on this thread's own paths until the server goes away.
fn work(client: &Client, thread: usize, seed: u64, model: &Model) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report { acknowledged: 0, cut_off: false, unexpected: Vec::new() };
    let started = Instant::now();
    while started.elapsed() < WORKER_LIMIT {
        let k = rng.gen_range(0..PATHS_PER_THREAD);
        let path =
            if k % 2 == 0 { format!("me/t{thread}/f{k}.bin") } else { format!("me/t{thread}/sous/dossier/f{k}.bin") };
        let new_state =
            if rng.gen_bool(0.1) { None } else { Some(Content { seed: rng.gen(), len: rng.gen_range(0..=MAX_SIZE) }) };
        // Whether the server should say 201 or 204, when the previous state is certain.
        let existed = {
            let mut model = model.lock().expect("model lock");
            let state = model.entry(path.clone()).or_default();
            state.dirty = true;
            let certain = state.unanswered.is_empty();
            state.unanswered.push(new_state);
            certain.then_some(state.confirmed.is_some())
        };
        let result = match new_state {
            Some(c) => client.try_put(&path, &content(c.seed, c.len)),
            None => Client::try_send(client.request("DELETE", &files_url(&path)), None),
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(_) => {
                report.cut_off = true;
                break; // The server was killed: this request stays unanswered.
            }
        };
        let expected: &[u16] = match (new_state, existed) {
            (Some(_), Some(false)) => &[201],
            (Some(_), Some(true)) => &[204],
            (Some(_), None) => &[201, 204],
            (None, Some(false)) => &[404],
            (None, Some(true)) => &[204],
            (None, None) => &[204, 404],
        };
        let verb = if new_state.is_some() { "PUT" } else { "DELETE" };
        if !expected.contains(&resp.status) {
            report.unexpected.push(format!("{verb} {path}: expected {expected:?}, got {resp:?}"));
            continue; // An answered failure changed nothing; the entry stays among the unanswered to be safe.
        }
        let mut model = model.lock().expect("model lock");
        let state = model.get_mut(&path).expect("entry made above");
        state.confirmed = new_state;
        state.unanswered.clear();
        report.acknowledged += 1;
    }
    report
}

/// Reads back every dirty path (every path if `only_dirty` is false) and checks it holds an allowed state;
/// what is observed becomes the confirmed state (a restart may not change it again).
fn check(client: &Client, model: &Model, only_dirty: bool, when: &str) {
    let mut model = model.lock().expect("model lock");
    for (path, state) in model.iter_mut() {
        if only_dirty && !state.dirty {
            continue;
        }
        let allowed = state.allowed();
        let resp = Client::try_send(client.request("GET", &files_url(path)), None)
            .unwrap_or_else(|e| panic!("after {when}: GET {path}: {e}"));
        let observed = match resp.status {
            404 => {
                assert!(allowed.contains(&None), "after {when}: {path} is missing; allowed states: {allowed:?}");
                None
            }
            200 => {
                let found = allowed
                    .iter()
                    .flatten()
                    .find(|c| c.len == resp.body.len() as u64 && content(c.seed, c.len) == resp.body)
                    .copied();
                assert!(
                    found.is_some(),
                    "after {when}: {path} holds {} bytes matching none of the allowed states {allowed:?}",
                    resp.body.len()
                );
                found
            }
            _ => panic!("after {when}: GET {path}: {resp:?}"),
        };
        state.confirmed = observed;
        state.unanswered.clear();
        state.dirty = false;
    }
}

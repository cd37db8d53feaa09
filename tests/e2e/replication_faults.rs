//! Replication under faults: the box or the gateway SIGKILLed mid-session dozens of times, the gateway's disk
//! filling up mid-transfer, and what resuming a cut transfer costs. Whatever happens, every acknowledged write
//! ends up byte-identical on both sides, with no spurious conflict copy, and quotas add up on both.
//!
//! The seed comes from `RELAIS_E2E_SEED` (default fixed) and is printed; the kill moments still depend on timing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::replication::{put_tls, region_login, replicating_box};
use crate::trust::wait_enrolled;
use crate::util::*;

const UAI: &str = "0123456A";
/// How many times the box (then the gateway) is killed.
const KILLS: usize = 30;
/// How long the two sides may take to agree once the faults stop (sessions every second on loopback).
const CONVERGE: Duration = Duration::from_secs(90);
/// The box's uplink in the kill tests, bits per second: 3 MB/s, so that a session moving a few MiB lasts long
/// enough to be cut in the middle.
const LINE: u64 = 24_000_000;
/// Longest wait between the last write and a kill: a session starts 2 s after a change, and at every start.
const KILL_WITHIN_MS: u64 = 2500;

/// A batch of chunks closes once it holds `CHUNK_BATCH_BYTES`, so it exceeds that by at most one chunk.
const BATCH_AT_MOST: u64 = relais::sync::protocol::CHUNK_BATCH_BYTES as u64 + relais::sync::chunk::MAX_CHUNK as u64;
/// `[uplink] connections` by default: batches in flight at once.
const CONNECTIONS: u64 = 4;

fn seed(test: &str) -> u64 {
    let seed = std::env::var("RELAIS_E2E_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_251_125);
    eprintln!("{test}: seed {seed} (set RELAIS_E2E_SEED to replay)");
    seed
}

// ---------------------------------------------------------------------------------------------------------
// What both sides must end up holding
// ---------------------------------------------------------------------------------------------------------

/// What a file holds: the bytes of `content(seed, len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Content {
    seed: u64,
    len: u64,
}

/// Every file as its last acknowledged write left it: (owner, path) → content.
#[derive(Default)]
struct Model {
    files: BTreeMap<(String, String), Content>,
    /// Generated contents, kept for the comparisons.
    bytes: HashMap<Content, Vec<u8>>,
    /// Every content ever written on the box.
    written: std::collections::HashSet<Content>,
}

impl Model {
    fn bytes(&mut self, c: Content) -> &[u8] {
        self.bytes.entry(c).or_insert_with(|| content(c.seed, c.len))
    }

    fn paths_of(&self, login: &str) -> Vec<String> {
        self.files.keys().filter(|(l, _)| l == login).map(|(_, p)| p.clone()).collect()
    }

    /// A content for a new write: one already stored somewhere in three cases out of ten (the same file
    /// in several places, which replication sends once), else new, of mixed sizes up to `max`.
    fn pick(&self, rng: &mut StdRng, max: u64) -> Content {
        let held: Vec<Content> = self.files.values().copied().filter(|c| c.len <= max).collect();
        if !held.is_empty() && rng.gen_bool(0.3) {
            return held[rng.gen_range(0..held.len())];
        }
        let len = match rng.gen_range(0..10) {
            0..=3 => rng.gen_range(0..64 * KIB),
            4..=6 => rng.gen_range(64 * KIB..MIB),
            _ => rng.gen_range(MIB..=3 * MIB),
        };
        Content { seed: rng.gen(), len: len.min(max) }
    }
}

/// A user of the school and the folders they write in.
struct Person {
    login: String,
    /// Logged in on the box.
    client: Client,
    folders: Vec<&'static str>,
}

fn school_people(relais: &Relais) -> Vec<Person> {
    let admin = relais.admin();
    let mut people = Vec::new();
    for (login, role, folders) in [
        ("paul.prof", "teacher", vec!["me/", "classes/CM2/"]),
        ("lea.martin", "pupil", vec!["me/"]),
        ("hugo.petit", "pupil", vec!["me/"]),
    ] {
        let client = relais.user(&admin, login, role, &["CM2"], &[]);
        people.push(Person { login: login.into(), client, folders });
    }
    people
}

/// Logs `client` in again if its session did not survive the restart.
fn relogin(client: &mut Client, login: &str) {
    if client.call("GET", "/api/me").status == 401 {
        let password = password_of(login);
        assert_eq!(client.login(login, &password).status, 200, "{login} logs in again after a restart");
    }
}

/// One acknowledged write on the box: a new or replaced file (one in ten, a deletion).
fn box_write(rng: &mut StdRng, person: &Person, model: &mut Model) {
    let mine: Vec<String> =
        model.paths_of(&person.login).into_iter().filter(|p| !p.starts_with("me/maison/")).collect();
    if !mine.is_empty() && rng.gen_bool(0.1) {
        let path = &mine[rng.gen_range(0..mine.len())];
        person.client.delete(path).expect_status(204);
        model.files.remove(&(person.login.clone(), path.clone()));
        return;
    }
    let folder = person.folders[rng.gen_range(0..person.folders.len())];
    let k = rng.gen_range(0..6);
    let path = if k % 3 == 2 { format!("{folder}dossier/f{k}.bin") } else { format!("{folder}f{k}.bin") };
    let c = model.pick(rng, 3 * MIB);
    let resp = person.client.put(&path, model.bytes(c));
    assert!(matches!(resp.status, 201 | 204), "PUT {path} on the box: {resp:?}");
    model.files.insert((person.login.clone(), path), c);
    model.written.insert(c);
}

/// One acknowledged write from home, at the gateway, by someone of the school: in a folder of their own that
/// the box does not touch, so that no edit there is concurrent with one at school (which would rightly make a
/// conflict copy).
fn home_write(rng: &mut StdRng, school: &[Person], home: &[Client], model: &mut Model) {
    let who = rng.gen_range(0..school.len());
    let path = format!("me/maison/m{}.bin", rng.gen_range(0..4));
    let c = model.pick(rng, MIB);
    let resp = put_tls(&home[who], &path, model.bytes(c));
    assert!(matches!(resp.status, 201 | 204), "PUT {path} at the region: {resp:?}");
    model.files.insert((school[who].login.clone(), path), c);
}

/// The files under `dir` as `client` sees them: path (with `dir`) → size; a missing folder is empty.
fn files_under(client: &Client, dir: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_string()];
    while let Some(folder) = todo.pop() {
        let resp = Client::try_send(client.request("GET", &files_url(&folder)), None)?;
        match resp.status {
            200 => {}
            404 => continue,
            _ => return Err(format!("GET {folder}: {resp:?}")),
        }
        for item in resp.json().as_array().into_iter().flatten() {
            let name = item["name"].as_str().unwrap_or_default();
            if item["dir"] == true {
                todo.push(format!("{folder}{name}/"));
            } else {
                out.insert(format!("{folder}{name}"), item["size"].as_u64().unwrap_or(u64::MAX));
            }
        }
    }
    Ok(out)
}

fn quota_used(client: &Client) -> Result<u64, String> {
    let resp = Client::try_send(client.request("GET", "/api/me"), None)?;
    if resp.status != 200 {
        return Err(format!("GET /api/me: {resp:?}"));
    }
    resp.json()["quota"]["used"].as_u64().ok_or_else(|| format!("no quota.used in {}", resp.text()))
}

/// Whether both sides hold exactly the model: the same files for every user (no conflict copy, nothing
/// missing, nothing extra), the same bytes, and quotas equal to the sizes of the files each owns. `Err` says
/// what differs. `home[i]` is `school[i]`'s client at the gateway.
fn compare(school: &[Person], home: &[Client], model: &mut Model) -> Result<(), String> {
    let mut problems = Vec::new();
    for (person, at_home) in school.iter().zip(home) {
        let expected: BTreeMap<String, u64> =
            model.files.iter().filter(|((l, _), _)| *l == person.login).map(|((_, p), c)| (p.clone(), c.len)).collect();
        for (side, client) in [("box", &person.client), ("region", at_home)] {
            let mut found = BTreeMap::new();
            for folder in &person.folders {
                found.extend(files_under(client, folder)?);
            }
            if found != expected {
                let extra: Vec<_> = found.iter().filter(|(p, s)| expected.get(*p) != Some(s)).collect();
                let missing: Vec<_> = expected.iter().filter(|(p, s)| found.get(*p) != Some(s)).collect();
                problems.push(format!("{side}, {}: unexpected {extra:?}, missing {missing:?}", person.login));
            }
            let conflicts: Vec<_> = found.keys().filter(|p| p.contains("(conflit ")).collect();
            assert!(conflicts.is_empty(), "spurious conflict copies at the {side} for {}: {conflicts:?}", person.login);
            let owned: u64 = expected.values().sum();
            let used = quota_used(client)?;
            if used != owned {
                problems.push(format!("{side}, {}: quota used {used}, files owned {owned}", person.login));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    // The same names and sizes everywhere: now the bytes.
    let files: Vec<((String, String), Content)> = model.files.iter().map(|(k, c)| (k.clone(), *c)).collect();
    for ((login, path), c) in files {
        let i = school.iter().position(|p| p.login == login).expect("a known person");
        for (side, client) in [("box", &school[i].client), ("region", &home[i])] {
            let resp = Client::try_send(client.request("GET", &files_url(&path)), None)?;
            if resp.status != 200 || resp.body != model.bytes(c) {
                return Err(format!("{side}: {login}'s {path} does not hold the acknowledged bytes ({resp:?})"));
            }
        }
    }
    Ok(())
}

/// Polls `compare` until both sides hold the model; panics with the last difference and the logs.
fn converge(school: &[Person], home: &[Client], model: &mut Model, logs: &dyn Fn() -> String) -> Duration {
    let started = Instant::now();
    loop {
        match compare(school, home, model) {
            Ok(()) => return started.elapsed(),
            Err(e) => assert!(started.elapsed() < CONVERGE, "no convergence within {CONVERGE:?}:\n{e}\n{}", logs()),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Watching the gateway
// ---------------------------------------------------------------------------------------------------------

/// One series of a `/metrics` text, 0 when absent.
fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).filter(|rest| rest.starts_with(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn metrics(client: &Client) -> String {
    client.call("GET", "/metrics").expect_status(200).text()
}

const CHUNK_BYTES_IN: &str = "relais_sync_chunk_bytes_total{direction=\"in\"}";
const CHUNK_BYTES_OUT: &str = "relais_sync_chunk_bytes_total{direction=\"out\"}";
const CHANGES_IN: &str = "relais_sync_changes_total{direction=\"in\"}";
const CHANGES_OUT: &str = "relais_sync_changes_total{direction=\"out\"}";

/// The gateway's replication counters at one moment.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Activity {
    chunk_bytes_in: u64,
    changes_in: u64,
    chunk_bytes_out: u64,
    changes_out: u64,
}

impl Activity {
    fn read(gateway: &Client) -> Activity {
        let text = metrics(gateway);
        Activity {
            chunk_bytes_in: series(&text, CHUNK_BYTES_IN),
            changes_in: series(&text, CHANGES_IN),
            chunk_bytes_out: series(&text, CHUNK_BYTES_OUT),
            changes_out: series(&text, CHANGES_OUT),
        }
    }
}

/// Where in a session a kill is aimed, and how often each moment was hit.
#[derive(Default, Debug)]
struct Moments(BTreeMap<&'static str, usize>);

/// How long an aimed kill waits for its moment before giving up (a session starts at every start of the box
/// and 2 s after a write).
const AIM_WITHIN: Duration = Duration::from_secs(4);

impl Moments {
    /// Waits for a moment picked at random, judged from the gateway's counters, so that the caller's kill
    /// lands there: at once, while chunks flow in, just after the gateway applied pushed changes, while chunks
    /// flow down, or after a random pause. Counts what the moment turned out to be.
    fn aim(&mut self, gateway: &Client, rng: &mut StdRng) {
        let start = Activity::read(gateway);
        let moment = match rng.gen_range(0..4) {
            0 => {
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
                "within 300 ms of the writes"
            }
            1 => match Self::poll(gateway, |now| now.chunk_bytes_in > start.chunk_bytes_in) {
                true => {
                    std::thread::sleep(Duration::from_millis(rng.gen_range(0..200)));
                    "while chunks flow in"
                }
                false => "no chunks came",
            },
            2 => match Self::poll(gateway, |now| now.changes_in > start.changes_in) {
                true => "just after a push was applied",
                false => "no push came",
            },
            3 if rng.gen_bool(0.5) => match Self::poll(gateway, |now| now.chunk_bytes_out > start.chunk_bytes_out) {
                true => {
                    std::thread::sleep(Duration::from_millis(rng.gen_range(0..200)));
                    "while chunks flow down"
                }
                false => "no chunks went down",
            },
            _ => {
                let ms = rng.gen_range(0..KILL_WITHIN_MS);
                let window = ms.min(150);
                std::thread::sleep(Duration::from_millis(ms - window));
                let before = Activity::read(gateway);
                std::thread::sleep(Duration::from_millis(window));
                let after = Activity::read(gateway);
                if after.chunk_bytes_in > before.chunk_bytes_in {
                    "at random, chunks flowing in"
                } else if after.changes_in > before.changes_in {
                    "at random, changes coming in"
                } else if after.chunk_bytes_out > before.chunk_bytes_out || after.changes_out > before.changes_out {
                    "at random, changes going down"
                } else {
                    "at random, nothing moving"
                }
            }
        };
        *self.0.entry(moment).or_default() += 1;
    }

    /// Polls the gateway's counters until `reached`; false after [`AIM_WITHIN`].
    fn poll(gateway: &Client, reached: impl Fn(Activity) -> bool) -> bool {
        let deadline = Instant::now() + AIM_WITHIN;
        while Instant::now() < deadline {
            if reached(Activity::read(gateway)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------------------
// 1. The box killed mid-session
// ---------------------------------------------------------------------------------------------------------

#[test]
fn acknowledged_uploads_reach_the_region_however_often_the_box_is_killed() {
    let seed = seed("box kills");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut region = Region::init(None);
    region.serve();
    let mut relais = box_with_rate(&region.bundle(UAI, "École des Tilleuls", None, &[]), LINE);
    wait_enrolled(&relais);
    let mut school = school_people(&relais);
    // Someone works from home now and then too, so that kills also land while contents come down.
    let home: Vec<Client> = school.iter().map(|p| region_login(&region, &p.login, &|| region.stderr_tail())).collect();
    let gateway = region.client();
    let mut model = Model::default();
    let mut moments = Moments::default();
    let mut home_writes = 0;
    let started = Instant::now();

    for kill in 0..KILLS {
        if kill > 0 {
            relais.respawn();
            for person in &mut school {
                relogin(&mut person.client, &person.login);
            }
        }
        for _ in 0..rng.gen_range(1..=3) {
            let who = rng.gen_range(0..school.len());
            box_write(&mut rng, &school[who], &mut model);
        }
        if rng.gen_bool(0.3) {
            home_write(&mut rng, &school, &home, &mut model);
            home_writes += 1;
        }
        // A session starts at every start (with what the last run left) and 2 s after the writes.
        moments.aim(&gateway, &mut rng);
        relais.kill9();
    }
    let faults = started.elapsed();

    relais.respawn();
    for person in &mut school {
        relogin(&mut person.client, &person.login);
    }
    let logs = || format!("box:\n{}\nregion:\n{}", relais.stderr_tail(), region.stderr_tail());
    let settled = converge(&school, &home, &mut model, &logs);
    let received = Activity::read(&gateway).chunk_bytes_in;
    let written: u64 = model.written.iter().map(|c| c.len).sum();
    eprintln!(
        "box kills: {KILLS} kills in {faults:?} ({moments:?}); {} files ({home_writes} writes from home); {written} bytes of distinct contents \
         written, the gateway received {received} bytes of chunks ({:.3} x); converged {settled:?} after the last \
         start",
        model.files.len(),
        received as f64 / written.max(1) as f64
    );
    // Staged chunks survive a kill: each one can only waste the batches it cut.
    let bound = written + KILLS as u64 * CONNECTIONS * BATCH_AT_MOST;
    assert!(received <= bound, "the gateway received {received} bytes of chunks for {written} written (bound {bound})");
}

// ---------------------------------------------------------------------------------------------------------
// 2. The gateway killed mid-session
// ---------------------------------------------------------------------------------------------------------

#[test]
fn nothing_is_lost_either_way_however_often_the_gateway_is_killed() {
    let seed = seed("gateway kills");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut region = Region::init(None);
    region.serve();
    let relais = box_with_rate(&region.bundle(UAI, "École des Tilleuls", None, &[]), LINE);
    wait_enrolled(&relais);
    let school = school_people(&relais);
    let logs = || format!("box:\n{}\nregion:\n{}", relais.stderr_tail(), region.stderr_tail());
    // Everyone can work from home once their account has reached the region.
    let mut home: Vec<Client> = school.iter().map(|p| region_login(&region, &p.login, &logs)).collect();
    let gateway = region.client();
    let mut model = Model::default();
    let mut moments = Moments::default();
    let mut home_writes = 0;
    let started = Instant::now();

    for kill in 0..KILLS {
        if kill > 0 {
            region.serve();
            for (client, person) in home.iter_mut().zip(&school) {
                relogin(client, &person.login);
            }
        }
        for _ in 0..rng.gen_range(1..=2) {
            let who = rng.gen_range(0..school.len());
            box_write(&mut rng, &school[who], &mut model);
        }
        if rng.gen_bool(0.6) {
            home_write(&mut rng, &school, &home, &mut model);
            home_writes += 1;
        }
        moments.aim(&gateway, &mut rng);
        region.kill();
    }
    let faults = started.elapsed();

    region.serve();
    for (client, person) in home.iter_mut().zip(&school) {
        relogin(client, &person.login);
    }
    let logs = || format!("box:\n{}\nregion:\n{}", relais.stderr_tail(), region.stderr_tail());
    let settled = converge(&school, &home, &mut model, &logs);
    eprintln!(
        "gateway kills: {KILLS} kills in {faults:?} ({moments:?}); {} files of which {home_writes} writes from \
         home; converged {settled:?} after the last start",
        model.files.len()
    );
}

// ---------------------------------------------------------------------------------------------------------
// 3. The gateway's disk fills up
// ---------------------------------------------------------------------------------------------------------

/// A tmpfs of a few MiB mounted on a temp folder; unmounted and removed on drop, even when the test fails
/// (lazily if a process still holds it).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `Err` says why there is none: mounting needs root (and a kernel that lets it mount here).
    fn mount(bytes: u64) -> Result<SmallDisk, String> {
        let uid = nix::unistd::Uid::effective();
        if !uid.is_root() {
            return Err(format!("mounting a small filesystem needs root (running as uid {uid})"));
        }
        let dir = tempfile::Builder::new().prefix("relais-e2e-small-disk-").tempdir().expect("temp folder");
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", &format!("size={}k,mode=0700", bytes / KIB), "relais-e2e"]).arg(dir.path());
        let (status, out, err) = run_bounded(cmd, Duration::from_secs(30));
        if !status.is_some_and(|s| s.success()) {
            return Err(format!("mount -t tmpfs failed: {out}{err}"));
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(self.path()).expect("statvfs");
        stat.blocks_available() * stat.fragment_size()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        for args in [&["umount"][..], &["umount", "-l"][..]] {
            let mut cmd = Command::new(args[0]);
            cmd.args(&args[1..]).arg(self.dir.path());
            let (status, _, err) = run_bounded(cmd, Duration::from_secs(30));
            if status.is_some_and(|s| s.success()) {
                return;
            }
            eprintln!("{} {}: {err}", args.join(" "), self.dir.path().display());
        }
    }
}

/// Moves the folder `data` onto `disk`, leaving a symlink in its place.
fn move_onto(data: &Path, disk: &Path) {
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg(data.join(".")).arg(disk);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "cp -a failed: {out}{err}");
    std::fs::remove_dir_all(data).expect("remove the original folder");
    std::os::unix::fs::symlink(disk, data).expect("symlink to the small disk");
}

fn replication_status(admin: &Client) -> Value {
    admin.call("GET", "/api/admin/status").expect_status(200).json()["replication"].clone()
}

#[test]
fn a_full_disk_at_the_region_fails_cleanly_and_replication_resumes_once_space_is_freed() {
    // Declared before the region: dropped after it, once its process is gone.
    let disk = match SmallDisk::mount(64 * MIB) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_at_the_region_fails_cleanly_and_replication_resumes…: {why}");
            return;
        }
    };
    let seed = seed("full disk");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut region = Region::init(None);
    move_onto(&region.data_dir(), disk.path());
    region.serve();
    let relais = replicating_box(&region.bundle(UAI, "École des Tilleuls", None, &[]));
    wait_enrolled(&relais);
    let school = school_people(&relais);
    let logs = || format!("box:\n{}\nregion:\n{}", relais.stderr_tail(), region.stderr_tail());
    let home: Vec<Client> = school.iter().map(|p| region_login(&region, &p.login, &logs)).collect();
    let mut model = Model::default();
    let lea = &school[1];
    let before = Content { seed: rng.gen(), len: 300 * KIB };
    lea.client.put("me/avant.bin", model.bytes(before)).expect_status(201);
    model.files.insert((lea.login.clone(), "me/avant.bin".into()), before);
    converge(&school, &home, &mut model, &logs);

    // Leave 2 MiB beyond what replication keeps free for the metadata, then upload more than that on the box,
    // beginning with a file that does not fit.
    let ballast = disk.path().join("ballast");
    let headroom = relais::store::KEEP_FREE + 2 * MIB;
    let fill = disk.free().saturating_sub(headroom);
    std::fs::write(&ballast, vec![0u8; usize::try_from(fill).expect("fits")]).expect("write the ballast");
    eprintln!("full disk: {} bytes free at the region", disk.free());
    for (i, len) in [3 * MIB - 5, 5 * KIB, 2 * MIB + 17, 1536 * KIB].into_iter().enumerate() {
        let c = Content { seed: rng.gen(), len };
        let path = format!("me/apres-{i}.bin");
        lea.client.put(&path, model.bytes(c)).expect_status(201);
        model.files.insert((lea.login.clone(), path), c);
    }

    // The box says why replication stops.
    let admin = relais.admin();
    let deadline = Instant::now() + Duration::from_secs(60);
    let error = loop {
        let status = replication_status(&admin);
        if let Some(e) = status["last_error"].as_str() {
            if e.contains("507") && e.contains("disque plein") {
                break e.to_string();
            }
        }
        assert!(Instant::now() < deadline, "the box never reported the full disk: {status}\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("full disk: the box reports: {error}");
    let said =
        region.stderr_tail().lines().find(|l| l.contains("ERROR") && l.contains("disque plein")).map(str::to_string);
    let said = said.unwrap_or_else(|| panic!("the region's log does not say its disk is full\n{}", logs()));
    eprintln!("full disk: the region logs: {said}");

    // The full gateway keeps serving, and shows nothing half-written: each file it lists is whole.
    region.client().call("GET", "/healthz").expect_status(200);
    let at_home = &home[1];
    let listed = files_under(at_home, "me/").expect("the region lists lea's files");
    for (path, size) in &listed {
        let c = model.files[&(lea.login.clone(), path.clone())];
        assert_eq!(*size, c.len, "{path} is listed at the region with a size it never had");
        let resp = at_home.get(path).expect_status(200);
        assert!(resp.body == model.bytes(c), "{path} at the region is not what the box holds");
    }
    eprintln!("full disk: while full, the region shows {listed:?}");
    // A login writes a session: it may fail on a full disk, but must not break the store for later.
    let full_login = region.client().login(&lea.login, &password_of(&lea.login)).status;
    eprintln!("full disk: a login at the full region answers {full_login}");
    // What comes down does not wait for the region's disk: an edit from home reaches the box meanwhile.
    let from_home = Content { seed: rng.gen(), len: 40 * KIB };
    put_tls(at_home, "me/maison/pendant.bin", model.bytes(from_home)).expect_status(201);
    let deadline = Instant::now() + Duration::from_secs(30);
    while lea.client.get("me/maison/pendant.bin").status != 200 {
        assert!(Instant::now() < deadline, "a home edit waits for the region's full disk\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lea.client.get("me/maison/pendant.bin").body == model.bytes(from_home));
    model.files.insert((lea.login.clone(), "me/maison/pendant.bin".into()), from_home);
    assert!(listed.len() < model.files.len(), "everything fitted: the disk was not full enough to test anything");

    // Space comes back: replication resumes by itself and nothing is lost.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    let settled = converge(&school, &home, &mut model, &logs);
    let status = replication_status(&admin);
    assert!(status["last_error"].is_null(), "the error stays after recovery: {status}");
    assert_eq!(region.client().login(&lea.login, &password_of(&lea.login)).status, 200, "login once space is back");
    for leftover in ["tmp", "chunks"] {
        let bytes = dir_bytes(&region.data_dir().join(leftover));
        assert_eq!(bytes, 0, "the region's {leftover}/ keeps {bytes} bytes once everything is assembled");
    }
    eprintln!("full disk: converged {settled:?} after space was freed");
}

// ---------------------------------------------------------------------------------------------------------
// 4. What a cut transfer costs
// ---------------------------------------------------------------------------------------------------------

/// A box provisioned from `bundle`, replicating every second over an uplink of `rate`, started.
fn box_with_rate(bundle: &Path, bits_per_second: u64) -> Relais {
    let mut relais = crate::replication::provisioned(bundle, |config| {
        config.uplink.rate = firmware_config::BitRate(bits_per_second);
    });
    relais.respawn();
    relais
}

/// Bytes of `file`'s chunks staged in `stage` (a data folder's `chunks/`).
fn staged_of(stage: &Path, file: &[u8]) -> u64 {
    let manifest = relais::sync::chunk::Manifest::from_reader(file).expect("chunking a slice");
    let chunks: HashMap<_, _> = manifest.chunks.iter().map(|(h, len)| (h.to_hex(), u64::from(*len))).collect();
    chunks.iter().filter(|(hex, _)| stage.join(hex).is_file()).map(|(_, len)| len).sum()
}

/// Where a blob lies in a data folder (`blobs/xx/<blake3 hex>`).
fn blob_path(data: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let hex = blake3::hash(bytes).to_hex().to_string();
    data.join("blobs").join(&hex[..2]).join(hex)
}

#[test]
fn a_transfer_cut_by_gateway_kills_resumes_where_it_stopped() {
    let seed = seed("resumption");
    let mut region = Region::init(None);
    region.serve();
    // 32 Mbit/s: the 12 MiB take about three seconds, long enough to cut them at chosen points.
    let relais = box_with_rate(&region.bundle(UAI, "École des Tilleuls", None, &[]), 32_000_000);
    wait_enrolled(&relais);
    let admin = relais.admin();
    let paul = relais.user(&admin, "paul.prof", "teacher", &["CM2"], &[]);
    // Two files in one batch of changes: the video goes first, then the slides; the changes naming them are
    // pushed once both contents are at the gateway.
    let video = content(seed, 8 * MIB);
    let slides = content(seed + 1, 4 * MIB);
    paul.put("me/video.bin", &video).expect_status(201);
    paul.put("me/diapos.bin", &slides).expect_status(201);
    let size = (video.len() + slides.len()) as u64;

    // Kill the gateway once a quarter, then three fifths of the video is staged there, then once the video is
    // assembled and half the slides are staged: a kill between a content's arrival and the push of its change.
    let stage = region.data_dir().join("chunks");
    let video_blob = blob_path(&region.data_dir(), &video);
    let gateway = region.client();
    let mut received = 0; // what the gateway counted, read just before each kill: a lower bound
    let mut staged_at_kill = Vec::new();
    let points: [(&str, &dyn Fn(u64) -> bool); 3] = [
        ("a quarter of the video", &|staged| staged >= 2 * MIB),
        ("three fifths of the video", &|staged| staged as f64 >= 0.6 * (8 * MIB) as f64),
        ("the video assembled, half the slides", &|_| video_blob.exists() && staged_of(&stage, &slides) >= 2 * MIB),
    ];
    for (what, reached) in points {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut counted = 0;
        while !reached(dir_bytes(&stage)) {
            counted = series(&metrics(&gateway), CHUNK_BYTES_IN);
            assert!(
                Instant::now() < deadline,
                "the transfer never reached {what}\nbox:\n{}\nregion:\n{}",
                relais.stderr_tail(),
                region.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        region.kill();
        received += counted;
        staged_at_kill.push(dir_bytes(&stage));
        region.serve();
    }
    let kills = staged_at_kill.len() as u64;
    let logs = || format!("box:\n{}\nregion:\n{}", relais.stderr_tail(), region.stderr_tail());

    let home = region_login(&region, "paul.prof", &logs);
    for (path, bytes) in [("me/video.bin", &video), ("me/diapos.bin", &slides)] {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let resp = home.get(path);
            if resp.status == 200 {
                assert!(resp.body == *bytes, "{path} at the region is not the box's");
                break;
            }
            assert!(Instant::now() < deadline, "{path} never reached the region ({resp:?})\n{}", logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    received += series(&metrics(&gateway), CHUNK_BYTES_IN);
    let sent = series(&metrics(&relais.anonymous()), CHUNK_BYTES_OUT);
    // Each chunk is staged at the gateway once whole, each content kept once assembled, and the box then sends
    // only what is neither: a kill can only waste the batches in flight, one per connection, each at most a
    // batch plus one chunk.
    let bound = size + kills * CONNECTIONS * BATCH_AT_MOST;
    eprintln!(
        "resumption: {size} bytes in two files with {kills} gateway kills (staged at each kill: \
         {staged_at_kill:?}): the box sent {sent} bytes of chunks ({:.3} x the files), the gateway counted at \
         least {received}; bound {bound}",
        sent as f64 / size as f64
    );
    assert!(sent >= size, "the box sent {sent} bytes of chunks for {size} bytes of files");
    assert!(sent <= bound, "resuming re-sent too much: {sent} bytes of chunks for {size} (bound {bound})");
    assert_eq!(dir_bytes(&stage), 0, "staged chunks stay at the region after the files were assembled");
}

#[test]
fn a_full_disk_on_the_box_refuses_an_upload_and_the_box_keeps_serving() {
    let disk = match SmallDisk::mount(56 * MIB) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_on_the_box_refuses_an_upload_and_the_box_keeps_serving: {why}");
            return;
        }
    };
    let mut relais = Relais::unstarted(NO_QUOTAS, Some(ADMIN_PASSWORD));
    move_onto(&relais.data_dir(), disk.path());
    relais.respawn();
    let admin = relais.admin();
    let kept = content(1, 2 * MIB);
    admin.put("me/avant.bin", &kept).expect_status(201);
    // Bigger than what is left above the reserve kept for the metadata: refused, nothing kept.
    let too_big = content(2, disk.free());
    let resp = admin.try_put("me/trop-gros.bin", &too_big);
    match resp {
        Ok(resp) => {
            assert_eq!(resp.status, 507, "{resp:?}");
            assert!(resp.error_message().contains("plein"), "{}", resp.error_message());
        }
        // The box may answer and close before the client has sent everything.
        Err(e) => eprintln!("the upload was cut by the 507 before it was all sent: {e}"),
    }
    assert_eq!(admin.get("me/trop-gros.bin").status, 404);
    // The metadata still writes: a new login, a small upload, the old file intact.
    let again = relais.admin();
    again.put("me/apres.txt", b"encore de la place pour ceci").expect_status(201);
    assert_eq!(again.get("me/avant.bin").body, kept);
    assert_eq!(again.quota_used(), kept.len() as u64 + 28);
    relais.stop();
}

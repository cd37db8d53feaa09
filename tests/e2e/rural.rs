//! Replication across the emulated rural line of issue 5 (2 Mbit/s, 200 ms RTT, 1 % loss each way; see
//! `tests/link/`): the box in one network namespace, the gateway in another. Both sides converge on a mix of
//! files, and cuts in the middle of an upload lose nothing and re-send little.
//!
//! Where network namespaces cannot be made (not root, no `/dev/net/tun`, `ip`/`nft`/`tc` missing) each test
//! prints `SKIPPED <name>: <why>` and passes; with `RELAIS_LINK_REQUIRED=1` it fails instead. `RURAL_LOGS=1`
//! (with `--nocapture`) prints both sides' logs at the end of the cut test, to see how sessions fared.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::link::Link;
use crate::replication::put_tls;
use crate::trust::wait_enrolled;
use crate::util::*;

const UAI: &str = "0290001R";
/// Longest wait for the two sides to agree: the files below take about 30 s at 2 Mbit/s, cuts add their own
/// length plus TCP's back-off after each, and a failed session waits 5 s before the next.
const CONVERGE: Duration = Duration::from_secs(240);
/// The box's `[uplink] connections` (the default): how many chunk batches travel at once.
const CONNECTIONS: u64 = 4;
/// The largest chunk (`sync::chunk`): what one connection can lose in flight when the line dies.
const MAX_CHUNK: u64 = 32 * KIB;

/// Says `line` on the test binary's stderr even when the test passes: libtest captures `eprintln!`, not
/// writes to the stream itself, so CI logs show which of these tests ran and which were skipped, and why.
fn loud(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A gateway in the link's gateway namespace and a box provisioned for it in the box namespace, replicating
/// every second; `None` (after saying so) where links cannot be made. `gateway_config` is the region's
/// configuration file, if any.
fn rural_pair(test: &str, gateway_config: Option<&str>) -> Option<(Link, Region, Relais)> {
    let link = match Link::rural() {
        Ok(link) => link,
        Err(why) => {
            loud(&format!("SKIPPED {test}: {why}"));
            return None;
        }
    };
    if let Err(why) = crate::netns::usable() {
        assert!(
            std::env::var_os("RELAIS_LINK_REQUIRED").is_none_or(|v| v == "0"),
            "RELAIS_LINK_REQUIRED is set but {why}"
        );
        loud(&format!("SKIPPED {test}: {why}"));
        return None;
    }
    loud(&format!("RUNNING {test} over the emulated link {} (2 Mbit/s, 200 ms RTT, 1 % loss)", link.prefix()));
    let gw_ns = format!("{}-gw", link.prefix());
    let mut region = Region::init_in(gateway_config, &gw_ns, link.gw_addr().into());
    region.serve();
    let bundle = region.bundle(UAI, "École de Kerlouan", None, &[]);
    assert!(region.url().contains(&link.gw_addr().to_string()), "the bundle points at {}", region.url());

    let mut relais = Relais::unstarted("", Some(ADMIN_PASSWORD));
    let (code, out, err) = relais_cli([
        "provision".as_ref(),
        "apply".as_ref(),
        bundle.as_os_str(),
        "--data".as_ref(),
        relais.data_dir().as_os_str(),
    ]);
    assert_eq!(code, Some(0), "provision apply failed\n{out}\n{err}");
    let mut config = firmware_config::Config::load(&relais.data_dir().join("relais.toml")).expect("provisioned config");
    config.uplink.sync_interval = firmware_config::Span(Duration::from_secs(1));
    assert_eq!(u64::from(config.uplink.connections), CONNECTIONS, "the default number of connections");
    std::fs::write(relais.config_path(), config.to_toml()).expect("write config");
    relais.set_netns(&format!("{}-box", link.prefix()), "127.0.0.1:0");
    relais.respawn();
    wait_enrolled(&relais);
    Some((link, region, relais))
}

/// Both sides' recent logs and the link's counters, for a failure message.
fn logs(relais: &Relais, region: &Region, link: &Link) -> String {
    format!("box:\n{}\nregion:\n{}\nlink:\n{}", relais.stderr_tail(), region.stderr_tail(), link.status())
}

/// A client of the region logged in as `login` once the account has arrived there (watched as the region's
/// admin: polling with failed logins would trip the login throttle).
fn region_login(region: &Region, login: &str, logs: &dyn Fn() -> String) -> Client {
    let mut admin = region.client();
    assert_eq!(admin.login("admin", ADMIN_PASSWORD).status, 200, "region admin login");
    let deadline = Instant::now() + CONVERGE;
    loop {
        let users = admin.call("GET", "/api/admin/users").expect_status(200).json();
        if users.as_array().into_iter().flatten().any(|u| u["login"] == login) {
            break;
        }
        assert!(Instant::now() < deadline, "{login} never reached the region\n{}", logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut client = region.client();
    let resp = client.login(login, &password_of(login));
    assert_eq!(resp.status, 200, "{login} logs in at the region with the school's password: {resp:?}");
    client
}

/// Every file under `dir` as `client` sees it: path → ETag (the blake3 of the content, quoted).
fn hashes(client: &Client, dir: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![String::new()];
    while let Some(sub) = todo.pop() {
        let resp = client.get(&format!("{dir}{sub}"));
        if resp.status != 200 {
            continue; // a folder not there yet
        }
        for e in resp.json().as_array().into_iter().flatten() {
            let name = e["name"].as_str().expect("listing name");
            if e["dir"] == true {
                todo.push(format!("{sub}{name}/"));
            } else {
                out.insert(format!("{sub}{name}"), e["etag"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    out
}

/// The ETag of `bytes`.
fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", blake3::hash(bytes).to_hex())
}

/// A counter from Prometheus text: the sum of the series of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            series.strip_prefix(name).is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                && series.contains(labels)
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until both sides list exactly `expected` under `dir` (path → ETag): every file with its content, no
/// other file (no duplicate, no conflict copy). Returns how long it took.
fn converge(
    school: &Client,
    home: &Client,
    dir: &str,
    expected: &BTreeMap<String, String>,
    logs: &dyn Fn() -> String,
) -> Duration {
    let start = Instant::now();
    loop {
        let (at_school, at_home) = (hashes(school, dir), hashes(home, dir));
        if &at_school == expected && &at_home == expected {
            return start.elapsed();
        }
        if start.elapsed() > CONVERGE {
            let differ = |side: &BTreeMap<String, String>| -> Vec<String> {
                let mut d: Vec<String> = expected
                    .iter()
                    .filter(|(p, h)| side.get(*p) != Some(h))
                    .map(|(p, _)| format!("missing or different: {p}"))
                    .collect();
                d.extend(side.keys().filter(|p| !expected.contains_key(*p)).map(|p| format!("unexpected: {p}")));
                d
            };
            panic!(
                "no convergence under {dir} within {CONVERGE:?}\nschool: {:?}\nregion: {:?}\n{}",
                differ(&at_school),
                differ(&at_home),
                logs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn box_and_gateway_converge_over_a_rural_line() {
    let test = "rural::box_and_gateway_converge_over_a_rural_line";
    let Some((link, region, relais)) = rural_pair(test, None) else { return };
    let logs = || logs(&relais, &region, &link);
    let started = Instant::now();

    // At school: a teacher's course material (one ~4 MB video), three pupils handing in, two of them the same
    // worksheet they were given, one a copy of the teacher's file.
    let admin = relais.admin();
    let paul = relais.user(&admin, "paul.prof", "teacher", &["CM2"], &[]);
    let pupils: Vec<Client> = ["lea.martin", "tom.roux", "ines.diallo"]
        .iter()
        .map(|login| relais.user(&admin, login, "pupil", &["CM2"], &[]))
        .collect();
    let mut expected = BTreeMap::new();
    let mut unique = 0u64;
    let mut upload = |client: &Client, path: &str, bytes: &[u8], new_content: bool| {
        client.put(&format!("classes/CM2/{path}"), bytes).expect_status(201);
        expected.insert(path.to_string(), etag(bytes));
        if new_content {
            unique += bytes.len() as u64;
        }
    };
    let video = content(101, 4 * MIB + 77);
    let sheet = content(102, 300 * KIB + 5);
    upload(&paul, "video-volcans.mp4", &video, true);
    upload(&paul, "fiche.pdf", &sheet, true);
    for (i, len) in [20 * KIB + 3, 75 * KIB, 180 * KIB + 11].into_iter().enumerate() {
        upload(&paul, &format!("cours/lecon-{i}.odt"), &content(110 + i as u64, len), true);
    }
    upload(&pupils[0], "rendus/lea.martin/fiche.pdf", &sheet, false);
    upload(&pupils[1], "rendus/tom.roux/fiche.pdf", &sheet, false);
    upload(&pupils[2], "rendus/ines.diallo/video.mp4", &video, false);
    for (i, pupil) in pupils.iter().enumerate() {
        let login = ["lea.martin", "tom.roux", "ines.diallo"][i];
        upload(pupil, &format!("rendus/{login}/redaction.odt"), &content(120 + i as u64, 150 * KIB + i as u64), true);
    }

    // At home, meanwhile: the teacher adds two files from the region's portal.
    let paul_home = region_login(&region, "paul.prof", &logs);
    for (i, len) in [400 * KIB + 1, 90 * KIB].into_iter().enumerate() {
        let bytes = content(130 + i as u64, len);
        let path = format!("maison-{i}.pdf");
        put_tls(&paul_home, &format!("classes/CM2/{path}"), &bytes).expect_status(201);
        expected.insert(path, etag(&bytes));
    }

    let took = converge(&paul, &paul_home, "classes/CM2/", &expected, &logs);
    // The gateway received each distinct content once: copies cost no chunks.
    let mut gw_admin = region.client();
    assert_eq!(gw_admin.login("admin", ADMIN_PASSWORD).status, 200);
    let gw_metrics = gw_admin.call("GET", "/metrics").expect_status(200).text();
    let chunk_bytes_in = metric(&gw_metrics, "relais_sync_chunk_bytes_total", "direction=\"in\"");
    assert!(
        chunk_bytes_in >= unique && chunk_bytes_in <= unique + MAX_CHUNK * CONNECTIONS,
        "the gateway received {chunk_bytes_in} chunk bytes for {unique} bytes of distinct content"
    );
    loud(&format!(
        "{test}: {} files ({unique} distinct bytes up) agreed {:.1} s after the last upload, {:.1} s in all",
        expected.len(),
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
}

#[test]
fn cuts_mid_transfer_lose_nothing_and_resend_at_most_the_chunks_in_flight() {
    let test = "rural::cuts_mid_transfer_lose_nothing_and_resend_at_most_the_chunks_in_flight";
    // A gateway that gives up a request body silent for 6 s, so that the long cuts below end requests and
    // sessions (as a cut of hours does with the default 60 s) and the box must resume from what was staged.
    let config = "[limits]\nbody_idle_timeout = \"6s\"\n";
    let Some((link, region, relais)) = rural_pair(test, Some(config)) else { return };
    let logs = || logs(&relais, &region, &link);
    let started = Instant::now();
    let admin = relais.admin();
    let paul = relais.user(&admin, "paul.prof", "teacher", &["CM2"], &[]);
    let paul_home = region_login(&region, "paul.prof", &logs);
    let mut gw_admin = region.client();
    assert_eq!(gw_admin.login("admin", ADMIN_PASSWORD).status, 200);
    let gw_chunk_bytes_in = || {
        let text = gw_admin.call("GET", "/metrics").expect_status(200).text();
        metric(&text, "relais_sync_chunk_bytes_total", "direction=\"in\"")
    };
    let box_metric = |name: &str, labels: &str| {
        metric(&relais.anonymous().call("GET", "/metrics").expect_status(200).text(), name, labels)
    };
    let before = gw_chunk_bytes_in();

    let mut expected = BTreeMap::new();
    let big = content(201, 6 * MIB + 333);
    paul.put("classes/CM2/film.mp4", &big).expect_status(201);
    expected.insert("film.mp4".to_string(), etag(&big));
    let mut unique = big.len() as u64;

    // Cut the line at random moments while the film moves: each time the gateway has received more of it
    // since the last restore, 0.3 to 2 s later. Odd cuts are short (TCP stalls and carries on), even ones
    // longer than the gateway's patience (requests and the session fail, and the box resumes). Each cut also
    // brings an upload at school, acknowledged while the line is dead.
    let seed = rand::random::<u64>();
    eprintln!("{test}: cut timings from seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cuts = 0;
    let mut moved_from = before;
    while cuts < 5 {
        let deadline = Instant::now() + CONVERGE;
        while gw_chunk_bytes_in() <= moved_from {
            assert!(Instant::now() < deadline, "the film stopped moving after cut {cuts}\n{}", logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..2000)));
        let got = gw_chunk_bytes_in() - before;
        assert!(
            got < big.len() as u64,
            "the film arrived whole before cut {} could fall within it\n{}",
            cuts + 1,
            logs()
        );
        link.cut();
        cuts += 1;
        let long = cuts % 2 == 0;
        let cut_for =
            Duration::from_millis(if long { rng.gen_range(8_000..11_000) } else { rng.gen_range(1_000..3_000) });
        let bytes = content(210 + cuts, 40 * KIB + cuts);
        let path = format!("pendant-coupure-{cuts}.odt");
        paul.put(&format!("classes/CM2/{path}"), &bytes).expect_status(201);
        expected.insert(path, etag(&bytes));
        unique += bytes.len() as u64;
        std::thread::sleep(cut_for);
        moved_from = gw_chunk_bytes_in();
        link.restore();
        eprintln!(
            "{test}: cut {cuts} for {:.1} s after {got} of {} bytes of the film had arrived",
            cut_for.as_secs_f64(),
            big.len()
        );
    }

    let took = converge(&paul, &paul_home, "classes/CM2/", &expected, &logs);
    // Everything acknowledged at school is still there, whole.
    for (path, tag) in &expected {
        assert_eq!(&paul.get(&format!("classes/CM2/{path}")).expect_status(200).etag(), tag, "{path} at school");
    }
    assert_stream_matches(
        paul_home.get_stream("classes/CM2/film.mp4").2,
        201,
        big.len() as u64,
        "the film at the region",
    );

    // What crossed more than once: chunks the gateway took in twice. At most the chunk each connection had in
    // flight at each cut: chunks are staged as each arrives whole, whichever file they belong to.
    let received = gw_chunk_bytes_in() - before;
    let resent = received.saturating_sub(unique);
    let bound = cuts * CONNECTIONS * MAX_CHUNK;
    let sessions_failed = box_metric("relais_sync_sessions_total", "outcome=\"failed\"");
    let box_out = box_metric("relais_sync_chunk_bytes_total", "direction=\"out\"");
    loud(&format!(
        "{test}: {cuts} cuts mid-film, {sessions_failed} failed sessions; gateway took in \
         {received} chunk bytes for {unique} distinct ({resent} again, bound {bound}); the box read {box_out} \
         chunk bytes to send; agreed {:.1} s after the last restore, {:.1} s in all",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    if std::env::var_os("RURAL_LOGS").is_some() {
        eprintln!("{}", logs());
    }
    assert!(received >= unique, "the gateway counted {received} chunk bytes for {unique} distinct ones");
    assert!(resent <= bound, "{resent} bytes crossed twice after {cuts} cuts, more than {bound}\n{}", logs());
}

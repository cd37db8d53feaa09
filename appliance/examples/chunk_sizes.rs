//! Measures the replication chunk sizes (`relais::sync::chunk`): what the constants there were chosen by.
//!
//! ```sh
//! apt-get install -y rsync          # the reference for (a)
//! cargo run --release -p relais --example chunk_sizes [-- --quick]
//! ```
//!
//! Prints four tables, for average chunk sizes of 8 to 64 KiB:
//! (a) bytes sent for ten 100 MB files (half office-like text with pictures, half video frames), each
//!     after ten edits of a few hundred bytes, against rsync's delta for the same change;
//! (b) dedup: 30 copies of a 50 MB video, then the same video remuxed and re-encoded;
//! (c) cutting throughput on this machine;
//! (d) what the chunk count costs on a 2 Mbit/s, 200 ms link.
//! About 2 GB of scratch files go to the system temporary folder; `--quick` uses 10 MB files instead.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use relais::store::Hash;
use relais::sync::chunk::{Cutter, Manifest};

const KIB: u32 = 1024;
const MB: usize = 1_000_000;
/// The link the box lives on, in bytes per second and seconds.
const LINK: f64 = 2e6 / 8.0;
const RTT: f64 = 0.2;
/// Rounds of ten edited files in (a): one round's hundred edits leave a ratio to rsync uncertain by ±10 %.
const ROUNDS: u64 = 3;

fn cutters() -> Vec<Cutter> {
    let sized = |avg: u32, normalization| Cutter { min: avg / 4, avg, max: avg * 4, normalization };
    let mut all: Vec<Cutter> = [8, 16, 32, 64].map(|k| sized(k * KIB, 1)).into();
    all.extend([sized(16 * KIB, 0), sized(8 * KIB, 2), sized(16 * KIB, 2), sized(8 * KIB, 3), sized(16 * KIB, 3)]);
    all
}

fn name(c: &Cutter) -> String {
    format!("{}/{}/{} KiB n{}", c.min / KIB, c.avg / KIB, c.max / KIB, c.normalization)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let file_size = if quick { 10 * MB } else { 100 * MB };
    let scratch = tempfile::tempdir()?;
    let cutters = cutters();
    edits(&cutters, file_size, scratch.path())?;
    dedup(&cutters, file_size / 2);
    throughput(&cutters, file_size, scratch.path())?;
    link(&cutters, file_size);
    Ok(())
}

fn manifest(cutter: Cutter, bytes: &[u8]) -> Manifest {
    let chunks = cutter.cut(bytes, None).expect("reading memory cannot fail");
    Manifest::from_chunks(Hash(*blake3::hash(bytes).as_bytes()), &chunks)
}

/// What sending `m` to a receiver that holds the chunks `held` costs: the chunks it lacks (which it
/// then holds), and its request for them (32 bytes a chunk).
fn send(m: &Manifest, held: &mut HashSet<Hash>) -> (u64, u64) {
    let mut chunks = 0;
    let mut wanted = 0;
    for &(hash, len) in &m.chunks {
        if held.insert(hash) {
            chunks += u64::from(len);
            wanted += 32;
        }
    }
    (chunks, wanted)
}

// ---------------------------------------------------------------------------------------------------
// (a) small edits in large files, against rsync

fn edits(cutters: &[Cutter], file_size: usize, scratch: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let (old_dir, new_dir) = (scratch.join("old"), scratch.join("new"));
    // Per cutter: chunk bytes, delta manifest bytes, request bytes, and each round's ratio to rsync.
    let mut sent = vec![(0u64, 0u64, 0u64, Vec::new()); cutters.len()];
    let mut rsync_total = (0, 0);
    for round in 0..ROUNDS {
        fs::create_dir_all(&old_dir)?;
        fs::create_dir_all(&new_dir)?;
        let mut round_sent = vec![0u64; cutters.len()];
        // The receiver's chunks so far, per cutter.
        let mut held = vec![HashSet::new(); cutters.len()];
        let mut rng = StdRng::seed_from_u64(round);
        for i in 0..10 {
            eprintln!("(a) round {}/{ROUNDS}, file {}/10", round + 1, i + 1);
            let old = if i % 2 == 0 { office(&mut rng, file_size) } else { video(&mut rng, file_size) };
            let new = edit(&mut rng, &old, 10, i % 2 == 0);
            fs::write(old_dir.join(format!("{i}")), &old)?;
            fs::write(new_dir.join(format!("{i}")), &new)?;
            for (k, cutter) in cutters.iter().enumerate() {
                let base = manifest(*cutter, &old);
                send(&base, &mut held[k]);
                let m = manifest(*cutter, &new);
                let (chunks, wanted) = send(&m, &mut held[k]);
                let delta = m.encode_delta(&base).len() as u64;
                sent[k].0 += chunks;
                sent[k].1 += delta;
                sent[k].2 += wanted;
                round_sent[k] += chunks + delta + wanted;
            }
        }
        eprintln!("(a) rsync");
        let rsync = rsync(&new_dir, &old_dir)?;
        rsync_total = (rsync_total.0 + rsync.0, rsync_total.1 + rsync.1);
        for (k, ours) in round_sent.iter().enumerate() {
            sent[k].3.push(*ours as f64 / (rsync.0 + rsync.1) as f64);
        }
        fs::remove_dir_all(&old_dir)?;
        fs::remove_dir_all(&new_dir)?;
    }
    let (mb, edits) = (file_size / MB, ROUNDS * 100);
    println!("\n(a) {ROUNDS} rounds of ten {mb} MB files (half office-like, half video), {edits} edits in all");
    let rsync = rsync_total.0 + rsync_total.1;
    println!("rsync --no-whole-file: sent {} B, received {} B, total {rsync} B", rsync_total.0, rsync_total.1);
    println!("| cutter (min/avg/max) | chunks B | delta manifest B | request B | total B | ÷ rsync | per round |");
    println!("|---|---|---|---|---|---|---|");
    for (cutter, (chunks, delta, wanted, rounds)) in cutters.iter().zip(&sent) {
        let ours = chunks + delta + wanted;
        let ratio = ours as f64 / rsync as f64;
        let rounds: Vec<String> = rounds.iter().map(|r| format!("{r:.2}")).collect();
        let rounds = rounds.join(" ");
        println!("| {} | {chunks} | {delta} | {wanted} | {ours} | {ratio:.2} | {rounds} |", name(cutter));
    }
    Ok(())
}

/// Runs rsync's delta transfer between two local folders: "Total bytes sent" and "received".
fn rsync(from: &Path, to: &Path) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let output = Command::new("rsync")
        .args(["-rI", "--no-whole-file", "--stats"])
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()))
        .output()
        .map_err(|e| format!("rsync: {e} (apt-get install -y rsync)"))?;
    let stats = String::from_utf8_lossy(&output.stdout);
    let field = |label: &str| -> Option<u64> {
        let line = stats.lines().find(|l| l.starts_with(label))?;
        line[label.len()..].trim().replace(',', "").split_whitespace().next()?.parse().ok()
    };
    match (field("Total bytes sent:"), field("Total bytes received:")) {
        (Some(sent), Some(received)) => Ok((sent, received)),
        _ => Err(format!("no rsync stats in: {stats}{}", String::from_utf8_lossy(&output.stderr)).into()),
    }
}

/// Ten edits of 100 to 500 bytes at random offsets, half insertions, half overwrites, of bytes like
/// the file's own (text in text, noise in video).
fn edit(rng: &mut StdRng, old: &[u8], count: usize, text: bool) -> Vec<u8> {
    let mut new = old.to_vec();
    for _ in 0..count {
        let len = rng.gen_range(100..=500);
        let at = rng.gen_range(0..new.len() - len);
        let bytes = if text { words(rng, len) } else { noise(rng, len) };
        if rng.gen_bool(0.5) {
            new.splice(at..at, bytes);
        } else {
            new[at..at + len].copy_from_slice(&bytes);
        }
    }
    new
}

// ---------------------------------------------------------------------------------------------------
// Content: what a school's files look like to a chunker

fn noise(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

const WORDS: &str = "le la les de des et un une élève classe devoir leçon cahier exercice page mathématiques \
    français histoire géographie sciences lundi mardi jeudi vendredi rendre lire écrire compter \
    problème réponse question texte phrase verbe nom adjectif conjugaison addition soustraction \
    fraction carte fleuve montagne siècle roi république expérience plante eau air pour avec dans \
    sur par que qui est sont avoir être faire voir";

/// Office-like text: paragraphs in XML markup, as in an uncompressed document or a spreadsheet export.
fn words(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut text = Vec::with_capacity(len + 64);
    while text.len() < len {
        if rng.gen_ratio(1, 40) {
            text.extend_from_slice(b"</w:t></w:r></w:p>\n<w:p><w:pPr><w:pStyle w:val=\"Normal\"/></w:pPr><w:r><w:t>");
        }
        // Zipf-like: the first words are far more frequent.
        let i = (rng.gen::<f64>().powi(3) * words.len() as f64) as usize;
        text.extend_from_slice(words[i].as_bytes());
        if rng.gen_ratio(1, 12) {
            text.extend_from_slice(format!(" {}", rng.gen_range(0..10_000)).as_bytes());
        }
        text.push(if rng.gen_ratio(1, 15) { b'.' } else { b' ' });
    }
    text.truncate(len);
    text
}

/// A document or presentation: text with a picture (incompressible) every megabyte or so.
fn office(rng: &mut StdRng, size: usize) -> Vec<u8> {
    let mut file = Vec::with_capacity(size);
    while file.len() < size {
        let text = rng.gen_range(200_000..1_500_000);
        file.extend(words(rng, text));
        let picture = rng.gen_range(20_000..300_000);
        file.extend(noise(rng, picture));
    }
    file.truncate(size);
    file
}

/// A video: frames of incompressible payload, each behind a small header; a keyframe (60 to 150 KB)
/// every 30 frames, 3 to 20 KB otherwise. Returns the frames, so a variant can reframe them.
fn frames(rng: &mut StdRng, size: usize) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut total = 0;
    while total < size {
        let len = if frames.len() % 30 == 0 { rng.gen_range(60_000..150_000) } else { rng.gen_range(3_000..20_000) };
        total += len + 8;
        frames.push(noise(rng, len));
    }
    frames
}

/// Frames in a container: `header_len` bytes of header (size, number, timestamp) before each, and the
/// index (8 bytes a frame) at the end or, as a "fast start" remux puts it, at the front.
fn container(frames: &[Vec<u8>], header_len: usize, index_first: bool) -> Vec<u8> {
    let index: Vec<u8> = frames.iter().flat_map(|f| (f.len() as u64).to_le_bytes()).collect();
    let mut file = Vec::new();
    if index_first {
        file.extend_from_slice(&index);
    }
    for (n, frame) in frames.iter().enumerate() {
        let mut header = Vec::with_capacity(header_len);
        header.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        header.extend_from_slice(&(n as u32).to_be_bytes());
        header.extend_from_slice(&((n * 40 * header_len) as u64).to_be_bytes());
        header.resize(header_len, 0);
        file.extend_from_slice(&header);
        file.extend_from_slice(frame);
    }
    if !index_first {
        file.extend_from_slice(&index);
    }
    file
}

fn video(rng: &mut StdRng, size: usize) -> Vec<u8> {
    let mut file = container(&frames(rng, size), 8, false);
    file.truncate(size);
    file
}

// ---------------------------------------------------------------------------------------------------
// (b) dedup

fn dedup(cutters: &[Cutter], size: usize) {
    eprintln!("(b) dedup");
    let mut rng = StdRng::seed_from_u64(2);
    let frames = frames(&mut rng, size);
    let original = container(&frames, 8, false);
    // Remuxed: the same coded frames in another container (16-byte headers, index first).
    let remuxed = container(&frames, 16, true);
    // Re-encoded: other bits for the same picture.
    let reencoded = video(&mut rng, original.len());
    println!("\n(b) a {} MB video sent 30 times, then remuxed, then re-encoded (bytes sent)", original.len() / MB);
    println!("| cutter | first copy | 29 more copies | as deltas against the first | remuxed | re-encoded |");
    println!("|---|---|---|---|---|---|");
    for cutter in cutters {
        let mut held = HashSet::new();
        let m = manifest(*cutter, &original);
        let (chunks, wanted) = send(&m, &mut held);
        let first = chunks + wanted + m.encode().len() as u64;
        // The copies are new files: a full manifest each, and no chunk.
        let copies: u64 = (1..30).map(|_| send(&m, &mut held)).map(|(c, w)| c + w + m.encode().len() as u64).sum();
        // Or, when the sender knows the receiver holds the first, one copy operation each.
        let deltas = 29 * m.encode_delta(&m).len();
        let cost = |bytes: &[u8], held: &mut HashSet<Hash>| {
            let m = manifest(*cutter, bytes);
            let (chunks, wanted) = send(&m, held);
            let sent = chunks + wanted + m.encode().len() as u64;
            format!("{sent} ({:.0} %)", 100.0 * sent as f64 / bytes.len() as f64)
        };
        let remux = cost(&remuxed, &mut held.clone());
        let reencode = cost(&reencoded, &mut held);
        println!("| {} | {first} | {copies} | {deltas} | {remux} | {reencode} |", name(cutter));
    }
}

// ---------------------------------------------------------------------------------------------------
// (c) throughput

fn throughput(cutters: &[Cutter], size: usize, scratch: &Path) -> Result<(), Box<dyn std::error::Error>> {
    eprintln!("(c) throughput");
    let mut rng = StdRng::seed_from_u64(3);
    let path = scratch.join("throughput");
    let mut content = office(&mut rng, size);
    content.extend(video(&mut rng, size));
    fs::write(&path, &content)?;
    drop(content);
    let len = fs::metadata(&path)?.len() as f64;
    let mbps = |f: &mut dyn FnMut() -> std::io::Result<()>| -> std::io::Result<String> {
        f()?; // warms the page cache
              // The best of three: the cores are shared, and the slower runs measure the neighbours.
        let mut best = f64::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            f()?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        Ok(format!("{:.0}", len / 1e6 / best))
    };
    println!("\n(c) cutting a {} MB file in the page cache, one core (MB/s)", len as usize / MB);
    println!("| cutter | cut + blake3 per chunk | and the file's blake3 (Manifest::from_reader) |");
    println!("|---|---|---|");
    for cutter in cutters {
        let chunks = mbps(&mut || cutter.cut(fs::File::open(&path)?, None).map(drop))?;
        let manifest = mbps(&mut || {
            let mut whole = blake3::Hasher::new();
            cutter.cut(fs::File::open(&path)?, Some(&mut whole)).map(drop)
        })?;
        println!("| {} | {chunks} | {manifest} |", name(cutter));
    }
    let hash_only = mbps(&mut || {
        blake3::Hasher::new().update_reader(fs::File::open(&path)?)?;
        Ok(())
    })?;
    println!("(blake3 of the whole file alone: {hash_only} MB/s)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// (d) per-chunk costs on the link

fn link(cutters: &[Cutter], size: usize) {
    eprintln!("(d) link");
    let mut rng = StdRng::seed_from_u64(4);
    let mut content = office(&mut rng, size / 2);
    content.extend(video(&mut rng, size / 2));
    let mb = content.len() as f64 / 1e8;
    println!("\n(d) per 100 MB on 2 Mbit/s, 200 ms RTT (bandwidth × delay = {:.0} KB)", LINK * RTT / 1e3);
    println!(
        "| cutter | chunks | first-send manifest + request | at 2 Mbit/s | a round trip per chunk would add \
         | chunks per 50 KB in flight | redo after a cut (max chunk) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for cutter in cutters {
        let m = manifest(*cutter, &content);
        let chunks = m.chunks.len() as f64 / mb;
        let overhead = (m.encode().len() as f64 + 32.0 * m.chunks.len() as f64) / mb;
        println!(
            "| {} | {chunks:.0} | {:.0} KB ({:.2} %) | {:.1} s | {:.0} min | {:.1} | {:.2} s |",
            name(cutter),
            overhead / 1e3,
            overhead / 1e6,
            overhead / LINK,
            chunks * RTT / 60.0,
            LINK * RTT / f64::from(cutter.avg),
            f64::from(cutter.max) / LINK,
        );
    }
}

//! Content-defined chunks: the unit in which file contents travel between the box and the region.
//!
//! A file is cut with FastCDC (2020) where its content says, not at fixed offsets, so an insertion moves
//! only the cuts next to it and every other chunk keeps its blake3 name. A [`Manifest`] lists a file's
//! chunks in order; the receiver asks only for the chunks it has nowhere ([`ChunkStage::missing`]), so a
//! chunk held for any file is never sent twice. Each received chunk lands whole, in a file of its own,
//! in a [`ChunkStage`], which is what lets a cut transfer resume at the last complete chunk, and
//! [`ChunkStage::assemble`] checks every chunk and the whole file before the caller makes it visible.
//!
//! Pure functions and the filesystem only: the chunk index (which local blob holds which chunk) belongs
//! to the store, and the transport to its caller.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fastcdc::v2020::{Normalization, StreamCDC};
use rand::RngCore;

use crate::store::Hash;

/// Chunk sizes and normalization, chosen by measurement: `cargo run --release -p relais --example
/// chunk_sizes` (scratch data of the two kinds a school holds; 2 shared cores).
///
/// (a) 3 × ten 100 MB files, half office-like text with pictures, half video frames, each with ten edits
/// of 100–500 bytes (inserts and overwrites), against `rsync --no-whole-file` for the same change
/// (6 400 554 B sent + received); (b) a 50 MB video remuxed (same frames, other container); (c) cutting
/// and hashing on one core; (d) chunks and first-send manifest + request per 100 MB:
///
/// | min/avg/max KiB, level | (a) bytes   | ÷ rsync | (b) remux sent | (c) MB/s | (d) chunks | (d) manifest |
/// |------------------------|-------------|---------|----------------|----------|------------|--------------|
/// | 2/8/32, 1              | 4 177 755   | 0.65    | 63 %           | 863      | 9 690      | 641 KB       |
/// | **2/8/32, 2**          | 3 544 545   | 0.55    | 59 %           | 902      | 10 557     | 697 KB       |
/// | 2/8/32, 3              | 4 143 960   | 0.65    | 57 %           | 935      | 11 185     | 738 KB       |
/// | 4/16/64, 0             | 10 023 702  | 1.57    | 79 %           | 1 019    | 4 651      | 309 KB       |
/// | 4/16/64, 1             | 8 217 618   | 1.28    | 79 %           | 916      | 4 788      | 319 KB       |
/// | 4/16/64, 2             | 6 908 264   | 1.08    | 79 %           | 1 022    | 5 243      | 351 KB       |
/// | 8/32/128, 1            | 15 081 721  | 2.36    | 87 %           | 939      | 2 390      | 160 KB       |
/// | 16/64/256, 1           | 31 455 309  | 4.91    | 95 %           | 999      | 1 192      | 80 KB        |
///
/// An edit costs about the chunk around it, so the average size sets the bill: only 8 KiB stays well
/// under the goal of 1.2 × rsync (16 KiB at level 2 passes at 1.03–1.13 per round, no margin), and on
/// 10 MB files, where rsync's √size blocks shrink to 3 KB, 8 KiB is the least bad (1.84 × against
/// 3.39 × for 16 KiB). Level 2 beats FastCDC's default level 1 by 15 % there, because tighter sizes
/// make the chunk an edit lands in smaller, for 9 % more chunks. What the smaller chunks cost is
/// affordable: 0.7 % of a first send in manifest and request (2.8 s per 100 MB at 2 Mbit/s), twice
/// the index entries of 16 KiB, and cutting at ~900 MB/s, far beyond the disk and the link. It does
/// forbid one round trip per chunk (10 557 × 200 ms = 35 min per 100 MB): ask for chunks in batches,
/// at least 50 KB (bandwidth × delay, 6 chunks) in flight. A cut costs at most one 32 KiB chunk again.
/// Dedup: 29 more copies of a 50 MB video send no chunk, but 5.3 MB of full manifests, or 2 KB as
/// deltas against the first copy; a re-encoded video shares nothing (101 % sent) whatever the sizes.
/// (c) varies by ±15 % between runs on the shared cores; the other figures are deterministic.
///
/// Changing any of these changes every chunk's name: change the `FULL` and `DELTA` tags with them, so
/// manifests cut the old way no longer decode and are cut again.
pub const MIN_CHUNK: u32 = 2 << 10;
/// See [`MIN_CHUNK`].
pub const AVG_CHUNK: u32 = 8 << 10;
/// See [`MIN_CHUNK`].
pub const MAX_CHUNK: u32 = 32 << 10;
/// See [`MIN_CHUNK`].
pub const NORMALIZATION: u8 = 2;

/// The longest chunk a peer's manifest may declare: FastCDC never cuts longer, whatever its sizes, and
/// [`ChunkStage::assemble`] holds one chunk in memory at a time.
pub const LEN_LIMIT: u32 = fastcdc::v2020::MAXIMUM_MAX as u32;

/// The most chunks a decoded manifest may list, so a hostile one cannot make us allocate without bound
/// (a delta can repeat base ranges cheaply). 4 Mi chunks is a 40 GB file at the measured 9.5 KiB mean,
/// two days of a 2 Mbit/s link, and 150 MB of memory.
pub const MAX_CHUNKS: usize = 1 << 22;

/// How FastCDC cuts. Both sides must cut alike or a chunk one holds is never recognised by the other, so
/// replication always uses [`Cutter::DEFAULT`]; other values exist to measure the choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cutter {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    /// FastCDC's normalization level, 0 to 3: higher keeps chunk sizes closer to `avg`.
    pub normalization: u8,
}

/// One chunk of a file: its blake3 and where it lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub hash: Hash,
    pub offset: u64,
    pub len: u32,
}

/// A file's blake3 and size, and its chunks in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub file: Hash,
    pub size: u64,
    pub chunks: Vec<(Hash, u32)>,
}

/// Where chunk bytes that failed their hash came from: says what the caller should do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Bytes handed to [`ChunkStage::put`]: the peer sent something else, ask again.
    Received,
    /// A staged file that rotted since it was checked; it has been removed, so it is fetched again.
    Staged,
    /// The caller's local copy (a blob): that blob needs scrubbing.
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("manifest refused: {0}")]
    Malformed(&'static str),
    #[error("delta manifest is against base {}, but the base here is {}", .expected.to_hex(), .found.to_hex())]
    WrongBase { expected: Hash, found: Hash },
    #[error("chunk {} does not match its hash ({origin})", .hash.to_hex())]
    Corrupt { hash: Hash, origin: Origin },
    #[error("chunk {} is neither staged nor held locally", .hash.to_hex())]
    Missing { hash: Hash },
    #[error("reading chunk {} locally: {source}", .hash.to_hex())]
    Local { hash: Hash, source: io::Error },
    #[error(
        "assembled file is {} ({size} bytes) but its manifest says {} ({expected_size} bytes)",
        .found.to_hex(), .expected.to_hex()
    )]
    FileMismatch { expected: Hash, expected_size: u64, found: Hash, size: u64 },
    #[error("writing the assembled file: {0}")]
    Write(io::Error),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Received => "received bytes",
            Origin::Staged => "staged copy, removed",
            Origin::Local => "local copy",
        })
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ChunkError + '_ {
    move |source| ChunkError::Io { path: path.to_path_buf(), source }
}

fn blake3(bytes: &[u8]) -> Hash {
    Hash(*blake3::hash(bytes).as_bytes())
}

// ---------------------------------------------------------------------------------------------------
// Cutting

impl Cutter {
    pub const DEFAULT: Cutter = Cutter { min: MIN_CHUNK, avg: AVG_CHUNK, max: MAX_CHUNK, normalization: NORMALIZATION };

    /// Cuts a stream into chunks, holding at most `max` bytes of it at a time. With `whole`, also feeds
    /// every byte to it, so a file's own hash costs no second read.
    pub fn cut(self, r: impl Read, mut whole: Option<&mut blake3::Hasher>) -> io::Result<Vec<ChunkRef>> {
        let level = match self.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let stream = StreamCDC::with_level(r, self.min as usize, self.avg as usize, self.max as usize, level);
        let mut chunks = Vec::new();
        for chunk in stream {
            let chunk = chunk?;
            if let Some(whole) = whole.as_deref_mut() {
                whole.update(&chunk.data);
            }
            // A chunk is never longer than `max`, a u32.
            let len = chunk.length as u32;
            chunks.push(ChunkRef { hash: blake3(&chunk.data), offset: chunk.offset, len });
        }
        Ok(chunks)
    }
}

/// Cuts a stream with the replication sizes: a 1 GB file costs one `MAX_CHUNK` buffer, not 1 GB.
pub fn chunk_reader(r: impl Read) -> io::Result<Vec<ChunkRef>> {
    Cutter::DEFAULT.cut(r, None)
}

pub fn chunk_file(path: &Path) -> io::Result<Vec<ChunkRef>> {
    chunk_reader(File::open(path)?)
}

/// Reads one chunk of a file (a local blob), for the sender and for [`ChunkStage::assemble`]'s source.
pub fn read_chunk(path: &Path, chunk: &ChunkRef) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; chunk.len as usize];
    File::open(path)?.read_exact_at(&mut bytes, chunk.offset)?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------------
// Manifests

/// First byte of an encoded manifest: a full one, or a delta against a base the receiver holds. They
/// also stand for [`Cutter::DEFAULT`]: a manifest cut with other sizes must not decode as one of ours.
const FULL: u8 = 1;
const DELTA: u8 = 2;

impl Manifest {
    /// The manifest of content whose blake3 is already known (a blob's name), from its chunks.
    pub fn from_chunks(file: Hash, chunks: &[ChunkRef]) -> Manifest {
        Manifest {
            file,
            size: chunks.iter().map(|c| u64::from(c.len)).sum(),
            chunks: chunks.iter().map(|c| (c.hash, c.len)).collect(),
        }
    }

    /// Cuts and hashes a stream in one pass.
    pub fn from_reader(r: impl Read) -> io::Result<Manifest> {
        let mut whole = blake3::Hasher::new();
        let chunks = Cutter::DEFAULT.cut(r, Some(&mut whole))?;
        Ok(Manifest::from_chunks(Hash(*whole.finalize().as_bytes()), &chunks))
    }

    pub fn from_file(path: &Path) -> io::Result<Manifest> {
        Manifest::from_reader(File::open(path)?)
    }

    /// The chunks with their offsets.
    pub fn refs(&self) -> impl Iterator<Item = ChunkRef> + '_ {
        self.chunks.iter().scan(0u64, |offset, &(hash, len)| {
            let chunk = ChunkRef { hash, offset: *offset, len };
            *offset += u64::from(len);
            Some(chunk)
        })
    }

    /// Whether a file holds exactly this content: its size, every chunk at its offset, and its blake3.
    pub fn verify_file(&self, path: &Path) -> io::Result<bool> {
        let mut file = File::open(path)?;
        if file.metadata()?.len() != self.size {
            return Ok(false);
        }
        let mut whole = blake3::Hasher::new();
        let mut buf = Vec::new();
        for (hash, len) in &self.chunks {
            buf.resize(*len as usize, 0);
            file.read_exact(&mut buf)?;
            if blake3(&buf) != *hash {
                return Ok(false);
            }
            whole.update(&buf);
        }
        Ok(Hash(*whole.finalize().as_bytes()) == self.file)
    }

    /// `FULL`, the file's hash, its size, the chunk count, then each chunk's hash and length: 33 to 35
    /// bytes a chunk.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.chunks.len() * 35);
        out.push(FULL);
        out.extend_from_slice(&self.file.0);
        put_varint(&mut out, self.size);
        put_varint(&mut out, self.chunks.len() as u64);
        for (hash, len) in &self.chunks {
            out.extend_from_slice(&hash.0);
            put_varint(&mut out, u64::from(*len));
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, ChunkError> {
        let mut r = Reader(bytes);
        if r.byte()? != FULL {
            return Err(ChunkError::Malformed("not a full manifest"));
        }
        let file = r.hash()?;
        let size = r.varint()?;
        let count = r.varint()?;
        // Each entry takes at least 33 bytes: a count beyond that is a lie, refused before allocating.
        if count > (r.0.len() / 33) as u64 || count > MAX_CHUNKS as u64 {
            return Err(ChunkError::Malformed("more chunks than the manifest can hold"));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            chunks.push(r.entry()?);
        }
        r.end()?;
        Manifest { file, size, chunks }.checked()
    }

    /// Encodes `self` for a receiver that holds `base` (the previous version of the file): runs of base
    /// chunks by index range, and the new chunks in full, so a small edit costs a few dozen bytes
    /// whatever the size of the file.
    ///
    /// `DELTA`, base hash, file hash, size, then operations until the end, each a varint `n << 1 | kind`:
    /// kind 0 copies base chunks `start..start + n`, `start` given as a zigzag varint relative to the end
    /// of the previous copy (so resuming after an edit costs one byte); kind 1 is followed by `n` entries.
    pub fn encode_delta(&self, base: &Manifest) -> Vec<u8> {
        let mut first = HashMap::with_capacity(base.chunks.len());
        for (i, (hash, _)) in base.chunks.iter().enumerate() {
            first.entry(*hash).or_insert(i);
        }
        let mut out = Vec::with_capacity(80);
        out.push(DELTA);
        out.extend_from_slice(&base.file.0);
        out.extend_from_slice(&self.file.0);
        put_varint(&mut out, self.size);

        let new = &self.chunks;
        let (mut i, mut fresh, mut next) = (0, 0, 0usize);
        while i < new.len() {
            // Prefer continuing the previous run: with repeated chunks (runs of zeros) it keeps runs long.
            let start = if base.chunks.get(next) == Some(&new[i]) {
                Some(next)
            } else {
                first.get(&new[i].0).copied().filter(|&j| base.chunks[j] == new[i])
            };
            let Some(start) = start else {
                fresh += 1;
                i += 1;
                continue;
            };
            put_fresh(&mut out, &new[i - fresh..i]);
            fresh = 0;
            let n = new[i..].iter().zip(&base.chunks[start..]).take_while(|(a, b)| a == b).count();
            put_varint(&mut out, (n as u64) << 1);
            put_varint(&mut out, zigzag(start as i64 - next as i64));
            next = start + n;
            i += n;
        }
        put_fresh(&mut out, &new[i - fresh..i]);
        out
    }

    pub fn decode_delta(bytes: &[u8], base: &Manifest) -> Result<Manifest, ChunkError> {
        let mut r = Reader(bytes);
        if r.byte()? != DELTA {
            return Err(ChunkError::Malformed("not a delta manifest"));
        }
        let expected = r.hash()?;
        if expected != base.file {
            return Err(ChunkError::WrongBase { expected, found: base.file });
        }
        let file = r.hash()?;
        let size = r.varint()?;
        let mut chunks = Vec::new();
        let mut next = 0usize;
        while !r.0.is_empty() {
            let op = r.varint()?;
            let n = op >> 1;
            if n == 0 {
                return Err(ChunkError::Malformed("empty operation"));
            }
            if n > (MAX_CHUNKS - chunks.len()) as u64 {
                return Err(ChunkError::Malformed("too many chunks"));
            }
            let n = n as usize;
            if op & 1 == 0 {
                let start = (next as i64)
                    .checked_add(unzigzag(r.varint()?))
                    .and_then(|s| usize::try_from(s).ok())
                    .filter(|s| s.checked_add(n).is_some_and(|end| end <= base.chunks.len()))
                    .ok_or(ChunkError::Malformed("copy outside the base"))?;
                chunks.extend_from_slice(&base.chunks[start..start + n]);
                next = start + n;
            } else {
                if n > r.0.len() / 33 {
                    return Err(ChunkError::Malformed("more chunks than the manifest can hold"));
                }
                for _ in 0..n {
                    chunks.push(r.entry()?);
                }
            }
        }
        Manifest { file, size, chunks }.checked()
    }

    /// The base a delta manifest is relative to; `None` for a whole one (or bytes that are neither).
    pub fn delta_base(bytes: &[u8]) -> Option<Hash> {
        match bytes {
            [DELTA, rest @ ..] => Some(Hash(rest.get(..32)?.try_into().ok()?)),
            _ => None,
        }
    }

    /// A manifest asked for as a delta against `base`: the sender answers with a full one when it does not
    /// hold the base (nothing there may name it any more), so either form is taken, by its first byte.
    pub fn decode_against(bytes: &[u8], base: Option<&Manifest>) -> Result<Manifest, ChunkError> {
        match base {
            Some(base) if bytes.first() == Some(&DELTA) => Manifest::decode_delta(bytes, base),
            _ => Manifest::decode(bytes),
        }
    }

    /// Refuses what no chunker produces: empty or over-long chunks, lengths that do not add up to the size.
    fn checked(self) -> Result<Manifest, ChunkError> {
        let mut total = 0u64;
        for &(_, len) in &self.chunks {
            if len == 0 {
                return Err(ChunkError::Malformed("empty chunk"));
            }
            if len > LEN_LIMIT {
                return Err(ChunkError::Malformed("chunk too long"));
            }
            total += u64::from(len);
        }
        if total != self.size {
            return Err(ChunkError::Malformed("chunk lengths do not add up to the size"));
        }
        Ok(self)
    }
}

fn put_fresh(out: &mut Vec<u8>, chunks: &[(Hash, u32)]) {
    if chunks.is_empty() {
        return;
    }
    put_varint(out, (chunks.len() as u64) << 1 | 1);
    for (hash, len) in chunks {
        out.extend_from_slice(&hash.0);
        put_varint(out, u64::from(*len));
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// The unread rest of an encoded manifest.
struct Reader<'a>(&'a [u8]);

const TRUNCATED: ChunkError = ChunkError::Malformed("truncated");

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, ChunkError> {
        let (&b, rest) = self.0.split_first().ok_or(TRUNCATED)?;
        self.0 = rest;
        Ok(b)
    }

    fn hash(&mut self) -> Result<Hash, ChunkError> {
        let (hash, rest) = self.0.split_first_chunk::<32>().ok_or(TRUNCATED)?;
        self.0 = rest;
        Ok(Hash(*hash))
    }

    fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if bits << shift >> shift != bits {
                return Err(ChunkError::Malformed("number too large"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ChunkError::Malformed("number too long"))
    }

    fn entry(&mut self) -> Result<(Hash, u32), ChunkError> {
        let hash = self.hash()?;
        let len = u32::try_from(self.varint()?).map_err(|_| ChunkError::Malformed("chunk too long"))?;
        Ok((hash, len))
    }

    fn end(&self) -> Result<(), ChunkError> {
        if !self.0.is_empty() {
            return Err(ChunkError::Malformed("trailing bytes"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Staging and assembly

/// Chunks received for files not yet assembled, each in a file named by its hash.
///
/// A chunk is written to a `part-*` file, fsynced and renamed to its hash, so after a cut the stage
/// holds whole, checked chunks and nothing else that [`has`](Self::has) would count: the transfer
/// resumes by asking again for what [`missing`](Self::missing) lists.
pub struct ChunkStage {
    dir: PathBuf,
}

const PART: &str = "part-";

impl ChunkStage {
    /// Opens the stage, creating its folder, and drops the partial writes a crash left behind. One
    /// process owns a stage: another one's writes in flight would be dropped too.
    pub fn open(dir: &Path) -> Result<ChunkStage, ChunkError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        for entry in fs::read_dir(dir).map_err(io_at(dir))? {
            let entry = entry.map_err(io_at(dir))?;
            if entry.file_name().to_string_lossy().starts_with(PART) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(ChunkStage { dir: dir.to_path_buf() })
    }

    pub fn path(&self, hash: &Hash) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    pub fn has(&self, hash: &Hash) -> bool {
        self.path(hash).is_file()
    }

    /// Stages a received chunk, refusing bytes that are not the chunk asked for.
    pub fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<(), ChunkError> {
        if blake3(bytes) != *hash {
            return Err(ChunkError::Corrupt { hash: *hash, origin: Origin::Received });
        }
        let target = self.path(hash);
        if target.is_file() {
            return Ok(());
        }
        crate::store::ensure_room(&self.dir, bytes.len() as u64)
            .map_err(|source| ChunkError::Io { path: target.clone(), source })?;
        let mut name = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut name);
        let part = self.dir.join(format!("{PART}{}", u64::from_le_bytes(name)));
        let written = File::create_new(&part).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
        if let Err(e) = written.and_then(|()| fs::rename(&part, &target)) {
            let _ = fs::remove_file(&part);
            return Err(ChunkError::Io { path: target, source: e });
        }
        // The rename itself must survive a power cut, or a chunk we said we hold could vanish.
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(io_at(&self.dir))
    }

    pub fn remove(&self, hash: &Hash) -> Result<(), ChunkError> {
        let path = self.path(hash);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(ChunkError::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    /// The chunks to ask the peer for: distinct, in file order, neither staged nor held `local`ly.
    pub fn missing(&self, manifest: &Manifest, local: &dyn Fn(&Hash) -> bool) -> Vec<Hash> {
        let mut seen = HashSet::new();
        manifest
            .chunks
            .iter()
            .map(|(hash, _)| *hash)
            .filter(|hash| seen.insert(*hash) && !self.has(hash) && !local(hash))
            .collect()
    }

    /// Writes the file `manifest` describes to `out`, each chunk taken from the stage or else from
    /// `source` (the caller's local blobs), checking every chunk, then the whole file's size and blake3.
    ///
    /// `out` receives bytes before the last check: it must be a scratch file that the caller makes
    /// visible only on `Ok`. A staged chunk found corrupt is removed, so the next [`missing`] asks for it.
    ///
    /// [`missing`]: Self::missing
    pub fn assemble(
        &self,
        manifest: &Manifest,
        source: &dyn Fn(&Hash) -> io::Result<Option<Vec<u8>>>,
        out: &mut impl Write,
    ) -> Result<(), ChunkError> {
        let mut whole = blake3::Hasher::new();
        let mut size = 0u64;
        for &(hash, len) in &manifest.chunks {
            let path = self.path(&hash);
            let (bytes, origin) = match fs::read(&path) {
                Ok(bytes) => (bytes, Origin::Staged),
                Err(e) if e.kind() == io::ErrorKind::NotFound => match source(&hash) {
                    Ok(Some(bytes)) => (bytes, Origin::Local),
                    Ok(None) => return Err(ChunkError::Missing { hash }),
                    Err(source) => return Err(ChunkError::Local { hash, source }),
                },
                Err(source) => return Err(ChunkError::Io { path, source }),
            };
            if bytes.len() != len as usize || blake3(&bytes) != hash {
                if origin == Origin::Staged {
                    let _ = fs::remove_file(&path);
                }
                return Err(ChunkError::Corrupt { hash, origin });
            }
            out.write_all(&bytes).map_err(ChunkError::Write)?;
            whole.update(&bytes);
            size += u64::from(len);
        }
        out.flush().map_err(ChunkError::Write)?;
        let found = Hash(*whole.finalize().as_bytes());
        if found != manifest.file || size != manifest.size {
            return Err(ChunkError::FileMismatch {
                expected: manifest.file,
                expected_size: manifest.size,
                found,
                size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut bytes = vec![0; len];
        StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
        bytes
    }

    fn manifest(bytes: &[u8]) -> Manifest {
        Manifest::from_reader(bytes).expect("reading a slice")
    }

    /// What the tests' "local blobs" hold: chunks looked up by hash, as the store's chunk index will.
    fn local_of(bytes: &[u8]) -> HashMap<Hash, Vec<u8>> {
        let chunks = chunk_reader(bytes).expect("reading a slice");
        chunks.iter().map(|c| (c.hash, bytes[c.offset as usize..][..c.len as usize].to_vec())).collect()
    }

    fn stage() -> (tempfile::TempDir, ChunkStage) {
        let dir = tempfile::tempdir().expect("tempdir");
        let stage = ChunkStage::open(&dir.path().join("stage")).expect("open stage");
        (dir, stage)
    }

    #[test]
    fn chunks_cover_the_content_in_order_within_the_sizes() {
        let bytes = random(3 << 20, 1);
        let chunks = chunk_reader(&bytes[..]).expect("reading a slice");
        let mut offset = 0;
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset, offset);
            assert!(c.len <= MAX_CHUNK);
            assert!(c.len >= MIN_CHUNK || i == chunks.len() - 1);
            assert_eq!(c.hash, blake3(&bytes[offset as usize..][..c.len as usize]));
            offset += u64::from(c.len);
        }
        assert_eq!(offset, bytes.len() as u64);
        assert!(chunk_reader(&[][..]).expect("empty").is_empty());
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let old = random(4 << 20, 2);
        let mut new = old.clone();
        new.splice(2_000_000..2_000_000, random(300, 3));
        let before: HashSet<Hash> = chunk_reader(&old[..]).expect("old").iter().map(|c| c.hash).collect();
        let after = chunk_reader(&new[..]).expect("new");
        let changed: Vec<&ChunkRef> = after.iter().filter(|c| !before.contains(&c.hash)).collect();
        assert!(!changed.is_empty() && changed.len() <= 3, "{} chunks changed", changed.len());
        for c in changed {
            assert!(c.offset <= 2_000_300 && c.offset + u64::from(c.len) >= 2_000_000, "{c:?} far from the edit");
        }
    }

    #[test]
    fn a_file_is_cut_like_its_bytes_and_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let bytes = random(1 << 20, 4);
        fs::write(&path, &bytes).expect("write");
        let m = Manifest::from_file(&path).expect("manifest");
        assert_eq!(m, manifest(&bytes));
        assert_eq!(m.file, blake3(&bytes));
        assert_eq!(m.size, bytes.len() as u64);
        assert_eq!(chunk_file(&path).expect("chunks"), m.refs().collect::<Vec<_>>());
        assert!(m.verify_file(&path).expect("verify"));
        let third = m.refs().nth(2).expect("three chunks");
        assert_eq!(read_chunk(&path, &third).expect("read"), bytes[third.offset as usize..][..third.len as usize]);

        let mut damaged = bytes.clone();
        damaged[500_000] ^= 1;
        fs::write(&path, &damaged).expect("write");
        assert!(!m.verify_file(&path).expect("verify"));
    }

    #[test]
    fn manifests_round_trip() {
        for m in [manifest(&random(2 << 20, 5)), manifest(b"small"), manifest(b"")] {
            let bytes = m.encode();
            let entries: usize = m.chunks.iter().map(|c| 32 + varint_len(u64::from(c.1))).sum();
            assert_eq!(bytes.len(), 1 + 32 + varint_len(m.size) + varint_len(m.chunks.len() as u64) + entries);
            assert_eq!(Manifest::decode(&bytes).expect("decode"), m);
        }
    }

    fn varint_len(v: u64) -> usize {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out.len()
    }

    #[test]
    fn a_small_edit_costs_a_small_delta() {
        let old = random(8 << 20, 6);
        let mut new = old.clone();
        new.splice(1_000_000..1_000_000, random(200, 7));
        new[5_000_000..5_000_300].copy_from_slice(&random(300, 8));
        new.truncate(7 << 20);
        new.extend_from_slice(&random(100_000, 9));
        let (base, m) = (manifest(&old), manifest(&new));
        let delta = m.encode_delta(&base);
        assert!(delta.len() < 1_000, "delta of {} bytes", delta.len());
        assert_eq!(Manifest::decode_delta(&delta, &base).expect("decode"), m);

        // Against an unrelated base, or an empty one, the delta is the whole list and still decodes.
        let empty = manifest(b"");
        assert_eq!(Manifest::decode_delta(&m.encode_delta(&empty), &empty).expect("decode"), m);
        assert_eq!(Manifest::decode_delta(&empty.encode_delta(&m), &m).expect("decode"), empty);
        // Repeated chunks: a file of zeros grown tenfold is a few copies.
        let (zeros, more) = (manifest(&vec![0; 1 << 20]), manifest(&vec![0; 10 << 20]));
        let delta = more.encode_delta(&zeros);
        assert!(delta.len() < 200, "delta of {} bytes", delta.len());
        assert_eq!(Manifest::decode_delta(&delta, &zeros).expect("decode"), more);
    }

    #[test]
    fn a_delta_needs_its_base() {
        let (base, m) = (manifest(&random(1 << 20, 10)), manifest(&random(1 << 20, 11)));
        let other = manifest(b"other");
        assert!(matches!(Manifest::decode_delta(&m.encode_delta(&base), &other), Err(ChunkError::WrongBase { .. })));
    }

    #[test]
    fn corrupt_or_truncated_manifests_are_refused() {
        let m = manifest(&random(1 << 20, 12));
        let bytes = m.encode();
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Manifest::decode(&longer).is_err(), "trailing bytes");

        let refused = |m: Manifest| Manifest::decode(&m.encode()).expect_err("refused");
        let mut wrong_size = m.clone();
        wrong_size.size += 1;
        refused(wrong_size);
        let mut empty_chunk = m.clone();
        empty_chunk.chunks.push((Hash([0; 32]), 0));
        refused(empty_chunk);
        let mut huge = manifest(b"");
        huge.chunks.push((Hash([0; 32]), LEN_LIMIT + 1));
        huge.size = u64::from(LEN_LIMIT) + 1;
        refused(huge);

        // A count claiming more entries than the bytes hold is refused before allocating.
        let mut lying = vec![FULL];
        lying.extend_from_slice(&[0; 32]);
        lying.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Manifest::decode(&lying).is_err());
        // Numbers longer than 64 bits.
        let mut long = vec![FULL];
        long.extend_from_slice(&[0; 32]);
        long.extend_from_slice(&[0xff; 11]);
        assert!(Manifest::decode(&long).is_err());
        assert!(Manifest::decode_delta(&bytes, &m).is_err(), "a full manifest is not a delta");
    }

    #[test]
    fn a_manifest_asked_against_a_base_may_come_whole() {
        let old = random(300_000, 15);
        let mut new = old.clone();
        new.splice(100_000..100_000, random(500, 16));
        let (base, m) = (manifest(&old), manifest(&new));
        for bytes in [m.encode_delta(&base), m.encode()] {
            assert_eq!(Manifest::decode_against(&bytes, Some(&base)).expect("decodes"), m);
        }
        assert_eq!(Manifest::decode_against(&m.encode(), None).expect("decodes"), m);
        assert!(Manifest::decode_against(&m.encode_delta(&base), None).is_err(), "a delta needs its base");
    }

    #[test]
    fn corrupt_or_truncated_deltas_are_refused() {
        let old = random(2 << 20, 13);
        let mut new = old.clone();
        new.splice(1_000_000..1_000_000, random(300, 14));
        let (base, m) = (manifest(&old), manifest(&new));
        let delta = m.encode_delta(&base);
        for cut in 0..delta.len() {
            assert!(Manifest::decode_delta(&delta[..cut], &base).is_err(), "truncated at {cut}");
        }
        let mut longer = delta.clone();
        longer.extend_from_slice(&[2, 0]);
        assert!(Manifest::decode_delta(&longer, &base).is_err(), "an extra copy");

        let header = |size: u64| {
            let mut d = vec![DELTA];
            d.extend_from_slice(&base.file.0);
            d.extend_from_slice(&m.file.0);
            put_varint(&mut d, size);
            d
        };
        let base_size = base.size;
        let mut beyond = header(base_size);
        put_varint(&mut beyond, (base.chunks.len() as u64 + 1) << 1);
        put_varint(&mut beyond, 0);
        assert!(Manifest::decode_delta(&beyond, &base).is_err(), "copy past the base");
        let mut before = header(base_size);
        put_varint(&mut before, 2);
        put_varint(&mut before, zigzag(-1));
        assert!(Manifest::decode_delta(&before, &base).is_err(), "copy before the base");
        let mut empty_op = header(0);
        put_varint(&mut empty_op, 1);
        assert!(Manifest::decode_delta(&empty_op, &base).is_err(), "empty operation");
        // Copying the whole base again and again is bounded by MAX_CHUNKS, not by memory.
        let mut repeat = header(u64::MAX);
        for _ in 0..(MAX_CHUNKS / base.chunks.len() + 2) {
            put_varint(&mut repeat, (base.chunks.len() as u64) << 1);
            put_varint(&mut repeat, zigzag(-(base.chunks.len() as i64)));
        }
        assert!(Manifest::decode_delta(&repeat, &base).is_err(), "too many chunks");
    }

    #[test]
    fn the_stage_refuses_bytes_that_are_not_the_chunk() {
        let (_dir, stage) = stage();
        let hash = blake3(b"chunk");
        assert!(matches!(stage.put(&hash, b"other"), Err(ChunkError::Corrupt { origin: Origin::Received, .. })));
        assert!(!stage.has(&hash));
        stage.put(&hash, b"chunk").expect("put");
        stage.put(&hash, b"chunk").expect("put twice");
        assert!(stage.has(&hash));
        assert_eq!(fs::read(stage.path(&hash)).expect("read"), b"chunk");
        stage.remove(&hash).expect("remove");
        stage.remove(&hash).expect("remove twice");
        assert!(!stage.has(&hash));
    }

    #[test]
    fn an_interrupted_put_is_not_a_chunk_and_is_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = dir.path().join("stage");
        let stage = ChunkStage::open(&at).expect("open");
        let bytes = random(100_000, 15);
        let m = manifest(&bytes);
        // What a power cut during `put` leaves: a partial write under a temporary name.
        let part = at.join(format!("{PART}123"));
        fs::write(&part, &bytes[..1000]).expect("write");
        assert!(!stage.has(&m.chunks[0].0));
        assert_eq!(stage.missing(&m, &|_| false), m.chunks.iter().map(|c| c.0).collect::<Vec<_>>());
        drop(stage);
        ChunkStage::open(&at).expect("reopen");
        assert!(!part.exists());
    }

    #[test]
    fn missing_lists_each_absent_chunk_once_in_order() {
        let (_dir, stage) = stage();
        let a = random(50_000, 16);
        let b = random(50_000, 17);
        let c = random(50_000, 18);
        let file = [&a[..], &b, &a, &c, &b].concat();
        let m = manifest(&file);
        let (ca, cb, cc) = (manifest(&a), manifest(&b), manifest(&c));
        stage.put(&cc.chunks[0].0, &c[..cc.chunks[0].1 as usize]).expect("put");
        let local: HashSet<Hash> = ca.chunks.iter().map(|c| c.0).collect();
        let missing = stage.missing(&m, &|h| local.contains(h));
        let mut seen = HashSet::new();
        let expected: Vec<Hash> = m
            .chunks
            .iter()
            .map(|c| c.0)
            .filter(|h| !local.contains(h) && *h != cc.chunks[0].0 && seen.insert(*h))
            .collect();
        assert_eq!(missing, expected);
        assert!(cb.chunks.iter().any(|c| missing.contains(&c.0)));
    }

    #[test]
    fn assembly_from_staged_and_local_chunks_reproduces_the_file() {
        let (_dir, stage) = stage();
        let old = random(1 << 20, 19);
        let mut new = old.clone();
        new.splice(300_000..300_000, random(500, 20));
        new[800_000..800_400].copy_from_slice(&random(400, 21));
        let local = local_of(&old);
        let m = manifest(&new);
        let missing = stage.missing(&m, &|h| local.contains_key(h));
        assert!(!missing.is_empty() && missing.len() < m.chunks.len() / 2, "{} of {}", missing.len(), m.chunks.len());
        let sent = local_of(&new);
        for hash in &missing {
            stage.put(hash, &sent[hash]).expect("put");
        }
        let lookups = Cell::new(0);
        let source = |h: &Hash| {
            lookups.set(lookups.get() + 1);
            Ok(local.get(h).cloned())
        };
        let mut out = Vec::new();
        stage.assemble(&m, &source, &mut out).expect("assemble");
        assert_eq!(out, new);
        assert_eq!(lookups.get(), m.chunks.len() - missing.len());
    }

    #[test]
    fn assembly_fails_on_a_corrupt_chunk_and_names_it() {
        let (_dir, stage) = stage();
        let bytes = random(1 << 20, 22);
        let m = manifest(&bytes);
        let mut local = local_of(&bytes);
        let victim = m.chunks[3].0;
        if let Some(chunk) = local.get_mut(&victim) {
            chunk[10] ^= 1;
        }
        let err = stage.assemble(&m, &|h| Ok(local.get(h).cloned()), &mut Vec::new()).expect_err("corrupt");
        assert!(matches!(err, ChunkError::Corrupt { hash, origin: Origin::Local } if hash == victim));
        assert!(err.to_string().contains(&victim.to_hex()), "{err}");

        // A staged chunk that rotted is removed, so the transfer asks for it again.
        let good = local_of(&bytes);
        fs::write(stage.path(&victim), b"rotten").expect("write");
        let err = stage.assemble(&m, &|h| Ok(good.get(h).cloned()), &mut Vec::new()).expect_err("corrupt");
        assert!(matches!(err, ChunkError::Corrupt { origin: Origin::Staged, .. }));
        assert!(!stage.has(&victim));

        let err = stage.assemble(&m, &|_| Ok(None), &mut Vec::new()).expect_err("missing");
        assert!(matches!(err, ChunkError::Missing { hash } if hash == m.chunks[0].0));
        let err = stage.assemble(&m, &|_| Err(io::Error::other("disk")), &mut Vec::new()).expect_err("error");
        assert!(matches!(err, ChunkError::Local { .. }));
    }

    #[test]
    fn assembly_fails_on_a_wrong_file_hash_or_size() {
        let (_dir, stage) = stage();
        let bytes = random(300_000, 23);
        let local = local_of(&bytes);
        let source = |h: &Hash| Ok(local.get(h).cloned());
        let mut m = manifest(&bytes);
        m.file = blake3(b"another file");
        let err = stage.assemble(&m, &source, &mut Vec::new()).expect_err("wrong hash");
        assert!(matches!(err, ChunkError::FileMismatch { .. }));
        assert!(err.to_string().contains(&m.file.to_hex()), "{err}");
        let mut m = manifest(&bytes);
        m.size += 1;
        assert!(matches!(stage.assemble(&m, &source, &mut Vec::new()), Err(ChunkError::FileMismatch { .. })));
    }
}

//! A folder as a zip, streamed: a teacher downloads 30 hand-ins of 50 MB without the box holding 1.5 GB.
//!
//! The `zip` crate writes into a blocking `Write`; a blocking task feeds it the blobs one by one and the
//! writer passes each filled buffer through a bounded channel to the response body, so memory stays at a few
//! buffers whatever the folder's size and a slow client slows the task instead of filling memory.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::Body;

/// One file of the archive.
pub struct Member {
    /// Path inside the archive, `/`-separated.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub modified_ms: i64,
}

const BUFFER: usize = 256 << 10;
/// Buffers in flight between the zip task and the socket.
const IN_FLIGHT: usize = 4;

/// Writes into the channel in `BUFFER`-sized pieces.
pub struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(BUFFER)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BUFFER {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Civil date and time (UTC) of a Unix time, for the zip's DOS timestamps (Howard Hinnant's algorithm).
fn civil(ms: i64) -> (u16, u8, u8, u8, u8, u8) {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as u16, month as u8, day as u8, (rem / 3600) as u8, (rem % 3600 / 60) as u8, (rem % 60) as u8)
}

fn write_all(members: Vec<Member>, out: &mut ChannelWriter) -> zip::result::ZipResult<()> {
    let mut zip = ZipWriter::new_stream(out);
    for m in members {
        let (y, mo, d, h, mi, s) = civil(m.modified_ms);
        let time = zip::DateTime::from_date_and_time(y.max(1980), mo, d, h, mi, s).unwrap_or_default();
        // Hand-ins are mostly PDFs, photos and office files, already compressed: storing keeps the box's CPU
        // free and the download as fast as the LAN.
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .last_modified_time(time)
            .large_file(m.size >= u32::MAX as u64);
        zip.start_file(m.name.as_str(), options)?;
        let mut file = File::open(&m.path)?;
        io::copy(&mut file, &mut zip)?;
    }
    zip.finish()?.flush()?;
    Ok(())
}

pub fn stream(members: Vec<Member>) -> Body {
    blocking_body("zip download", move |out| write_all(members, out).map_err(|e| e.to_string()))
}

/// A response body that blocking code (the `zip` crate's writer) fills on a blocking thread, with memory
/// bounded to a few buffers: a slow client slows the writer down. When `fill` fails, the body ends with an
/// error, so the client sees a cut transfer rather than a short file that looks whole.
pub fn blocking_body<F>(what: &'static str, fill: F) -> Body
where
    F: FnOnce(&mut ChannelWriter) -> Result<(), String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let mut out = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(BUFFER) };
    tokio::task::spawn_blocking(move || {
        let done = fill(&mut out).and_then(|()| out.send().map_err(|e| e.to_string()));
        if let Err(e) = done {
            log::warn!("{what} stopped: {e}");
            let _ = tx.blocking_send(Err(io::Error::other(e)));
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map(Frame::data), rx))
    });
    StreamBody::new(frames).boxed()
}

#[cfg(test)]
mod tests {
    use super::civil;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        // 2026-11-25 03:29:29 UTC
        assert_eq!(civil(1_795_577_369_000), (2026, 11, 25, 3, 29, 29));
        assert_eq!(civil(951_782_400_000), (2000, 2, 29, 0, 0, 0));
    }
}

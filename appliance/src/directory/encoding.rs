//! Bytes to text for directory exports: what the first bytes say a file is, UTF-8 versus Latin-1 per CSV
//! record, and the `BufRead` adapters the parsers stream through (size limit, line counting, Latin-1 XML).
//!
//! ONDE writes Latin-1 (windows-1252 in practice), spreadsheets re-save as UTF-8 with or without BOM. Since
//! Latin-1 decodes any byte string, UTF-8 is tried first: a record that is valid UTF-8 is UTF-8 (Latin-1
//! accented text is practically never valid UTF-8: é is 0xE9, which would need two continuation bytes after
//! it), otherwise windows-1252. The choice is made per record so that a file streams; a file that mixes
//! both gets one issue. Bytes that decode to control characters in either encoding are not text: the row
//! is refused.

use std::io::{self, BufRead, Read};

/// UTF-8 byte order mark, which Excel writes at the start of "CSV UTF-8" files.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// What the first bytes of a file say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// Text, possibly starting with a UTF-8 BOM (`bom` is then its length, to skip).
    Text { bom: usize },
    /// Not text we read; the French message says what the user should do instead.
    Refused(&'static str),
}

/// Looks at the start of a file (whatever the reader has buffered, a few bytes are enough).
pub fn sniff(head: &[u8]) -> Sniff {
    if head.starts_with(UTF8_BOM) {
        return Sniff::Text { bom: UTF8_BOM.len() };
    }
    if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") {
        return Sniff::Refused(
            "fichier enregistré en UTF-16 (« texte Unicode ») : enregistrez-le en « CSV UTF-8 » ou en CSV Latin-1",
        );
    }
    if head.starts_with(b"PK\x03\x04") {
        return Sniff::Refused("fichier ZIP ou classeur Excel (.xlsx/.ods) : enregistrez-le au format CSV");
    }
    if head.starts_with(b"\xD0\xCF\x11\xE0") {
        return Sniff::Refused("classeur Excel ancien format (.xls) : enregistrez-le au format CSV");
    }
    if head.starts_with(b"%PDF") {
        return Sniff::Refused("fichier PDF : déposez l'extraction CSV ou XML d'origine");
    }
    if head.contains(&0) {
        return Sniff::Refused(
            "fichier binaire ou en UTF-16 (octets nuls) : déposez l'extraction d'origine, en UTF-8 ou Latin-1",
        );
    }
    Sniff::Text { bom: 0 }
}

/// True for characters that never appear in a directory export's text: C0 controls other than tab and line
/// breaks, DEL, and the C1 range windows-1252 leaves undefined. Seeing one means the bytes are not text in
/// the encoding we chose.
pub fn is_garbage(c: char) -> bool {
    (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{FFFD}'
}

/// Which encoding a record was read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Ascii,
    Utf8,
    Latin1,
}

/// Decodes CSV records one at a time, remembering what earlier records were, to report a mixed file once.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    first_utf8: Option<u64>,
    first_latin1: Option<u64>,
    mixed_reported: bool,
}

impl RecordDecoder {
    /// Picks the charset of one record from all its bytes (fields concatenated).
    pub fn charset(&self, bytes: &[u8]) -> Charset {
        if bytes.is_ascii() {
            Charset::Ascii
        } else if std::str::from_utf8(bytes).is_ok() {
            Charset::Utf8
        } else {
            Charset::Latin1
        }
    }

    /// Notes the charset of the record at `line`; returns a message the first time the file turns out to
    /// mix UTF-8 and Latin-1 records (its accents are then wrong somewhere).
    pub fn note(&mut self, charset: Charset, line: u64) -> Option<String> {
        match charset {
            Charset::Ascii => return None,
            Charset::Utf8 => {
                self.first_utf8.get_or_insert(line);
            }
            Charset::Latin1 => {
                self.first_latin1.get_or_insert(line);
            }
        }
        if self.mixed_reported {
            return None;
        }
        let (Some(utf8), Some(latin1)) = (self.first_utf8, self.first_latin1) else { return None };
        self.mixed_reported = true;
        Some(format!(
            "le fichier mélange deux encodages (UTF-8 ligne {utf8}, Latin-1 ligne {latin1}) : \
             vérifiez les accents puis enregistrez-le entièrement en « CSV UTF-8 »"
        ))
    }
}

/// Decodes one field in the charset chosen for its record.
pub fn decode_field(bytes: &[u8], charset: Charset) -> String {
    match charset {
        Charset::Ascii | Charset::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        Charset::Latin1 => encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes).0.into_owned(),
    }
}

/// Fails with an [`io::Error`] carrying [`LimitError::File`] once more than `limit` bytes were read, so that a
/// CSV whose quote never closes cannot make the parser buffer gigabytes.
#[derive(Debug)]
pub struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
}

/// Marker carried in the `io::Error` of [`Limited`] and [`LineCounter`], to tell it from a real I/O error.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("fichier de plus de {0} Mo")]
    File(u64),
    #[error("élément XML de plus de {0} Mo")]
    Element(u64),
}

impl<R> Limited<R> {
    pub fn new(inner: R, limit: u64) -> Limited<R> {
        Limited { inner, left: limit, limit }
    }

    fn exceeded(&self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, LimitError::File(self.limit >> 20))
    }
}

impl<R: BufRead> Read for Limited<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        read_through(self, out)
    }
}

impl<R: BufRead> BufRead for Limited<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.left == 0 {
            // Only an error if there is something more to read.
            if self.inner.fill_buf()?.is_empty() {
                return Ok(&[]);
            }
            return Err(self.exceeded());
        }
        let left = usize::try_from(self.left).unwrap_or(usize::MAX);
        let buf = self.inner.fill_buf()?;
        let n = buf.len().min(left);
        Ok(&buf[..n])
    }

    fn consume(&mut self, n: usize) {
        self.left = self.left.saturating_sub(n as u64);
        self.inner.consume(n);
    }
}

/// `Read` for the wrappers here, through their own `BufRead` so their limits and counts apply to every byte.
fn read_through(reader: &mut impl BufRead, out: &mut [u8]) -> io::Result<usize> {
    let buf = reader.fill_buf()?;
    let n = buf.len().min(out.len());
    out[..n].copy_from_slice(&buf[..n]);
    reader.consume(n);
    Ok(n)
}

/// Counts the newlines that went through, to turn quick-xml's byte positions into line numbers, and fails
/// when one XML event grows past `limit` bytes (quick-xml buffers a whole event: a 2 GB text node or
/// DOCTYPE would otherwise sit in memory). The parser calls [`LineCounter::mark`] after each event.
#[derive(Debug)]
pub struct LineCounter<R> {
    inner: R,
    newlines: u64,
    since_mark: u64,
    limit: u64,
}

impl<R: BufRead> LineCounter<R> {
    pub fn new(inner: R, limit: u64) -> LineCounter<R> {
        LineCounter { inner, newlines: 0, since_mark: 0, limit }
    }

    /// Number of the line the next unread byte is on (first line = 1).
    pub fn line(&self) -> u64 {
        self.newlines + 1
    }

    /// Starts a new event: the size limit applies from here.
    pub fn mark(&mut self) {
        self.since_mark = 0;
    }
}

impl<R: BufRead> Read for LineCounter<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        read_through(self, out)
    }
}

impl<R: BufRead> BufRead for LineCounter<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.since_mark > self.limit {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, LimitError::Element(self.limit >> 20)));
        }
        // Never hand out more than one byte past the limit, whatever the inner buffer holds (a whole file
        // in memory is one slice), so that the next call fails.
        let room = usize::try_from(self.limit + 1 - self.since_mark).unwrap_or(usize::MAX);
        let buf = self.inner.fill_buf()?;
        Ok(&buf[..buf.len().min(room)])
    }

    fn consume(&mut self, n: usize) {
        // The bytes being consumed are still the head of the inner buffer: `fill_buf` returns it again
        // without reading.
        if let Ok(buf) = self.inner.fill_buf() {
            let n = n.min(buf.len());
            self.newlines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
        self.since_mark += n as u64;
        self.inner.consume(n);
    }
}

/// Re-encodes a windows-1252 (Latin-1) stream as UTF-8, chunk by chunk, for XML files that declare
/// `encoding="ISO-8859-1"` (quick-xml reads UTF-8 only). A single-byte encoding never splits a character
/// across chunks, and line breaks stay where they were.
#[derive(Debug)]
pub struct Latin1ToUtf8<R> {
    inner: R,
    out: String,
    pos: usize,
}

impl<R: BufRead> Latin1ToUtf8<R> {
    pub fn new(inner: R) -> Latin1ToUtf8<R> {
        Latin1ToUtf8 { inner, out: String::new(), pos: 0 }
    }
}

impl<R: BufRead> Read for Latin1ToUtf8<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        read_through(self, out)
    }
}

impl<R: BufRead> BufRead for Latin1ToUtf8<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.out.len() {
            let chunk = self.inner.fill_buf()?;
            let used = chunk.len();
            self.out.clear();
            self.pos = 0;
            if used > 0 {
                self.out.push_str(&encoding_rs::WINDOWS_1252.decode_without_bom_handling(chunk).0);
            }
            self.inner.consume(used);
        }
        Ok(&self.out.as_bytes()[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.out.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_tells_text_from_what_is_not() {
        assert_eq!(sniff(b"\xEF\xBB\xBFNom;Pr"), Sniff::Text { bom: 3 });
        assert_eq!(sniff(b"\"Nom \xc9l\xe8ve\";"), Sniff::Text { bom: 0 });
        assert!(matches!(sniff(b"\xFF\xFEN\0o\0m\0"), Sniff::Refused(m) if m.contains("UTF-16")));
        assert!(matches!(sniff(b"PK\x03\x04\x14\0"), Sniff::Refused(m) if m.contains("CSV")));
        assert!(matches!(sniff(b"abc\0def"), Sniff::Refused(_)));
    }

    #[test]
    fn records_decode_as_utf8_first_then_latin1_and_mixing_is_reported_once() {
        let mut d = RecordDecoder::default();
        let latin1 = b"L\xe9a";
        let utf8 = "Léa".as_bytes();
        assert_eq!(d.charset(b"Lea"), Charset::Ascii);
        assert_eq!(d.charset(utf8), Charset::Utf8);
        assert_eq!(d.charset(latin1), Charset::Latin1);
        assert_eq!(decode_field(latin1, Charset::Latin1), "Léa");
        assert_eq!(decode_field(utf8, Charset::Utf8), "Léa");
        // Windows-1252 rather than strict ISO-8859-1: 0x9C is œ.
        assert_eq!(decode_field(b"C\x9cur", Charset::Latin1), "Cœur");
        assert_eq!(d.note(Charset::Utf8, 2), None);
        let message = d.note(Charset::Latin1, 7).unwrap_or_default();
        assert!(message.contains("UTF-8 ligne 2, Latin-1 ligne 7"), "{message}");
        assert_eq!(d.note(Charset::Latin1, 8), None);
        // Undefined windows-1252 bytes decode to C1 controls: garbage.
        assert!(decode_field(b"\x81\x8d", Charset::Latin1).chars().all(is_garbage));
    }

    #[test]
    fn limited_reader_fails_past_its_limit() {
        let mut r = Limited::new(&b"0123456789"[..], 4);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert_eq!(out, b"0123");
        let mut r = Limited::new(&b"0123"[..], 4);
        let mut out = Vec::new();
        assert_eq!(r.read_to_end(&mut out).ok(), Some(4));
    }

    #[test]
    fn line_counter_counts_consumed_newlines() {
        let mut r = LineCounter::new(&b"a\nb\n\nc"[..], 100);
        let mut line = String::new();
        r.read_line(&mut line).ok();
        assert_eq!(r.line(), 2);
        let mut rest = String::new();
        r.read_to_string(&mut rest).ok();
        assert_eq!(r.line(), 4);
    }

    #[test]
    fn latin1_xml_is_reencoded() {
        let mut r = Latin1ToUtf8::new(io::BufReader::with_capacity(2, &b"<sn>L\xe9a\n</sn>"[..]));
        let mut s = String::new();
        r.read_to_string(&mut s).ok();
        assert_eq!(s, "<sn>Léa\n</sn>");
    }
}

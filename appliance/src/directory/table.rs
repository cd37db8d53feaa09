//! Reading a CSV export as a header and rows of trimmed text, streaming: encoding sniffed and decoded per
//! record, delimiter guessed from the header line, lines numbered as in the file (header = line 1, a cell
//! spanning lines counts them all), size bounded.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read};

use super::encoding::{self, LimitError, Limited, RecordDecoder, Sniff};
use super::fold::fold;
use super::model::Issue;
use super::values::issue;

/// No school export comes near this; a CSV whose quote never closes would otherwise be buffered whole.
pub const MAX_CSV_BYTES: u64 = 64 << 20;

/// One data row: its first line in the file and its cells, trimmed (missing trailing cells read as "").
#[derive(Debug)]
pub struct Row {
    pub line: u64,
    pub cells: Vec<String>,
}

impl Row {
    pub fn get(&self, column: Option<usize>) -> &str {
        column.and_then(|i| self.cells.get(i)).map_or("", String::as_str)
    }
}

pub struct Table<R> {
    pub file: String,
    pub headers: Vec<String>,
    /// The headers folded (`Prénom Elève` → `prenomeleve`), for matching.
    pub folded: Vec<String>,
    pub header_line: u64,
    /// Set when reading stopped before the end (size limit, I/O error): the file is not complete.
    pub failed: bool,
    csv: csv::Reader<NewlineIndex<Limited<R>>>,
    record: csv::ByteRecord,
    decoder: RecordDecoder,
}

impl<R> std::fmt::Debug for Table<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("file", &self.file).field("headers", &self.headers).finish()
    }
}

/// Line numbers for CSV records. The csv crate's own are off by one after a CRLF (it stops at the CR)
/// and after blank lines (it counts them into the next record), so the reader under it keeps the bytes it
/// has read ahead of the parser: a record's line is one plus the newlines before its first byte that is
/// not a line break. Only the bytes of the record being parsed and the read-ahead are kept.
#[derive(Debug)]
struct NewlineIndex<R> {
    inner: R,
    window: VecDeque<u8>,
    /// Offset of `window[0]` in the file, and newlines before it.
    base: u64,
    passed: u64,
}

impl<R: Read> NewlineIndex<R> {
    fn new(inner: R) -> NewlineIndex<R> {
        NewlineIndex { inner, window: VecDeque::new(), base: 0, passed: 0 }
    }

    /// The line of the first record starting at or after byte `start` (offsets asked for never decrease).
    fn line_from(&mut self, start: u64) -> u64 {
        let skip = usize::try_from(start.saturating_sub(self.base)).unwrap_or(usize::MAX).min(self.window.len());
        self.passed += self.window.range(..skip).filter(|b| **b == b'\n').count() as u64;
        self.window.drain(..skip);
        self.base += skip as u64;
        while let Some(&b) = self.window.front().filter(|b| matches!(b, b'\n' | b'\r')) {
            self.passed += u64::from(b == b'\n');
            self.window.pop_front();
            self.base += 1;
        }
        self.passed + 1
    }
}

impl<R: Read> Read for NewlineIndex<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.window.extend(&out[..n]);
        Ok(n)
    }
}

/// The delimiter of the header line: whichever of `;`, `,` and tab occurs most outside quotes (`;`, the
/// French spreadsheet default and ONDE's, when none does).
pub fn guess_delimiter(head: &[u8]) -> u8 {
    let (mut semicolons, mut commas, mut tabs) = (0, 0, 0);
    let mut quoted = false;
    for &b in head {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => break,
            b';' if !quoted => semicolons += 1,
            b',' if !quoted => commas += 1,
            b'\t' if !quoted => tabs += 1,
            _ => {}
        }
    }
    if commas > semicolons && commas >= tabs {
        b','
    } else if tabs > semicolons && tabs > commas {
        b'\t'
    } else {
        b';'
    }
}

/// Opens a CSV export: refuses what is not text, skips a BOM, reads the header. `None` (with the issue
/// already pushed) when there is nothing to parse.
pub fn open<R: BufRead>(file: &str, mut reader: R, issues: &mut Vec<Issue>) -> Option<Table<R>> {
    let head = match reader.fill_buf() {
        Ok(head) => head,
        Err(e) => {
            issues.push(issue(file, 1, "", format!("lecture du fichier impossible ({e}) : déposez-le à nouveau")));
            return None;
        }
    };
    let bom = match encoding::sniff(head) {
        Sniff::Text { bom } => bom,
        Sniff::Refused(why) => {
            issues.push(issue(file, 1, "", why));
            return None;
        }
    };
    reader.consume(bom);
    let delimiter = match reader.fill_buf() {
        Ok(head) => guess_delimiter(head),
        Err(_) => b';',
    };
    let csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(NewlineIndex::new(Limited::new(reader, MAX_CSV_BYTES)));
    let mut table = Table {
        file: file.to_string(),
        headers: Vec::new(),
        folded: Vec::new(),
        header_line: 1,
        failed: false,
        csv,
        record: csv::ByteRecord::new(),
        decoder: RecordDecoder::default(),
    };
    let Some(header) = table.next_row(issues) else {
        if !table.failed {
            issues.push(issue(file, 1, "", "fichier vide : la première ligne doit nommer les colonnes"));
        }
        return None;
    };
    table.header_line = header.line;
    table.folded = header.cells.iter().map(|h| fold(h)).collect();
    table.headers = header.cells;
    Some(table)
}

impl<R: BufRead> Table<R> {
    /// Index of the first column whose folded header is one of `names` (tried in that order of preference).
    pub fn column(&self, names: &[&str]) -> Option<usize> {
        names.iter().find_map(|name| self.folded.iter().position(|h| h == name))
    }

    /// The header as written in the file, for issues.
    pub fn header(&self, column: Option<usize>, fallback: &str) -> String {
        column.and_then(|i| self.headers.get(i)).cloned().unwrap_or_else(|| fallback.to_string())
    }

    /// One issue per required column that is absent; true if none is.
    pub fn require(&self, wanted: &[(Option<usize>, &str)], issues: &mut Vec<Issue>) -> bool {
        let mut ok = true;
        for (column, name) in wanted {
            if column.is_none() {
                ok = false;
                issues.push(issue(
                    &self.file,
                    self.header_line,
                    name,
                    format!(
                        "colonne « {name} » absente : refaites l'export avec cette colonne (ou renommez l'en-tête)"
                    ),
                ));
            }
        }
        ok
    }

    /// The next non-blank row, or `None` at the end or when reading failed (then `failed` is set and the
    /// issue pushed). Rows whose bytes are text in neither encoding are reported and skipped.
    pub fn next_row(&mut self, issues: &mut Vec<Issue>) -> Option<Row> {
        loop {
            let start = self.csv.position().byte();
            match self.csv.read_byte_record(&mut self.record) {
                Ok(false) => return None,
                Ok(true) => {}
                Err(e) => {
                    self.failed = true;
                    let line = self.csv.get_mut().line_from(start);
                    let message = match &e.kind() {
                        csv::ErrorKind::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<LimitError>()) {
                            Some(limit) => format!("{limit} : découpez-le ou vérifiez qu'il s'agit bien d'un export"),
                            None => format!("lecture interrompue ({io}) : déposez le fichier à nouveau"),
                        },
                        other => format!("fichier CSV illisible ({other:?}) : enregistrez-le à nouveau au format CSV"),
                    };
                    issues.push(issue(&self.file, line, "", message));
                    return None;
                }
            }
            let line = self.csv.get_mut().line_from(start);
            if self.record.iter().all(|cell| cell.trim_ascii().is_empty()) {
                continue;
            }
            let charset = self.decoder.charset(self.record.as_slice());
            if let Some(message) = self.decoder.note(charset, line) {
                issues.push(issue(&self.file, line, "", message));
            }
            let cells: Vec<String> =
                self.record.iter().map(|cell| encoding::decode_field(cell, charset).trim().to_string()).collect();
            if let Some(bad) = cells.iter().position(|c| c.chars().any(encoding::is_garbage)) {
                let field = self.headers.get(bad).cloned().unwrap_or_default();
                issues.push(issue(
                    &self.file,
                    line,
                    &field,
                    "ligne illisible : ses octets ne sont du texte ni en UTF-8 ni en Latin-1 ; \
                     vérifiez le fichier et enregistrez-le en « CSV UTF-8 »",
                ));
                continue;
            }
            // A quote that never closes swallows the following lines into one cell and leaves the row short.
            if cells.len() < self.headers.len() {
                if let Some(bad) = cells.iter().position(|c| c.contains('\n')) {
                    let field = self.headers.get(bad).cloned().unwrap_or_default();
                    issues.push(issue(
                        &self.file,
                        line,
                        &field,
                        "guillemet « \" » sans fin : la case englobe les lignes suivantes ; corrigez les guillemets",
                    ));
                    continue;
                }
            }
            return Some(Row { line, cells });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiter_is_guessed_from_the_header_line() {
        assert_eq!(guess_delimiter(b"\"Nom\";\"Pr\xe9nom\";\"Classe, niveau\"\nx,y,z,w"), b';');
        assert_eq!(guess_delimiter(b"Nom de famille,Pr\xc3\xa9nom,Classe\n"), b',');
        assert_eq!(guess_delimiter(b"Nom\tPrenom\tClasse"), b'\t');
        assert_eq!(guess_delimiter(b"Nom"), b';');
    }

    #[test]
    fn rows_keep_the_file_line_numbers() {
        let data = "\u{feff}Nom;Prénom\n\n\"Dupont\";\"Léa\"\n\"Multi\nligne\";Zoé\n  ;  \nMartin;Éloïse\n";
        let mut issues = Vec::new();
        let mut table = open("t.csv", data.as_bytes(), &mut issues).expect("table");
        assert_eq!(table.headers, ["Nom", "Prénom"]);
        assert_eq!(table.header_line, 1);
        let mut rows = Vec::new();
        while let Some(row) = table.next_row(&mut issues) {
            rows.push((row.line, row.cells.join("|")));
        }
        assert_eq!(rows, [(3, "Dupont|Léa".to_string()), (4, "Multi\nligne|Zoé".into()), (7, "Martin|Éloïse".into())]);
        assert!(issues.is_empty(), "{issues:?}");
        assert!(!table.failed);
    }

    #[test]
    fn crlf_blank_lines_and_multiline_cells_keep_the_right_lines() {
        let data = "Nom;Prénom\r\n\r\nDupont;Léa\r\n\"Multi\r\nligne\";Zoé\r\n\r\n\r\nMartin;Éloïse";
        let mut issues = Vec::new();
        let mut table = open("t.csv", data.as_bytes(), &mut issues).expect("table");
        let mut lines = Vec::new();
        while let Some(row) = table.next_row(&mut issues) {
            lines.push(row.line);
        }
        assert_eq!(lines, [3, 4, 8]);
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn refused_and_empty_files_say_why() {
        let mut issues = Vec::new();
        assert!(open("x.csv", &b"\xFF\xFEN\0"[..], &mut issues).is_none());
        assert!(open("x.csv", &b""[..], &mut issues).is_none());
        assert!(issues[0].message.contains("UTF-16"));
        assert!(issues[1].message.contains("vide"));
        let mut issues = Vec::new();
        let mut table = open("x.csv", &b"Nom;Pr\xe9nom\nA\x01;B\nC;D\n"[..], &mut issues).expect("table");
        assert_eq!(table.next_row(&mut issues).map(|r| r.line), Some(3));
        assert_eq!((issues[0].line, issues[0].field.as_str()), (2, "Nom"));
    }
}

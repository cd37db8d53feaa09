//! The school's directory from the national exports: parsing (ONDE CSV for primary schools, AAF XML for
//! secondary ones, any CSV with recognisable headers) into [`Parsed`] people and French issues, and
//! importing them (`import`, `upload`: matching against the box's accounts).
//!
//! [`parse_file`] picks the parser from the file name and, when the name does not say, from the first
//! bytes or the header line. Every parser streams, never panics on input, and reports each problem with
//! the file, the line (header = line 1; for XML the element's line) and the field, then goes on: a file
//! with errors yields all its issues and the people it could read.

/// The bytes of a fixture under `tests/fixtures/directory/`.
#[cfg(test)]
macro_rules! fixture {
    ($path:literal) => {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/directory/", $path)).expect($path)
    };
}

pub mod aaf;
pub mod encoding;
pub mod fold;
pub mod generic;
pub mod import;
pub mod model;
pub mod onde;
mod table;
pub mod upload;
mod values;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::BufRead;

use serde::{Deserialize, Serialize};

pub use model::{ChildRef, Issue, Origin, Parsed, Person};
pub use onde::OndeKind;

use aaf::AafKind;

/// An établissement described by an AAF `EtabEducNat` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct School {
    pub uai: String,
    pub name: String,
    pub origin: Origin,
}

impl fmt::Display for Issue {
    /// `eleves.csv ligne 42 : date de naissance « 31/02/2012 » invalide (attendu JJ/MM/AAAA)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ligne {} : {}", self.file, self.line, self.message)
    }
}

/// The formats [`parse_file`] knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Onde(OndeKind),
    /// A CSV whose name does not say which: ONDE if its headers are ONDE's, else generic.
    Csv,
    Aaf(AafKind),
    Unknown,
}

/// The last component of a path, whichever the separator (browsers on Windows send `C:\…\x.csv`).
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// Chooses the format from the file name, then from the first bytes (`head`) for names that do not say.
pub fn detect(name: &str, head: &[u8]) -> Format {
    let base = base_name(name);
    let lower = base.to_lowercase();
    let folded = fold::fold(base);
    if folded.contains("csvextraction") {
        if folded.contains("eleve") {
            return Format::Onde(OndeKind::Eleves);
        } else if folded.contains("enseignant") {
            return Format::Onde(OndeKind::Enseignants);
        } else if folded.contains("responsable") {
            return Format::Onde(OndeKind::Responsables);
        }
        return Format::Csv;
    }
    if lower.ends_with(".xml") || (lower.starts_with("ent_") && aaf::kind_of(base) != AafKind::Unknown) {
        return Format::Aaf(aaf::kind_of(base));
    }
    if lower.ends_with(".csv") || lower.ends_with(".txt") {
        return Format::Csv;
    }
    let head = head.strip_prefix(encoding::UTF8_BOM).unwrap_or(head);
    if head.trim_ascii_start().starts_with(b"<") {
        Format::Aaf(aaf::kind_of(base))
    } else {
        Format::Unknown
    }
}

/// Parses one export file. `name` is the file's name as uploaded (a path is fine: only its last component
/// counts, and it is what issues name).
pub fn parse_file(name: &str, mut reader: impl BufRead) -> Parsed {
    let file = base_name(name);
    let format = match reader.fill_buf() {
        Ok(head) => detect(file, head),
        Err(_) => detect(file, &[]),
    };
    match format {
        Format::Onde(kind) => onde::parse(kind, file, reader),
        Format::Csv => {
            let mut parsed = Parsed::default();
            if let Some(table) = table::open(file, reader, &mut parsed.issues) {
                match onde::kind_from_headers(&table.folded) {
                    Some(kind) => onde::parse_table(kind, table, &mut parsed),
                    None => generic::parse_table(table, &mut parsed),
                }
            }
            parsed
        }
        Format::Aaf(_) => aaf::parse(file, reader),
        Format::Unknown => Parsed {
            issues: vec![values::issue(
                file,
                1,
                "",
                "format de fichier inconnu : déposez les extractions ONDE (CSVExtraction-….csv), les fichiers AAF \
                 (ENT_….xml) ou un tableau enregistré en CSV",
            )],
            ..Parsed::default()
        },
    }
}

/// [`parse_file`] over bytes already in memory.
pub fn parse_bytes(name: &str, bytes: &[u8]) -> Parsed {
    parse_file(name, bytes)
}

/// Parses an AAF `EtabEducNat` file into the schools it describes ([`parse_file`] gives no people for it).
pub fn parse_schools(name: &str, reader: impl BufRead) -> (Vec<School>, Vec<Issue>) {
    aaf::parse_schools(base_name(name), reader)
}

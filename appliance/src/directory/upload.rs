//! What an admin uploads: one export file, or a zip of several, read without trusting it.
//!
//! A zip is checked before any member is parsed: no absolute or `..` names, no links, a bounded number of
//! members and a bounded total uncompressed size (the zip-bomb guard), and each member's declared size must
//! hold as it is read.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use super::model::{Issue, Parsed};

/// Most members an import zip may hold (a complete AAF set is a handful of files, one per kind and batch).
const MAX_MEMBERS: usize = 256;

fn problem(file: &str, message: String) -> Issue {
    Issue { file: file.to_string(), line: 0, field: String::new(), message }
}

/// A name for an upload that came without one, from its first bytes.
fn sniff_name(head: &[u8]) -> &'static str {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let first = head.iter().find(|b| !b.is_ascii_whitespace());
    if head.starts_with(b"PK\x03\x04") {
        "import.zip"
    } else if first == Some(&b'<') {
        "import.xml"
    } else {
        "import.csv"
    }
}

/// Parses an uploaded file (kept on disk at `path`), named `name` if the client said so.
/// `max_expanded` bounds what a zip may unpack to.
pub fn read(name: Option<&str>, path: &Path, max_expanded: u64) -> Vec<Parsed> {
    let fail = |file: &str, message: String| vec![Parsed { issues: vec![problem(file, message)], ..Parsed::default() }];
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return fail(name.unwrap_or("import"), format!("lecture impossible : {e}")),
    };
    let mut head = [0u8; 512];
    let n = file.read(&mut head).unwrap_or(0);
    let name = name.filter(|n| !n.is_empty()).unwrap_or_else(|| sniff_name(&head[..n])).to_string();
    if file.rewind().is_err() {
        return fail(&name, "lecture impossible".into());
    }
    if head[..n].starts_with(b"PK\x03\x04") {
        return read_zip(&name, file, max_expanded);
    }
    vec![super::parse_file(&name, BufReader::new(file))]
}

fn read_zip(zip_name: &str, file: File, max_expanded: u64) -> Vec<Parsed> {
    let fail = |message: String| vec![Parsed { issues: vec![problem(zip_name, message)], ..Parsed::default() }];
    let mut archive = match zip::ZipArchive::new(BufReader::new(file)) {
        Ok(a) => a,
        Err(e) => return fail(format!("archive zip illisible : {e}")),
    };
    if archive.len() > MAX_MEMBERS {
        return fail(format!("l'archive contient {} fichiers ; {MAX_MEMBERS} au plus sont acceptés", archive.len()));
    }
    // Check every member before parsing any.
    let mut total: u64 = 0;
    let mut members = Vec::new();
    for i in 0..archive.len() {
        let member = match archive.by_index_raw(i) {
            Ok(m) => m,
            Err(e) => return fail(format!("archive zip illisible : {e}")),
        };
        let raw_name = member.name().map(|n| n.to_string()).unwrap_or_else(|_| format!("membre {i}"));
        if member.is_dir() {
            continue;
        }
        if member.is_symlink() {
            return fail(format!("« {raw_name} » est un lien : refusé"));
        }
        let Some(safe) = member.enclosed_name() else {
            return fail(format!("« {raw_name} » : chemin dangereux (absolu ou avec « .. ») refusé"));
        };
        total = total.saturating_add(member.size());
        if total > max_expanded {
            return fail(format!("l'archive décompressée dépasse {max_expanded} octets : refusée (bombe zip ?)"));
        }
        let base = safe.file_name().and_then(|n| n.to_str()).unwrap_or(&raw_name).to_string();
        if base.starts_with('.') || base.starts_with("__MACOSX") || raw_name.starts_with("__MACOSX/") {
            continue;
        }
        members.push((i, base, member.size()));
    }
    let mut out = Vec::new();
    for (i, base, declared) in members {
        let member = match archive.by_index(i) {
            Ok(m) => m,
            Err(e) => return fail(format!("« {base} » illisible dans l'archive : {e}")),
        };
        // `take` holds the member to its declared size even if the header lies.
        let reader = BufReader::new(member.take(declared));
        // Errors name the member, the file the school actually exported.
        out.push(super::parse_file(&base, reader));
    }
    if out.is_empty() {
        return fail("l'archive ne contient aucun fichier".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameless_uploads_are_recognised_by_their_first_bytes() {
        assert_eq!(sniff_name(b"PK\x03\x04rest"), "import.zip");
        assert_eq!(sniff_name(b"\xEF\xBB\xBF<?xml version"), "import.xml");
        assert_eq!(sniff_name(b"  <addRequest"), "import.xml");
        assert_eq!(sniff_name(b"\"Nom\";\"Prenom\""), "import.csv");
    }
}

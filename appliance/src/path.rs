//! Paths as users send them (`me/Devoirs/exposé.pdf`), checked before anything touches the store.
//!
//! Every segment is percent-decoded, must be UTF-8, is normalised to NFC (macOS sends accents decomposed,
//! Windows composed: both must name the same file), and may not be empty, `.`, `..`, contain a slash,
//! a backslash, NUL or a control character, or be longer than a filesystem name.

use percent_encoding::percent_decode_str;
use unicode_normalization::UnicodeNormalization;

/// Longest name, in bytes, as on ext4.
pub const MAX_NAME: usize = 255;
/// Longest path, in bytes, and deepest nesting.
pub const MAX_PATH: usize = 4096;
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("chemin invalide : un nom de fichier est vide (double « / » ou chemin absolu)")]
    Empty,
    #[error("chemin invalide : « . » et « .. » ne sont pas des noms de fichier")]
    Dots,
    #[error("chemin invalide : les noms ne peuvent contenir ni « \\ », ni caractère de contrôle")]
    Forbidden,
    #[error("chemin invalide : encodage incorrect (UTF-8 attendu)")]
    Encoding,
    #[error("chemin invalide : nom de plus de 255 octets")]
    NameTooLong,
    #[error("chemin invalide : chemin trop long ou trop profond")]
    PathTooLong,
}

/// A validated path: its segments, and whether it ended with `/` (the client asks for a folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPath {
    pub segments: Vec<String>,
    pub trailing_slash: bool,
}

/// Checks one already-decoded name and returns it in NFC.
pub fn normalize_segment(name: &str) -> Result<String, PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    let name: String = name.nfc().collect();
    if name == "." || name == ".." {
        return Err(PathError::Dots);
    }
    if name.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err(PathError::Forbidden);
    }
    if name.len() > MAX_NAME {
        return Err(PathError::NameTooLong);
    }
    Ok(name)
}

/// Parses the percent-encoded tail of a URL (what follows `/api/files/`). The empty string is the root.
pub fn parse(raw: &str) -> Result<UserPath, PathError> {
    if raw.len() > MAX_PATH * 3 {
        return Err(PathError::PathTooLong);
    }
    if raw.is_empty() {
        return Ok(UserPath { segments: Vec::new(), trailing_slash: true });
    }
    let trailing_slash = raw.ends_with('/');
    let body = raw.strip_suffix('/').unwrap_or(raw);
    let mut segments = Vec::new();
    let mut total = 0;
    for part in body.split('/') {
        let decoded = percent_decode_str(part).decode_utf8().map_err(|_| PathError::Encoding)?;
        let name = normalize_segment(&decoded)?;
        total += name.len() + 1;
        segments.push(name);
    }
    if total > MAX_PATH || segments.len() > MAX_DEPTH {
        return Err(PathError::PathTooLong);
    }
    Ok(UserPath { segments, trailing_slash })
}

/// Percent-encodes a path for a URL, keeping the slashes between segments.
pub fn encode(segments: &[String]) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    segments.iter().map(|s| percent_encoding::utf8_percent_encode(s, SET).to_string()).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(raw: &str) -> Vec<String> {
        parse(raw).map(|p| p.segments).unwrap_or_default()
    }

    #[test]
    fn french_names_work_and_compare_equal_across_normalisations() {
        assert_eq!(segs("me/Devoirs/expos%C3%A9.pdf"), ["me", "Devoirs", "exposé.pdf"]);
        // "é" decomposed (e + U+0301), as macOS sends it, names the same file.
        assert_eq!(segs("me/expose%CC%81.pdf"), ["me", "exposé.pdf"]);
        assert_eq!(segs("me/CM2 A/l'été"), ["me", "CM2 A", "l'été"]);
        assert!(parse("me/dossier/").map(|p| p.trailing_slash).unwrap_or(false));
    }

    #[test]
    fn hostile_paths_are_refused() {
        let cases = [
            ("me/../x", PathError::Dots),
            ("me/%2e%2e/x", PathError::Dots),
            ("me/%2E%2E", PathError::Dots),
            ("me/./x", PathError::Dots),
            ("/etc/passwd", PathError::Empty),
            ("me//x", PathError::Empty),
            ("me/a%2fb", PathError::Forbidden),
            ("me/a%5cb", PathError::Forbidden),
            ("me/a%00b", PathError::Forbidden),
            ("me/a%0ab", PathError::Forbidden),
            ("me/a%7fb", PathError::Forbidden),
            ("me/%ff%fe", PathError::Encoding),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse(raw), Err(expected), "{raw}");
        }
        assert_eq!(parse(&format!("me/{}", "a".repeat(256))), Err(PathError::NameTooLong));
        assert_eq!(parse(&"a/".repeat(70)), Err(PathError::PathTooLong));
    }

    #[test]
    fn encode_round_trips() {
        let p = vec!["me".to_string(), "exposé final #2?.pdf".to_string()];
        assert_eq!(segs(&encode(&p)), p);
    }
}

//! Checks of single values shared by every parser: dates, class names, e-mail addresses, names, derived
//! ids, and the wording of the issues they raise.

use std::collections::HashMap;

use super::fold::fold;
use super::model::Issue;
use crate::path::{self, PathError};

/// Longest first or last name kept (the portal's display name holds 128 characters).
pub const MAX_NAME_CHARS: usize = 128;

pub fn issue(file: &str, line: u64, field: &str, message: impl Into<String>) -> Issue {
    Issue { file: file.to_string(), line, field: field.to_string(), message: message.into() }
}

/// `JJ/MM/AAAA` (ONDE, AAF) or `AAAA-MM-JJ`, checked against the calendar, as ISO `AAAA-MM-JJ`.
pub fn parse_date(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let (y, m, d) = if let Some((d, rest)) = raw.split_once('/') {
        let (m, y) = rest.split_once('/')?;
        (y, m, d)
    } else {
        let mut parts = raw.splitn(3, '-');
        let y = parts.next()?;
        (y, parts.next()?, parts.next()?)
    };
    let number = |s: &str, min: usize, max: usize| -> Option<u32> {
        if s.len() < min || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, m, d) = (number(y, 4, 4)?, number(m, 1, 2)?, number(d, 1, 2)?);
    // Birth dates: a year outside this range is a typo, not a person.
    if !(1900..=2100).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if d == 0 || d > days {
        return None;
    }
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

pub fn bad_date_message(raw: &str) -> String {
    match raw.trim() {
        "" => "date de naissance vide (attendu JJ/MM/AAAA)".to_string(),
        raw => format!("date de naissance « {raw} » invalide (attendu JJ/MM/AAAA)"),
    }
}

/// A class (or group) name usable as a folder name under `classes/`: trimmed, NFC, no `/`, `\` or control
/// character, not `.`, `..` nor `rendus` (each class folder has a `rendus` subfolder), at most 255 bytes.
/// The error is the French message of the issue.
pub fn check_class(raw: &str, what: &str) -> Result<String, String> {
    let name = raw.trim();
    let why = match path::normalize_segment(name) {
        Ok(n) if n != "rendus" => return Ok(n),
        Ok(_) => "« rendus » est réservé au dossier des devoirs rendus",
        Err(PathError::Empty) => "nom vide",
        Err(PathError::Dots) => "« . » et « .. » ne peuvent pas nommer un dossier",
        Err(PathError::NameTooLong) => "plus de 255 octets",
        Err(_) => "les caractères « / », « \\ » et de contrôle sont interdits",
    };
    Err(format!(
        "{what} « {name} » invalide ({why}) : corrigez ce nom dans le logiciel d'origine puis refaites l'export"
    ))
}

/// A plausible e-mail address, trimmed, as given. The error is the French message of the issue.
pub fn check_email(raw: &str) -> Result<String, String> {
    let mail = raw.trim();
    let ok = mail.len() <= 254
        && !mail.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
        && matches!(mail.split_once('@'), Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.contains('@')
               && !domain.starts_with('.') && !domain.ends_with('.'));
    if ok {
        Ok(mail.to_string())
    } else {
        Err(format!("courriel « {mail} » invalide : corrigez-le (forme prenom.nom@domaine.fr) ou videz la case"))
    }
}

/// A first or last name: trimmed, not empty, no control character, not absurdly long. Kept verbatim
/// otherwise — including text a spreadsheet would take for a formula (`=…`, `+…`, `@…`): that is data,
/// escaped by whoever writes it back to a spreadsheet.
pub fn check_name(raw: &str, what: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(format!("{what} vide : complétez-le"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} « {} » contient un caractère de contrôle : corrigez-le", name.escape_debug()));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("{what} de plus de {MAX_NAME_CHARS} caractères : raccourcissez-le"));
    }
    Ok(name.to_string())
}

/// `prefix:` + the first 16 hex digits of blake3 over the parts joined by `|`. The parts are folded by the
/// caller, so that a re-typed accent or a case change keeps the same id.
pub fn derive_id(prefix: &str, parts: &[&str]) -> String {
    let hash = blake3::hash(parts.join("|").as_bytes()).to_hex();
    format!("{prefix}:{}", &hash.as_str()[..16])
}

/// The usual derivations, shared by ONDE (`onde:`) and generic CSV (`csv:`): pupils by name and birth
/// date, adults by e-mail if they have one else by name, guardians by name and e-mail (two parents may
/// share an address, and homonyms are common among adults with no date to tell them apart).
pub fn pupil_id(prefix: &str, last: &str, first: &str, birth: &str) -> String {
    derive_id(prefix, &[&fold(last), &fold(first), birth])
}

pub fn adult_id(prefix: &str, last: &str, first: &str, email: Option<&str>) -> String {
    match email {
        Some(mail) => derive_id(prefix, &[&fold(mail)]),
        None => derive_id(prefix, &[&fold(last), &fold(first)]),
    }
}

pub fn guardian_id(prefix: &str, last: &str, first: &str, email: Option<&str>) -> String {
    derive_id(prefix, &[&fold(last), &fold(first), &fold(email.unwrap_or(""))])
}

pub fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// External ids seen so far in one file, with the line of their first occurrence.
#[derive(Debug, Default)]
pub struct Seen(HashMap<String, u64>);

impl Seen {
    /// Records `id` at `line`; if it was already there, returns the first line instead.
    pub fn first_line(&mut self, id: &str, line: u64) -> Option<u64> {
        match self.0.get(id) {
            Some(first) => Some(*first),
            None => {
                self.0.insert(id.to_string(), line);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_checked_against_the_calendar() {
        assert_eq!(parse_date("31/03/2012").as_deref(), Some("2012-03-31"));
        assert_eq!(parse_date(" 2012-03-31 ").as_deref(), Some("2012-03-31"));
        assert_eq!(parse_date("1/9/2015").as_deref(), Some("2015-09-01"));
        assert_eq!(parse_date("29/02/2016").as_deref(), Some("2016-02-29"));
        assert_eq!(parse_date("29/02/2000").as_deref(), Some("2000-02-29"));
        for bad in [
            "31/02/2012",
            "29/02/2015",
            "29/02/1900",
            "00/01/2012",
            "12/13/2012",
            "31/04/2012",
            "2012/03/31",
            "31-03-2012",
            "3l/03/2012",
            "31/03/12",
            "",
            "31/03/2012/1",
            "+1/03/2012",
            "1800-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(bad_date_message("31/02/2012"), "date de naissance « 31/02/2012 » invalide (attendu JJ/MM/AAAA)");
    }

    #[test]
    fn class_names_must_be_folder_names() {
        assert_eq!(check_class("  CM2 A ", "classe").as_deref(), Ok("CM2 A"));
        assert_eq!(check_class("CE1-CE2", "classe").as_deref(), Ok("CE1-CE2"));
        for bad in ["3/A", "..", ".", "rendus", "a\\b", "a\u{1}b", &"x".repeat(256)] {
            assert!(check_class(bad, "classe").is_err(), "{bad}");
        }
        let message = check_class("3/A", "classe").err().unwrap_or_default();
        assert!(message.starts_with("classe « 3/A » invalide"), "{message}");
    }

    #[test]
    fn emails_and_names() {
        assert_eq!(check_email(" lea.dupont@ac-exemple.fr ").as_deref(), Ok("lea.dupont@ac-exemple.fr"));
        for bad in ["lea", "lea@", "@x.fr", "lea@localhost", "a b@x.fr", "a@b@c.fr", "a@.fr"] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
        assert_eq!(check_name("  =1+1 ", "nom").as_deref(), Ok("=1+1"));
        assert!(check_name("  ", "nom").is_err());
        assert!(check_name("a\u{7}", "nom").is_err());
    }

    #[test]
    fn derived_ids_ignore_case_and_accents() {
        let a = pupil_id("onde", "DUPONT", "Léa", "2012-03-31");
        assert_eq!(a, pupil_id("onde", "Dupont", "LEA", "2012-03-31"));
        assert_ne!(a, pupil_id("onde", "Dupont", "Léa", "2012-04-01"));
        assert!(a.starts_with("onde:") && a.len() == 5 + 16, "{a}");
        assert_eq!(adult_id("csv", "X", "Y", Some("A@B.fr")), adult_id("csv", "Z", "W", Some("a@b.fr")));
        assert_ne!(guardian_id("onde", "Martin", "Paul", None), guardian_id("onde", "Martin", "Paul", Some("p@x.fr")));
    }
}

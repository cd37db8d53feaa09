//! Folding of names for comparison: header matching (`Prénom Élève` = `prenomeleve`), stable ids and
//! login parts (`Jean-Éric` → `jean-eric`).
//!
//! Both functions decompose with NFKD rather than NFD: compatibility forms (the `ﬁ` ligature, full-width
//! letters Excel sometimes leaves behind, `º`) then fold like their plain letters, and accents come out as
//! combining marks that are dropped.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Letters NFKD leaves whole but French users type as two ASCII letters (or one).
fn ascii_equivalent(c: char) -> Option<&'static str> {
    Some(match c {
        'œ' => "oe",
        'æ' => "ae",
        'ß' => "ss",
        'ø' => "o",
        'đ' | 'ð' => "d",
        'ł' => "l",
        'þ' => "th",
        'ı' => "i",
        _ => return None,
    })
}

/// Lowercase letters and digits of `s`, accents and everything else (spaces, punctuation) removed:
/// `Nom de famille` → `nomdefamille`, `Prénom Élève` → `prenomeleve`, `Œ` → `oe`.
///
/// Letters without an ASCII fold (Cyrillic, Arabic, CJK…) are kept, lowercased, instead of dropped:
/// the result also feeds derived ids, and two pupils named in another script must not both fold to "".
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.nfkd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase) {
        if let Some(ascii) = ascii_equivalent(c) {
            out.push_str(ascii);
        } else if c.is_ascii_alphanumeric() || (!c.is_ascii() && c.is_alphanumeric()) {
            out.push(c);
        }
    }
    out
}

/// One part of a generated `prenom.nom` login: ASCII lowercase letters and digits, words joined by `-`.
///
/// Spaces, hyphens, underscores and dots separate words (`Élodie Marie` → `elodie-marie`, `Jean-Éric` →
/// `jean-eric`, runs collapse, no `-` at either end). Apostrophes join instead (`N'Diaye` → `ndiaye`,
/// `D'Artagnan` → `dartagnan`): the apostrophe elides inside one surname, and the académies' own mail
/// addresses write these names the same way. Letters with no ASCII fold are dropped, so the result may be
/// empty; the caller then needs another way to name the account.
pub fn login_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_separator = false;
    for c in s.nfkd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase) {
        let ascii = ascii_equivalent(c);
        if ascii.is_none() && !c.is_ascii_alphanumeric() {
            // Separators start a new word; apostrophes (' ’ ʼ) and anything else are dropped without one.
            if matches!(c, ' ' | '-' | '_' | '.' | '\u{2010}' | '\u{2011}' | '\u{2013}' | '\u{a0}' | '\t') {
                pending_separator = true;
            }
            continue;
        }
        if pending_separator && !out.is_empty() {
            out.push('-');
        }
        pending_separator = false;
        match ascii {
            Some(ascii) => out.push_str(ascii),
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_matches_headers_whatever_their_case_accents_and_spaces() {
        assert_eq!(fold("Nom de famille"), "nomdefamille");
        assert_eq!(fold("Prénom Élève"), "prenomeleve");
        assert_eq!(fold("\"Date naissance\""), "datenaissance");
        assert_eq!(fold("Nom de famille enfant"), "nomdefamilleenfant");
        assert_eq!(fold("Libellé_Classe"), "libelleclasse");
        assert_eq!(fold("E-mail"), "email");
        assert_eq!(fold("  CLASSE  "), "classe");
    }

    #[test]
    fn fold_maps_ligatures_and_keeps_other_scripts() {
        assert_eq!(fold("Œuvre"), "oeuvre");
        assert_eq!(fold("Lætitia"), "laetitia");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("Søren"), "soren");
        assert_eq!(fold("ﬁlle"), "fille");
        assert_eq!(fold("Zoé N'Diaye-Le Goff"), "zoendiayelegoff");
        // Decomposed input (as macOS writes it) folds like the composed one.
        assert_eq!(fold("E\u{301}loi\u{308}se"), fold("Éloïse"));
        assert_eq!(fold("Иван"), "иван");
        assert_eq!(fold("=cmd|' /C calc'!A0"), "cmdccalca0");
        assert_eq!(fold(""), "");
    }

    #[test]
    fn login_part_joins_words_with_hyphens() {
        assert_eq!(login_part("Jean-Éric"), "jean-eric");
        assert_eq!(login_part("Élodie Marie"), "elodie-marie");
        assert_eq!(login_part("N'Diaye"), "ndiaye");
        assert_eq!(login_part("D’Artagnan"), "dartagnan");
        assert_eq!(login_part("Le Goff"), "le-goff");
        assert_eq!(login_part("  Éloïse  --  Zoé "), "eloise-zoe");
        assert_eq!(login_part("Lætitia Œhmichen"), "laetitia-oehmichen");
        assert_eq!(login_part("-Jean_Paul-"), "jean-paul");
        assert_eq!(login_part("Иван"), "");
        assert_eq!(login_part("Louis XIV"), "louis-xiv");
    }
}

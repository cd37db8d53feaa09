//! ONDE (primary schools, ex-BE1D) extractions: `CSVExtraction-eleves.csv`, `-enseignants.csv`,
//! `-responsables.csv`. `;`-separated, quoted, Latin-1 (UTF-8 with or without BOM accepted too), headers
//! matched after folding (`"Prénom Elève"` = `prenomeleve`).
//!
//! # External ids
//!
//! These files carry no stable identifier. If a column `INE`, `Identifiant`, `Identifiant élève` or `ID`
//! exists and the cell is filled, it is the id, verbatim. Otherwise the id is derived, so that the same
//! person gets the same id in next year's extraction:
//!
//! - pupils: `onde:` + first 16 hex digits of blake3(fold(nom) `|` fold(prénom) `|` ISO birth date);
//! - teachers: `onde:` + blake3(fold(courriel)) if the e-mail is valid, else blake3(fold(nom) `|`
//!   fold(prénom)), where `nom` is the `Nom` (family name) column, `Nom usage` only when `Nom` is empty —
//!   the family name does not change on marriage;
//! - guardians: `onde:` + blake3(fold(nom) `|` fold(prénom) `|` fold(courriel or "")).
//!
//! (`fold`: lowercase, accents, spaces and punctuation removed, see [`super::fold`].) A pupil whose name or
//! birth date is unusable therefore gets no id and is left out, with the issue; other bad values (a class)
//! leave the person in without that value.
//!
//! # Repeated rows
//!
//! A teacher appears once per class and a guardian once per child in some extractions: rows with the same
//! id are merged (classes and children added up). Two pupil rows with the same id are a duplicate: the
//! second is reported and dropped.
//!
//! The guardians file repeats a child block `Nom de famille enfant;Prénom enfant;Classes enfants` once per
//! child, with identical or numbered headers; each filled block becomes a [`ChildRef::Name`]. ONDE cells
//! hold a single class each: they are not split.

use std::collections::HashMap;
use std::io::BufRead;

use super::fold::fold;
use super::model::{ChildRef, Origin, Parsed, Person};
use super::table::{self, Table};
use super::values::{self, issue, push_unique, Seen};
use crate::account::Role;

/// The three ONDE extractions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OndeKind {
    Eleves,
    Enseignants,
    Responsables,
}

const PUPIL_LAST: &[&str] = &["nomeleve", "nomdefamilleeleve", "nom", "nomdefamille", "nomdenaissance"];
const PUPIL_FIRST: &[&str] = &["prenomeleve", "prenom", "premierprenom"];
const BIRTH: &[&str] = &["datenaissance", "datedenaissance", "datenaissanceeleve", "datedenaissanceeleve"];
const CLASS: &[&str] = &["classe", "libelleclasse", "classeeleve", "classes"];
const ID: &[&str] =
    &["ine", "identifiant", "identifianteleve", "id", "identifiantnationaleleve", "numeroine", "ineeleve"];
const TEACHER_USAGE: &[&str] = &["nomusage", "nomdusage"];
const TEACHER_LAST: &[&str] = &["nom", "nomdefamille", "nompatronymique"];
const FIRST: &[&str] = &["prenom"];
const EMAIL: &[&str] =
    &["courriel", "email", "mail", "adressemail", "adressecourriel", "courrielacademique", "mel", "adressemel"];
const FUNCTION: &[&str] = &["fonction", "fonctions"];
const ADULT_ID: &[&str] = &["identifiant", "id"];
const GUARDIAN_LAST: &[&str] =
    &["nomresponsable", "nomdefamilleresponsable", "nomdusageresponsable", "nom", "nomdefamille"];
const GUARDIAN_FIRST: &[&str] = &["prenomresponsable", "prenom"];
const GUARDIAN_EMAIL: &[&str] = &[
    "courriel",
    "courrielresponsable",
    "email",
    "mail",
    "adressemail",
    "adressecourriel",
    "mel",
    "adressemelresponsable",
];
const CHILD_LAST: &[&str] = &["nomdefamilleenfant", "nomenfant", "nomdelenfant", "nomdefamilledelenfant"];
const CHILD_FIRST: &[&str] = &["prenomenfant", "prenomdelenfant"];
const CHILD_CLASS: &[&str] = &["classesenfants", "classeenfant", "classesenfant", "classeenfants", "classedelenfant"];

/// Which extraction a header line is, when the file name does not say.
pub fn kind_from_headers(folded: &[String]) -> Option<OndeKind> {
    let has = |names: &[&str]| folded.iter().any(|h| names.contains(&strip_number(h)));
    if has(CHILD_FIRST) || has(CHILD_LAST) {
        Some(OndeKind::Responsables)
    } else if has(&["nomeleve", "prenomeleve"]) {
        Some(OndeKind::Eleves)
    } else if has(&["civilite"]) && has(TEACHER_USAGE) {
        Some(OndeKind::Enseignants)
    } else {
        None
    }
}

/// `nomdefamilleenfant2` → `nomdefamilleenfant`: numbered copies of a repeated header.
fn strip_number(folded: &str) -> &str {
    folded.trim_end_matches(|c: char| c.is_ascii_digit())
}

pub fn parse<R: BufRead>(kind: OndeKind, file: &str, reader: R) -> Parsed {
    let mut parsed = Parsed::default();
    if let Some(table) = table::open(file, reader, &mut parsed.issues) {
        parse_table(kind, table, &mut parsed);
    }
    parsed
}

/// Parses an opened table. `complete` ends true only if the whole file was read with its required columns.
pub fn parse_table<R: BufRead>(kind: OndeKind, table: Table<R>, parsed: &mut Parsed) {
    let ok = match kind {
        OndeKind::Eleves => pupils(table, parsed),
        OndeKind::Enseignants => teachers(table, parsed),
        OndeKind::Responsables => guardians(table, parsed),
    };
    parsed.complete = ok;
}

fn origin(file: &str, line: u64) -> Origin {
    Origin { file: file.to_string(), line }
}

fn pupils<R: BufRead>(mut t: Table<R>, parsed: &mut Parsed) -> bool {
    let issues = &mut parsed.issues;
    let (last_c, first_c, birth_c, class_c) =
        (t.column(PUPIL_LAST), t.column(PUPIL_FIRST), t.column(BIRTH), t.column(CLASS));
    let id_c = t.column(ID);
    let required = [(last_c, "Nom Elève"), (first_c, "Prénom Elève"), (birth_c, "Date naissance"), (class_c, "Classe")];
    if !t.require(&required, issues) {
        return false;
    }
    let (last_h, first_h, birth_h, class_h) =
        (t.header(last_c, ""), t.header(first_c, ""), t.header(birth_c, ""), t.header(class_c, ""));
    let id_h = t.header(id_c, &last_h);
    let mut seen = Seen::default();
    while let Some(row) = t.next_row(issues) {
        let file = t.file.as_str();
        let check = |result: Result<String, String>, field: &str, issues: &mut Vec<_>| match result {
            Ok(v) => Some(v),
            Err(message) => {
                issues.push(issue(file, row.line, field, message));
                None
            }
        };
        let last = check(values::check_name(row.get(last_c), "nom de l'élève"), &last_h, issues);
        let first = check(values::check_name(row.get(first_c), "prénom de l'élève"), &first_h, issues);
        let given_id = row.get(id_c).to_string();
        let derived = given_id.is_empty();
        let raw_birth = row.get(birth_c);
        let birth = values::parse_date(raw_birth);
        if birth.is_none() {
            issues.push(issue(file, row.line, &birth_h, values::bad_date_message(raw_birth)));
        }
        // Without a given id, the birth date is part of the derived one: no date, no identity.
        let identity = birth.is_some() || !derived;
        // The class is checked even when the row is dropped, so that all its problems are listed at once.
        // Pupils admitted but not yet put in a class ("non répartis") are normal early in the year.
        let class = match row.get(class_c) {
            "" => None,
            raw => check(values::check_class(raw, "classe"), &class_h, issues),
        };
        let (Some(last), Some(first)) = (last, first) else { continue };
        if !identity {
            continue;
        }
        let mut person = Person::new(origin(file, row.line), Role::Pupil);
        person.external_id = if given_id.is_empty() {
            values::pupil_id("onde", &last, &first, birth.as_deref().unwrap_or(""))
        } else {
            given_id
        };
        person.classes.extend(class);
        if let Some(first_line) = seen.first_line(&person.external_id, row.line) {
            let what = if derived { "mêmes nom, prénom et date de naissance" } else { "même identifiant" };
            issues.push(issue(
                file,
                row.line,
                &id_h,
                format!(
                    "élève « {last} {first} » en double ({what} qu'à la ligne {first_line}) : \
                     supprimez le doublon dans ONDE"
                ),
            ));
            continue;
        }
        person.last_name = last;
        person.first_name = first;
        person.birth_date = birth;
        parsed.people.push(person);
    }
    !t.failed
}

fn teachers<R: BufRead>(mut t: Table<R>, parsed: &mut Parsed) -> bool {
    let issues = &mut parsed.issues;
    let (usage_c, last_c, first_c) = (t.column(TEACHER_USAGE), t.column(TEACHER_LAST), t.column(FIRST));
    let (email_c, class_c, function_c, id_c, birth_c) =
        (t.column(EMAIL), t.column(CLASS), t.column(FUNCTION), t.column(ADULT_ID), t.column(BIRTH));
    if !t.require(&[(usage_c.or(last_c), "Nom"), (first_c, "Prénom")], issues) {
        return false;
    }
    let (name_h, first_h, email_h, class_h, birth_h) = (
        t.header(last_c.or(usage_c), "Nom"),
        t.header(first_c, ""),
        t.header(email_c, ""),
        t.header(class_c, ""),
        t.header(birth_c, ""),
    );
    // id → (index in people, folded name), to merge the rows of one teacher.
    let mut index: HashMap<String, (usize, String)> = HashMap::new();
    while let Some(row) = t.next_row(issues) {
        let file = t.file.as_str();
        let family = row.get(last_c);
        let usage = row.get(usage_c);
        let display = if usage.is_empty() { family } else { usage };
        let stable = if family.is_empty() { usage } else { family };
        let last = match values::check_name(display, "nom de l'enseignant") {
            Ok(v) => v,
            Err(m) => {
                issues.push(issue(file, row.line, &name_h, m));
                continue;
            }
        };
        let first = match values::check_name(row.get(first_c), "prénom de l'enseignant") {
            Ok(v) => v,
            Err(m) => {
                issues.push(issue(file, row.line, &first_h, m));
                continue;
            }
        };
        let email = match row.get(email_c) {
            "" => None,
            raw => match values::check_email(raw) {
                Ok(mail) => Some(mail),
                Err(m) => {
                    issues.push(issue(file, row.line, &email_h, m));
                    None
                }
            },
        };
        let id = match row.get(id_c) {
            "" => values::adult_id("onde", stable, &first, email.as_deref()),
            given => given.to_string(),
        };
        let class = match row.get(class_c) {
            "" => None,
            raw => match values::check_class(raw, "classe") {
                Ok(c) => Some(c),
                Err(m) => {
                    issues.push(issue(file, row.line, &class_h, m));
                    None
                }
            },
        };
        let function = row.get(function_c);
        let folded_name = format!("{}|{}", fold(stable), fold(&first));
        if let Some((i, known_name)) = index.get(&id) {
            if *known_name != folded_name {
                let first_line = parsed.people[*i].origin.line;
                issues.push(issue(
                    file,
                    row.line,
                    &email_h,
                    format!(
                        "l'enseignant « {last} {first} » a le même courriel que celui de la ligne {first_line} : \
                         donnez à chacun son adresse personnelle"
                    ),
                ));
                continue;
            }
            let person = &mut parsed.people[*i];
            if let Some(class) = class {
                push_unique(&mut person.classes, class);
            }
            if !function.is_empty() {
                push_unique(&mut person.functions, function.to_string());
            }
            continue;
        }
        let mut person = Person::new(origin(file, row.line), Role::Teacher);
        person.external_id = id.clone();
        person.last_name = last;
        person.first_name = first;
        person.email = email;
        person.classes.extend(class);
        if !function.is_empty() {
            person.functions.push(function.to_string());
        }
        if birth_c.is_some() && !row.get(birth_c).is_empty() {
            match values::parse_date(row.get(birth_c)) {
                Some(date) => person.birth_date = Some(date),
                None => issues.push(issue(file, row.line, &birth_h, values::bad_date_message(row.get(birth_c)))),
            }
        }
        index.insert(id, (parsed.people.len(), folded_name));
        parsed.people.push(person);
    }
    !t.failed
}

/// Columns of one child block of the guardians file.
#[derive(Debug, Default, Clone, Copy)]
struct ChildBlock {
    last: Option<usize>,
    first: Option<usize>,
    class: Option<usize>,
}

/// Groups the child columns into blocks, in file order: a block ends when a column it already has comes
/// again, so `Nom;Prénom;Classes` repeated (with identical or numbered headers) gives one block per child.
fn child_blocks(folded: &[String]) -> Vec<ChildBlock> {
    let mut blocks: Vec<ChildBlock> = Vec::new();
    for (i, header) in folded.iter().enumerate() {
        let h = strip_number(header);
        let slot: fn(&mut ChildBlock) -> &mut Option<usize> = if CHILD_LAST.contains(&h) {
            |b| &mut b.last
        } else if CHILD_FIRST.contains(&h) {
            |b| &mut b.first
        } else if CHILD_CLASS.contains(&h) {
            |b| &mut b.class
        } else {
            continue;
        };
        if let Some(free) = blocks.last_mut().map(slot).filter(|free| free.is_none()) {
            *free = Some(i);
        } else {
            let mut block = ChildBlock::default();
            *slot(&mut block) = Some(i);
            blocks.push(block);
        }
    }
    blocks
}

fn guardians<R: BufRead>(mut t: Table<R>, parsed: &mut Parsed) -> bool {
    let issues = &mut parsed.issues;
    let (last_c, first_c, email_c, id_c) =
        (t.column(GUARDIAN_LAST), t.column(GUARDIAN_FIRST), t.column(GUARDIAN_EMAIL), t.column(ADULT_ID));
    let blocks = child_blocks(&t.folded);
    let first_block = blocks.first().copied().unwrap_or_default();
    let required = [
        (last_c, "Nom responsable"),
        (first_c, "Prénom responsable"),
        (first_block.last, "Nom de famille enfant"),
        (first_block.first, "Prénom enfant"),
    ];
    if !t.require(&required, issues) {
        return false;
    }
    let (last_h, first_h, email_h) = (t.header(last_c, ""), t.header(first_c, ""), t.header(email_c, ""));
    let mut index: HashMap<String, usize> = HashMap::new();
    while let Some(row) = t.next_row(issues) {
        let file = t.file.as_str();
        let last = match values::check_name(row.get(last_c), "nom du responsable") {
            Ok(v) => Some(v),
            Err(m) => {
                issues.push(issue(file, row.line, &last_h, m));
                None
            }
        };
        let first = match values::check_name(row.get(first_c), "prénom du responsable") {
            Ok(v) => Some(v),
            Err(m) => {
                issues.push(issue(file, row.line, &first_h, m));
                None
            }
        };
        let email = match row.get(email_c) {
            "" => None,
            raw => match values::check_email(raw) {
                Ok(mail) => Some(mail),
                Err(m) => {
                    issues.push(issue(file, row.line, &email_h, m));
                    None
                }
            },
        };
        let mut children = Vec::new();
        for (n, block) in blocks.iter().enumerate() {
            let (child_last, child_first, class) = (row.get(block.last), row.get(block.first), row.get(block.class));
            if child_last.is_empty() && child_first.is_empty() && class.is_empty() {
                continue;
            }
            let field = t.header(block.last.or(block.first), "Nom de famille enfant");
            let names = (
                values::check_name(child_last, "nom de l'enfant"),
                values::check_name(child_first, "prénom de l'enfant"),
            );
            let (Ok(child_last), Ok(child_first)) = names else {
                issues.push(issue(
                    file,
                    row.line,
                    &field,
                    format!("enfant n°{} incomplet : son nom et son prénom sont nécessaires", n + 1),
                ));
                continue;
            };
            let class = match class {
                "" => None,
                raw => match values::check_class(raw, "classe") {
                    Ok(c) => Some(c),
                    Err(m) => {
                        issues.push(issue(file, row.line, &t.header(block.class, "Classes enfants"), m));
                        None
                    }
                },
            };
            push_unique(&mut children, ChildRef::Name { last_name: child_last, first_name: child_first, class });
        }
        let (Some(last), Some(first)) = (last, first) else { continue };
        let id = match row.get(id_c) {
            "" => values::guardian_id("onde", &last, &first, email.as_deref()),
            given => given.to_string(),
        };
        if let Some(&i) = index.get(&id) {
            let person = &mut parsed.people[i];
            for child in children {
                push_unique(&mut person.children, child);
            }
            continue;
        }
        let mut person = Person::new(origin(file, row.line), Role::Parent);
        person.external_id = id.clone();
        person.last_name = last;
        person.first_name = first;
        person.email = email;
        person.children = children;
        index.insert(id, parsed.people.len());
        parsed.people.push(person);
    }
    !t.failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{encoding, parse_bytes, values::adult_id, values::pupil_id};

    fn child(last: &str, first: &str, class: &str) -> ChildRef {
        ChildRef::Name { last_name: last.into(), first_name: first.into(), class: Some(class.into()) }
    }

    #[test]
    fn pupils_file_in_latin1_decodes_accents_dates_and_classes() {
        let bytes = fixture!("onde/CSVExtraction-eleves.csv");
        assert!(std::str::from_utf8(&bytes).is_err(), "the fixture must stay Latin-1");
        let parsed = parse_bytes("CSVExtraction-eleves.csv", &bytes);
        assert!(parsed.complete);
        assert_eq!(parsed.people.len(), 10);
        let lea = &parsed.people[0];
        assert_eq!((lea.last_name.as_str(), lea.first_name.as_str()), ("DUPONT", "Léa"));
        assert_eq!(lea.birth_date.as_deref(), Some("2015-03-31"));
        assert_eq!(lea.classes, ["CM2"]);
        assert_eq!(lea.role, Role::Pupil);
        assert_eq!(lea.origin, Origin { file: "CSVExtraction-eleves.csv".into(), line: 2 });
        assert_eq!(lea.external_id, pupil_id("onde", "Dupont", "LEA", "2015-03-31"));
        let eloise = &parsed.people[2];
        assert_eq!((eloise.last_name.as_str(), eloise.first_name.as_str()), ("N'DIAYE", "Éloïse"));
        assert_eq!(eloise.birth_date.as_deref(), Some("2016-02-29"));
        assert_eq!(eloise.classes, ["CE1-CE2 A"]);
        let names: Vec<_> = parsed.people.iter().map(|p| p.last_name.as_str()).collect();
        assert!(names.contains(&"BÉRANGER") && names.contains(&"CHÂTEAU") && names.contains(&"FRANÇOIS"));
        // The last pupil is not in a class yet ("non répartie"): kept, without class and without issue.
        let aylin = &parsed.people[9];
        assert_eq!((aylin.last_name.as_str(), aylin.classes.len(), aylin.origin.line), ("ÖZTÜRK", 0, 11));
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
        // Ids are all different and do not depend on the encoding the file was saved in.
        let mut ids: Vec<_> = parsed.people.iter().map(|p| p.external_id.clone()).collect();
        let (text, _, _) = encoding_rs::WINDOWS_1252.decode(&bytes);
        let mut utf8 = encoding::UTF8_BOM.to_vec();
        utf8.extend_from_slice(text.as_bytes());
        let again = parse_bytes("CSVExtraction-eleves.csv", &utf8);
        assert_eq!(again.people, parsed.people);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10);
    }

    #[test]
    fn teachers_rows_merge_and_use_the_usage_name() {
        let parsed = parse_bytes("CSVExtraction-enseignants.csv", &fixture!("onde/CSVExtraction-enseignants.csv"));
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
        assert!(parsed.complete);
        assert_eq!(parsed.people.len(), 3);
        let garnier = &parsed.people[0];
        assert_eq!((garnier.last_name.as_str(), garnier.first_name.as_str()), ("LEFÈVRE", "Hélène"));
        assert_eq!(garnier.email.as_deref(), Some("helene.garnier@ac-exemple.fr"));
        assert_eq!(garnier.external_id, adult_id("onde", "", "", Some("helene.garnier@ac-exemple.fr")));
        assert_eq!(garnier.functions, ["Directrice"]);
        assert_eq!(garnier.birth_date.as_deref(), Some("1978-05-14"));
        let rousseau = &parsed.people[1];
        assert_eq!(rousseau.classes, ["CP", "CE1-CE2 A"]);
        assert_eq!(rousseau.role, Role::Teacher);
        assert_eq!(rousseau.origin.line, 3);
        let anais = &parsed.people[2];
        assert_eq!((anais.last_name.as_str(), anais.email.as_deref()), ("D'ALEMBERT", None));
        assert_eq!(anais.external_id, adult_id("onde", "d'alembert", "anais", None));
        assert!(anais.classes.is_empty());
    }

    #[test]
    fn guardians_get_one_child_per_block_and_merge_across_rows() {
        let parsed = parse_bytes("CSVExtraction-responsables.csv", &fixture!("onde/CSVExtraction-responsables.csv"));
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
        assert_eq!(parsed.people.len(), 4);
        let sophie = &parsed.people[0];
        assert_eq!((sophie.last_name.as_str(), sophie.first_name.as_str()), ("DUPONT", "Sophie"));
        assert_eq!(sophie.role, Role::Parent);
        assert_eq!(sophie.children, [child("DUPONT", "Léa", "CM2"), child("DUPONT", "Noé", "CP")]);
        let moussa = &parsed.people[1];
        assert_eq!(moussa.children, [child("N'DIAYE", "Éloïse", "CE1-CE2 A")]);
        assert_eq!(moussa.email, None);
        let jerome = &parsed.people[2];
        assert_eq!(jerome.children, [child("MARTIN", "Zoé", "CM2"), child("MARTIN", "Hugo", "CP")]);
        assert_eq!(jerome.origin.line, 4);
        assert_eq!(parsed.people[3].first_name, "Gaëlle");
    }

    #[test]
    fn child_blocks_accept_repeated_or_numbered_headers() {
        let headers: Vec<String> = [
            "nomresponsable",
            "prenomenfant1",
            "nomdefamilleenfant1",
            "classesenfants1",
            "nomdefamilleenfant2",
            "prenomenfant2",
            "nomdefamilleenfant",
            "prenomenfant",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let blocks = child_blocks(&headers);
        let shape: Vec<_> = blocks.iter().map(|b| (b.last, b.first, b.class)).collect();
        assert_eq!(shape, [(Some(2), Some(1), Some(3)), (Some(4), Some(5), None), (Some(6), Some(7), None)]);
        assert_eq!(kind_from_headers(&headers), Some(OndeKind::Responsables));
        let pupils: Vec<String> = ["nomeleve", "prenomeleve", "classe"].iter().map(|s| s.to_string()).collect();
        assert_eq!(kind_from_headers(&pupils), Some(OndeKind::Eleves));
    }

    #[test]
    fn ten_thousand_pupils_parse_quickly() {
        let first_names = ["Léa", "Zoé", "Éloïse", "Maël", "Chloé", "Noé", "Inès", "Jérôme"];
        let mut data = "\"Nom Elève\";\"Prénom Elève\";\"Date naissance\";\"Niveau\";\"Classe\"\r\n".to_string();
        for i in 0..10_000 {
            let day = i % 28 + 1;
            data.push_str(&format!(
                "\"ÉLÈVE{i}\";\"{}\";\"{day:02}/0{}/2015\";\"CM2\";\"CM2 {}\"\r\n",
                first_names[i % 8],
                i % 9 + 1,
                i % 4
            ));
        }
        let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(&data);
        let start = std::time::Instant::now();
        let parsed = parse_bytes("CSVExtraction-eleves.csv", &bytes);
        let elapsed = start.elapsed();
        assert!(parsed.issues.is_empty(), "{:?}", &parsed.issues[..parsed.issues.len().min(3)]);
        assert_eq!(parsed.people.len(), 10_000);
        assert_eq!(parsed.people[9_999].origin.line, 10_001);
        assert_eq!(parsed.people[9_999].last_name, "ÉLÈVE9999");
        let limit = if cfg!(debug_assertions) { 10.0 } else { 0.5 };
        assert!(elapsed.as_secs_f64() < limit, "{elapsed:?}");
    }
}

//! Generic CSV exports (a spreadsheet, another ENT): `;`, `,` or tab separated, headers recognised after
//! folding case, accents and spaces (`Nom de famille` = `nomdefamille`), roles in French or English.
//!
//! Columns (folded; first match wins): `nom|nomdefamille|lastname|familyname|surname`,
//! `prenom|firstname|givenname` (both required), `profil|role|profile|type` (required unless the file name
//! says the role: `eleves…`, `enseignants…`/`profs…`, `parents…`/`responsables…`, `personnels…`),
//! `classe|classes|libelleclasse|class`, `groupes|groupe|groups`, `datedenaissance|datenaissance|birthdate`,
//! `login|alias`, `id|externalid|identifiant`, `email|mail|courriel`, `enfants|children` and `parents`
//! (external ids of the linked people).
//!
//! Roles: `élève|eleve|pupil|student`, `enseignant|professeur|teacher`, `parent|responsable|relative`,
//! `personnel|staff`, `admin|administrateur` (plurals too).
//!
//! Multi-valued cells (classes, groups, children, parents) are split on both `,` and `|`, whatever the
//! delimiter of the file: spreadsheets quote a cell holding the delimiter, and accepting both spares users
//! a rule to learn. A class name can therefore contain neither.
//!
//! External ids: the `id` column when filled, else derived like ONDE's with the prefix `csv:` (pupils:
//! name + birth date, the date empty if the file has none; adults: e-mail, else name; parents: name +
//! e-mail; see [`super::values`]). A second row with the same id is reported and dropped.
//!
//! A generic file is never `complete`: nothing says it lists everybody, and people missing from it must
//! not be taken for leavers.

use std::io::BufRead;

use super::fold::fold;
use super::model::{ChildRef, Origin, Parsed, Person};
use super::table::{self, Table};
use super::values::{self, issue, push_unique, Seen};
use crate::account::{self, Role};

const LAST: &[&str] = &["nom", "nomdefamille", "lastname", "familyname", "surname", "nomdusage"];
const FIRST: &[&str] = &["prenom", "firstname", "givenname"];
const ROLE: &[&str] = &["profil", "role", "profile", "type"];
const CLASS: &[&str] = &["classe", "classes", "libelleclasse", "class"];
const GROUPS: &[&str] = &["groupes", "groupe", "groups", "group"];
const BIRTH: &[&str] = &["datedenaissance", "datenaissance", "birthdate", "dateofbirth", "naissance"];
const LOGIN: &[&str] = &["login", "alias", "identifiantdeconnexion"];
const ID: &[&str] = &["id", "externalid", "identifiant", "identifiantexterne"];
const EMAIL: &[&str] = &["email", "mail", "courriel", "adressemail", "adressecourriel", "mel"];
const CHILDREN: &[&str] = &["enfants", "children", "enfant"];
const PARENTS: &[&str] = &["parents", "responsables"];

/// A role written in French or English, any case, with or without accents, singular or plural.
pub fn parse_role(text: &str) -> Option<Role> {
    let folded = fold(text);
    let word = folded.strip_suffix('s').unwrap_or(&folded);
    Some(match word {
        "eleve" | "pupil" | "student" | "etudiant" => Role::Pupil,
        "enseignant" | "enseignante" | "professeur" | "prof" | "teacher" => Role::Teacher,
        "parent" | "responsable" | "responsablelegal" | "relative" | "tuteur" => Role::Parent,
        "personnel" | "staff" | "agent" => Role::Staff,
        "admin" | "administrateur" | "administratrice" | "administrator" => Role::Admin,
        _ => return None,
    })
}

/// The role a file name implies (`eleves.csv`), for files without a role column.
pub fn role_from_file_name(file: &str) -> Option<Role> {
    let folded = fold(file);
    if folded.contains("eleve") {
        Some(Role::Pupil)
    } else if folded.contains("enseignant") || folded.contains("prof") {
        Some(Role::Teacher)
    } else if folded.contains("parent") || folded.contains("responsable") {
        Some(Role::Parent)
    } else if folded.contains("personnel") {
        Some(Role::Staff)
    } else {
        None
    }
}

/// Items of a multi-valued cell: split on `,` and `|`, trimmed, empty ones dropped.
pub fn split_list(cell: &str) -> impl Iterator<Item = &str> {
    cell.split([',', '|']).map(str::trim).filter(|s| !s.is_empty())
}

pub fn parse<R: BufRead>(file: &str, reader: R) -> Parsed {
    let mut parsed = Parsed::default();
    if let Some(table) = table::open(file, reader, &mut parsed.issues) {
        parse_table(table, &mut parsed);
    }
    parsed
}

pub fn parse_table<R: BufRead>(mut t: Table<R>, parsed: &mut Parsed) {
    let issues = &mut parsed.issues;
    let (last_c, first_c, role_c, class_c, groups_c) =
        (t.column(LAST), t.column(FIRST), t.column(ROLE), t.column(CLASS), t.column(GROUPS));
    let (birth_c, login_c, id_c, email_c) = (t.column(BIRTH), t.column(LOGIN), t.column(ID), t.column(EMAIL));
    let (children_c, parents_c) = (t.column(CHILDREN), t.column(PARENTS));
    let default_role = role_from_file_name(&t.file);
    let mut required = vec![(last_c, "Nom"), (first_c, "Prénom")];
    if default_role.is_none() {
        required.push((role_c, "Profil"));
    }
    if !t.require(&required, issues) {
        return;
    }
    let h = |c: Option<usize>| t.header(c, "");
    let (last_h, first_h, role_h, class_h, groups_h) = (h(last_c), h(first_c), h(role_c), h(class_c), h(groups_c));
    let (birth_h, login_h, email_h) = (h(birth_c), h(login_c), h(email_c));
    let id_h = t.header(id_c, &last_h);
    let mut seen = Seen::default();
    while let Some(row) = t.next_row(issues) {
        let file = t.file.as_str();
        let line = row.line;
        let mut report = |field: &str, message: String| issues.push(issue(file, line, field, message));
        let last = values::check_name(row.get(last_c), "nom").map_err(|m| report(&last_h, m));
        let first = values::check_name(row.get(first_c), "prénom").map_err(|m| report(&first_h, m));
        let role = match row.get(role_c) {
            "" => default_role.ok_or_else(|| {
                report(&role_h, "profil vide : indiquez élève, enseignant, parent, personnel ou admin".to_string())
            }),
            text => parse_role(text).ok_or_else(|| {
                report(
                    &role_h,
                    format!("profil « {text} » inconnu (attendu élève, enseignant, parent, personnel ou admin)"),
                )
            }),
        };
        let raw_birth = row.get(birth_c);
        let birth = match raw_birth {
            "" => Ok(None),
            raw => values::parse_date(raw).map(Some).ok_or_else(|| report(&birth_h, values::bad_date_message(raw))),
        };
        let email = match row.get(email_c) {
            "" => None,
            raw => values::check_email(raw).map_err(|m| report(&email_h, m)).ok(),
        };
        let login = match row.get(login_c).to_lowercase().as_str() {
            "" => None,
            login => match account::validate_login(login) {
                Ok(()) => Some(login.to_string()),
                Err(_) => {
                    report(
                        &login_h,
                        format!(
                            "identifiant de connexion « {login} » invalide (lettres sans accent, chiffres, « . », \
                             « - » ou « _ », 64 au plus) : corrigez-le ou videz la case"
                        ),
                    );
                    None
                }
            },
        };
        let mut classes = Vec::new();
        for raw in split_list(row.get(class_c)) {
            if let Ok(class) = values::check_class(raw, "classe").map_err(|m| report(&class_h, m)) {
                push_unique(&mut classes, class);
            }
        }
        let mut groups = Vec::new();
        for raw in split_list(row.get(groups_c)) {
            if let Ok(group) = values::check_class(raw, "groupe").map_err(|m| report(&groups_h, m)) {
                push_unique(&mut groups, group);
            }
        }
        let (Ok(last), Ok(first), Ok(role)) = (last, first, role) else { continue };
        let given_id = row.get(id_c);
        let birth = match birth {
            Ok(birth) => birth,
            // The birth date is part of a pupil's derived id: without it the person cannot be matched.
            Err(()) if given_id.is_empty() && role == Role::Pupil => continue,
            Err(()) => None,
        };
        let external_id = match (given_id, role) {
            ("", Role::Pupil) => values::pupil_id("csv", &last, &first, birth.as_deref().unwrap_or("")),
            ("", Role::Parent) => values::guardian_id("csv", &last, &first, email.as_deref()),
            ("", _) => values::adult_id("csv", &last, &first, email.as_deref()),
            (given, _) => given.to_string(),
        };
        if let Some(first_line) = seen.first_line(&external_id, line) {
            let what =
                if given_id.is_empty() { "mêmes nom, prénom et date ou courriel" } else { "même identifiant" };
            report(
                &id_h,
                format!("« {last} {first} » en double ({what} qu'à la ligne {first_line}) : supprimez l'une des deux lignes"),
            );
            continue;
        }
        let mut person = Person::new(Origin { file: file.to_string(), line }, role);
        person.external_id = external_id;
        person.last_name = last;
        person.first_name = first;
        person.birth_date = birth;
        person.email = email;
        person.login = login;
        person.classes = classes;
        person.groups = groups;
        for id in split_list(row.get(children_c)) {
            push_unique(&mut person.children, ChildRef::Id(id.to_string()));
        }
        for id in split_list(row.get(parents_c)) {
            push_unique(&mut person.parents, id.to_string());
        }
        parsed.people.push(person);
    }
    parsed.complete = false;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::parse_bytes;
    use crate::directory::values::{adult_id, pupil_id};

    #[test]
    fn roles_in_french_or_english() {
        for (text, role) in [
            ("élève", Role::Pupil),
            ("ELEVES", Role::Pupil),
            ("Student", Role::Pupil),
            ("Enseignante", Role::Teacher),
            ("teacher", Role::Teacher),
            ("Responsable", Role::Parent),
            ("relative", Role::Parent),
            ("Personnel", Role::Staff),
            ("staff", Role::Staff),
            ("Admin", Role::Admin),
        ] {
            assert_eq!(parse_role(text), Some(role), "{text}");
        }
        assert_eq!(parse_role("directeur"), None);
        assert_eq!(role_from_file_name("Élèves 6e.csv"), Some(Role::Pupil));
        assert_eq!(role_from_file_name("export.csv"), None);
        assert_eq!(split_list(" 6A, 6B |LATIN||").collect::<Vec<_>>(), ["6A", "6B", "LATIN"]);
    }

    #[test]
    fn comma_separated_utf8_with_bom_and_fuzzy_headers() {
        let parsed = parse_bytes("eleves.csv", &fixture!("generic/eleves.csv"));
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
        assert!(!parsed.complete, "a generic CSV never says it lists everybody");
        assert_eq!(parsed.people.len(), 8);
        let mael = &parsed.people[0];
        assert_eq!((mael.last_name.as_str(), mael.first_name.as_str(), mael.role), ("Le Goff", "Maël", Role::Pupil));
        assert_eq!(mael.birth_date.as_deref(), Some("2014-05-12"));
        assert_eq!(
            (mael.classes.as_slice(), mael.groups.as_slice()),
            (&["6A".to_string()][..], &["Latin".to_string(), "Chorale".to_string()][..])
        );
        assert_eq!(mael.external_id, pupil_id("csv", "LE GOFF", "Mael", "2014-05-12"));
        assert_eq!(mael.origin.line, 2);
        let zoe = &parsed.people[1];
        assert_eq!((zoe.birth_date.as_deref(), zoe.login.as_deref()), (Some("2014-11-03"), Some("zoe.dupont")));
        assert_eq!(parsed.people[2].groups, ["Chorale", "Théâtre"]);
        assert_eq!(parsed.people[3].role, Role::Parent);
        let garnier = &parsed.people[4];
        assert_eq!(
            (garnier.role, garnier.classes.as_slice()),
            (Role::Teacher, &["6A".to_string(), "6B".to_string()][..])
        );
        assert_eq!(garnier.external_id, adult_id("csv", "", "", Some("helene.garnier@ac-exemple.fr")));
        assert_eq!(parsed.people[5].role, Role::Teacher);
        assert_eq!(parsed.people[6].role, Role::Staff);
        assert_eq!((parsed.people[7].role, parsed.people[7].login.as_deref()), (Role::Admin, Some("ines.b")));
    }

    #[test]
    fn every_bad_cell_is_reported_with_its_line_and_column() {
        let data = "id,nom,prénom,profil,classe,login,date de naissance\n\
                    1,Dupont,Léa,élève,CM2,Léa,2015-02-30\n\
                    2,,Zoé,directeur,../x,,\n\
                    1,Martin,Hugo,eleve,CM1,,\n\
                    3,Le Goff,Maël,,CM1,,\n";
        let parsed = parse_bytes("import.csv", data.as_bytes());
        let found: Vec<(u64, &str)> = parsed.issues.iter().map(|i| (i.line, i.field.as_str())).collect();
        assert_eq!(
            found,
            [
                (2, "date de naissance"),
                (2, "login"),
                (3, "nom"),
                (3, "profil"),
                (3, "classe"),
                (4, "id"),
                (5, "profil"),
            ],
            "{:?}",
            parsed.issues
        );
        assert_eq!(
            parsed.issues[3].message,
            "profil « directeur » inconnu (attendu élève, enseignant, parent, personnel ou admin)"
        );
        assert!(parsed.issues[5].message.contains("ligne 2"), "{}", parsed.issues[5].message);
        // Léa keeps her given id despite the bad date and login; the others are dropped.
        assert_eq!(parsed.people.len(), 1);
        assert_eq!((parsed.people[0].external_id.as_str(), parsed.people[0].birth_date.as_deref()), ("1", None));
        // Without a role column nor a telling file name, the column is required.
        let parsed = parse_bytes("import.csv", "nom;prenom\nDupont;Léa\n".as_bytes());
        assert_eq!(parsed.issues.len(), 1);
        assert_eq!((parsed.issues[0].line, parsed.issues[0].field.as_str()), (1, "Profil"));
        let parsed = parse_bytes("enseignants.csv", "nom;prenom\nDupont;Léa\n".as_bytes());
        assert_eq!((parsed.people.len(), parsed.people[0].role), (1, Role::Teacher));
    }
}

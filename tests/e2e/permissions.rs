//! Who may read and write where, as one table over the five roles and the four kinds of space
//! (`me/`, `classes/<c>/`, `classes/<c>/rendus/<login>/`, `school/`), plus what listings reveal.

use std::collections::HashMap;

use crate::util::*;

/// A school with two classes, and a logged-in client per person:
/// - `prof.martin` teaches 6A, `prof.durand` teaches 6B;
/// - `alice` and `bob` are pupils of 6A, `chloe` of 6B; `parent.alice` is alice's parent;
/// - `secretariat` is staff; `admin` is admin.
///
/// Seeded with `classes/6A/cours.txt`, `classes/6B/cours.txt`, one hand-in per pupil (`devoir.txt`) and
/// `school/info.txt`.
struct School {
    /// Keeps the server alive as long as the school.
    _relais: Relais,
    people: HashMap<&'static str, Client>,
}

impl School {
    fn new() -> School {
        let relais = Relais::start(NO_QUOTAS);
        let admin = relais.admin();
        let mut people = HashMap::new();
        for (login, role, classes, children) in [
            ("prof.martin", "teacher", &["6A"][..], &[][..]),
            ("prof.durand", "teacher", &["6B"], &[]),
            ("alice", "pupil", &["6A"], &[]),
            ("bob", "pupil", &["6A"], &[]),
            ("chloe", "pupil", &["6B"], &[]),
            ("parent.alice", "parent", &[], &["alice"]),
            ("secretariat", "staff", &[], &[]),
        ] {
            people.insert(login, relais.user(&admin, login, role, classes, children));
        }
        people.insert("admin", admin);
        let school = School { _relais: relais, people };
        school.as_("prof.martin").put("classes/6A/cours.txt", b"cours 6A").expect_status(201);
        school.as_("prof.durand").put("classes/6B/cours.txt", b"cours 6B").expect_status(201);
        for (pupil, class) in [("alice", "6A"), ("bob", "6A"), ("chloe", "6B")] {
            let path = format!("classes/{class}/rendus/{pupil}/devoir.txt");
            school.as_(pupil).put(&path, format!("devoir de {pupil}").as_bytes()).expect_status(201);
        }
        school.as_("secretariat").put("school/info.txt", b"info").expect_status(201);
        school
    }

    fn as_(&self, login: &str) -> &Client {
        self.people.get(login).unwrap_or_else(|| panic!("no {login} in the school"))
    }
}

const OK: u16 = 200;
const CREATED: u16 = 201;
const DELETED: u16 = 204;
const FORBIDDEN: u16 = 403;
const NOT_FOUND: u16 = 404;

#[test]
fn role_table() {
    let school = School::new();
    // (who, method, path, expected status). Each written path is new, so a successful PUT is a 201.
    let table: &[(&str, &str, &str, u16)] = &[
        // A pupil: own space, own class (read), own hand-in (write), school (read).
        ("alice", "GET", "me/", OK),
        ("alice", "PUT", "me/notes.txt", CREATED),
        ("alice", "GET", "me/notes.txt", OK),
        ("bob", "GET", "me/notes.txt", NOT_FOUND), // bob's me/ is his own
        ("alice", "GET", "classes/6A/", OK),
        ("alice", "GET", "classes/6A/cours.txt", OK),
        ("alice", "PUT", "classes/6A/alice-etait-la.txt", FORBIDDEN),
        ("alice", "MKDIR", "classes/6A/dossier-alice", FORBIDDEN),
        ("alice", "DELETE", "classes/6A/cours.txt", FORBIDDEN),
        ("alice", "PUT", "classes/6A/rendus/alice/devoir2.txt", CREATED),
        ("alice", "GET", "classes/6A/rendus/alice/devoir.txt", OK),
        ("alice", "GET", "classes/6A/rendus/bob/devoir.txt", FORBIDDEN),
        ("alice", "GET", "classes/6A/rendus/bob/", FORBIDDEN),
        ("alice", "PUT", "classes/6A/rendus/bob/triche.txt", FORBIDDEN),
        ("alice", "DELETE", "classes/6A/rendus/bob/devoir.txt", FORBIDDEN),
        ("alice", "GET", "classes/6B/cours.txt", FORBIDDEN),
        ("alice", "PUT", "classes/6B/intrus.txt", FORBIDDEN),
        ("alice", "GET", "school/info.txt", OK),
        ("alice", "PUT", "school/graffiti.txt", FORBIDDEN),
        ("alice", "DELETE", "school/info.txt", FORBIDDEN),
        ("bob", "GET", "classes/6A/rendus/alice/devoir.txt", FORBIDDEN),
        ("chloe", "GET", "classes/6A/cours.txt", FORBIDDEN),
        ("chloe", "GET", "classes/6A/rendus/alice/devoir.txt", FORBIDDEN),
        ("chloe", "PUT", "classes/6A/rendus/chloe/devoir.txt", FORBIDDEN),
        // Unknown top-level folders, including the names of the internal tree.
        ("alice", "GET", "etc/passwd", NOT_FOUND),
        ("alice", "PUT", "etc/passwd", NOT_FOUND),
        ("alice", "GET", "users/bob/", NOT_FOUND),
        ("alice", "GET", "users/alice/", NOT_FOUND),
        ("admin", "GET", "ailleurs/x.txt", NOT_FOUND),
        // A teacher: writes their class, reads all its hand-ins, nothing of another class.
        ("prof.martin", "PUT", "classes/6A/chapitre2.txt", CREATED),
        ("prof.martin", "MKDIR", "classes/6A/exercices", CREATED),
        ("prof.martin", "GET", "classes/6A/rendus/alice/devoir.txt", OK),
        ("prof.martin", "GET", "classes/6A/rendus/bob/devoir.txt", OK),
        ("prof.martin", "GET", "classes/6A/rendus/bob/", OK),
        ("prof.martin", "PUT", "classes/6B/intrus.txt", FORBIDDEN),
        ("prof.martin", "GET", "classes/6B/cours.txt", FORBIDDEN),
        ("prof.martin", "GET", "classes/6B/rendus/chloe/devoir.txt", FORBIDDEN),
        ("prof.martin", "PUT", "school/annonce.txt", FORBIDDEN),
        ("prof.martin", "GET", "school/info.txt", OK),
        ("prof.martin", "DELETE", "classes/6A/chapitre2.txt", DELETED),
        ("prof.durand", "GET", "classes/6A/rendus/alice/devoir.txt", FORBIDDEN),
        ("prof.durand", "PUT", "classes/6A/intrus.txt", FORBIDDEN),
        ("prof.durand", "GET", "classes/6B/rendus/chloe/devoir.txt", OK),
        // A parent: reads the child's class and the child's hand-ins, writes none of it.
        ("parent.alice", "GET", "classes/6A/cours.txt", OK),
        ("parent.alice", "PUT", "classes/6A/mot-des-parents.txt", FORBIDDEN),
        ("parent.alice", "GET", "classes/6A/rendus/alice/devoir.txt", OK),
        ("parent.alice", "PUT", "classes/6A/rendus/alice/aide.txt", FORBIDDEN),
        ("parent.alice", "GET", "classes/6A/rendus/bob/devoir.txt", FORBIDDEN),
        ("parent.alice", "GET", "classes/6B/cours.txt", FORBIDDEN),
        ("parent.alice", "GET", "school/info.txt", OK),
        ("parent.alice", "PUT", "school/parent.txt", FORBIDDEN),
        ("parent.alice", "PUT", "me/parent.txt", CREATED),
        // Staff and admins write the school space.
        ("secretariat", "PUT", "school/menu.txt", CREATED),
        ("secretariat", "MKDIR", "school/circulaires", CREATED),
        ("secretariat", "DELETE", "school/menu.txt", DELETED),
        ("admin", "PUT", "school/reglement.txt", CREATED),
    ];

    let mut failures = Vec::new();
    let mut refused_writes = Vec::new();
    for &(who, method, path, expected) in table {
        let client = school.as_(who);
        let resp = match method {
            "GET" => client.get(path),
            "PUT" => client.put(path, format!("{who} {path}").as_bytes()),
            "DELETE" => client.delete(path),
            "MKDIR" => client.mkdir(path),
            other => unreachable!("{other}"),
        };
        if resp.status != expected {
            failures.push(format!("{who} {method} {path}: expected {expected}, got {resp:?}"));
        } else if resp.status >= 400 {
            resp.error_message();
        }
        if expected == FORBIDDEN && method != "GET" {
            refused_writes.push((method, path));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), table.len(), failures.join("\n"));

    // Refused writes left nothing behind; refused deletes removed nothing (the admin sees every class).
    let admin = school.as_("admin");
    for (method, path) in refused_writes {
        let resp = admin.get(path);
        match method {
            "DELETE" => assert_eq!(resp.status, OK, "refused DELETE {path} removed it: {resp:?}"),
            _ => assert_eq!(resp.status, NOT_FOUND, "refused {method} {path} created it: {resp:?}"),
        }
    }
    // What was allowed is seen by others.
    assert_eq!(
        school.as_("prof.martin").get("classes/6A/rendus/alice/devoir2.txt").expect_status(OK).body,
        b"alice classes/6A/rendus/alice/devoir2.txt"
    );
    assert_eq!(school.as_("bob").get("school/reglement.txt").expect_status(OK).body, b"admin school/reglement.txt");
}

#[test]
fn hand_in_listings_show_only_what_one_may_read() {
    let school = School::new();
    assert_eq!(school.as_("prof.martin").names("classes/6A/rendus/"), ["alice", "bob"]);
    assert_eq!(school.as_("alice").names("classes/6A/rendus/"), ["alice"]);
    assert_eq!(school.as_("bob").names("classes/6A/rendus/"), ["bob"]);
    assert_eq!(school.as_("parent.alice").names("classes/6A/rendus/"), ["alice"]);
    assert_eq!(school.as_("prof.durand").names("classes/6B/rendus/"), ["chloe"]);
    // The class folder shows the teacher's files and the hand-in folder.
    assert_eq!(school.as_("alice").names("classes/6A/"), ["cours.txt", "rendus"]);
    assert_eq!(school.as_("alice").names("school/"), ["info.txt"]);
}

#[test]
fn each_role_sees_itself_in_api_me() {
    let school = School::new();
    for (login, role, classes) in [
        ("prof.martin", "teacher", vec!["6A"]),
        ("alice", "pupil", vec!["6A"]),
        ("secretariat", "staff", vec![]),
        ("admin", "admin", vec![]),
    ] {
        let me = school.as_(login).me();
        assert_eq!(me["login"], login, "{me}");
        assert_eq!(me["role"], role, "{me}");
        assert_eq!(me["classes"], serde_json::json!(classes), "{me}");
    }
    assert_eq!(school.as_("parent.alice").me()["role"], "parent");
}

//! Turning parsed exports into account changes, all-or-nothing.
//!
//! `plan` is pure: given the accounts the box has and what the exports say, it either returns every problem
//! (and the caller changes nothing) or the exact set of accounts to write. People are matched by external id,
//! never by name; logins are `prenom.nom` folded to ASCII with a number on collision and, once given, never
//! change; people missing from a complete export start leaving (disabled now, deleted after a delay).

use std::collections::{BTreeSet, HashMap, HashSet};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::fold;
use super::model::{ChildRef, Issue, Origin, Parsed, Person};
use crate::account::{self, Role, User};

/// What an import did (or would have done), as `POST /api/admin/import` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub created: usize,
    pub updated: usize,
    pub moved: usize,
    pub leaving: usize,
    pub errors: Vec<Issue>,
}

/// The accounts to write, and the report.
#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<User>,
    pub report: Report,
}

/// Alphabet of activation codes: no 0/O, 1/I/L look-alikes, read from a printed sheet.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// A new one-time activation code, 8 characters (printed as `ABCD-EFGH`).
pub fn new_activation_code() -> String {
    let mut rng = rand::thread_rng();
    (0..8).map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char).collect()
}

/// `ABCDEFGH` → `ABCD-EFGH`.
pub fn format_code(code: &str) -> String {
    if code.len() == 8 {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.to_string()
    }
}

fn issue(origin: &Origin, field: &str, message: String) -> Issue {
    Issue { file: origin.file.clone(), line: origin.line, field: field.to_string(), message }
}

fn display_name(p: &Person) -> String {
    format!("{} {}", p.first_name.trim(), p.last_name.trim()).trim().to_string()
}

/// Classes a person belongs to: a teacher's are those they teach in, lead, or are listed in.
fn classes_of(p: &Person) -> Vec<String> {
    let mut classes: Vec<String> = Vec::new();
    let all = p.classes.iter().chain(p.subjects.iter().map(|(c, _)| c)).chain(p.principal_of.iter());
    for class in all {
        if !classes.contains(class) {
            classes.push(class.clone());
        }
    }
    classes
}

/// Picks a free login: `base`, then `base2`, `base3`…
fn free_login(base: &str, taken: &dyn Fn(&str) -> bool) -> String {
    if !taken(base) {
        return base.to_string();
    }
    (2..).map(|n| format!("{base}{n}")).find(|l| !taken(l)).unwrap_or_else(|| base.to_string())
}

fn generated_login(p: &Person) -> String {
    let first = fold::login_part(&p.first_name);
    let last = fold::login_part(&p.last_name);
    let mut login = match (first.is_empty(), last.is_empty()) {
        (false, false) => format!("{first}.{last}"),
        (true, false) => last,
        (false, true) => first,
        (true, true) => String::new(),
    };
    // Leave room for a collision number within the 64-character limit.
    login.truncate(60);
    login.trim_end_matches(['.', '-']).to_string()
}

/// The box's accounts as `plan` reads them: one pass over all of them, then fetches by login. A region
/// holds 100 000 accounts: `plan` keeps only their logins and external ids in memory, not the accounts.
/// A read failure is an error, never "no such account": planning on a partial view would duplicate people.
/// The accounts an import manages (`for_each`: matched by id, marked leaving when missing from a complete
/// export) and every login in use (`get`: at the region, other schools' people too).
pub trait Accounts {
    fn for_each(&self, f: &mut dyn FnMut(&User)) -> Result<(), String>;
    fn get(&self, login: &str) -> Result<Option<User>, String>;
}

impl Accounts for [User] {
    fn for_each(&self, f: &mut dyn FnMut(&User)) -> Result<(), String> {
        self.iter().for_each(f);
        Ok(())
    }
    fn get(&self, login: &str) -> Result<Option<User>, String> {
        Ok(self.iter().find(|u| u.login == login).cloned())
    }
}

impl Accounts for Vec<User> {
    fn for_each(&self, f: &mut dyn FnMut(&User)) -> Result<(), String> {
        self.as_slice().for_each(f)
    }
    fn get(&self, login: &str) -> Result<Option<User>, String> {
        Accounts::get(self.as_slice(), login)
    }
}

/// A plan that refuses the import because the box's own accounts could not be read.
fn unreadable(message: String) -> Plan {
    let errors = vec![Issue {
        file: "annuaire".into(),
        line: 0,
        field: String::new(),
        message: format!("lecture des comptes existants impossible : {message}"),
    }];
    Plan { changes: Vec::new(), report: Report { errors, ..Report::default() } }
}

/// Computes the changes an import makes. `existing` is every account of the box; `now` is Unix ms.
pub fn plan(existing: &(impl Accounts + ?Sized), files: Vec<Parsed>, now: i64) -> Plan {
    let mut errors: Vec<Issue> = Vec::new();
    let mut complete_roles: BTreeSet<&'static str> = BTreeSet::new();
    let mut people: Vec<Person> = Vec::new();
    for file in files {
        errors.extend(file.issues);
        if file.complete {
            complete_roles.extend(file.people.iter().map(|p| p.role.as_str()));
        }
        people.extend(file.people);
    }

    // One record per external id across all the files.
    let mut seen: HashMap<&str, &Origin> = HashMap::with_capacity(people.len());
    for p in &people {
        if let Some(first) = seen.get(p.external_id.as_str()) {
            errors.push(issue(
                &p.origin,
                "id",
                format!(
                    "identifiant « {} » en double (déjà vu dans {} ligne {}) : chaque personne ne doit figurer qu'une fois",
                    p.external_id, first.file, first.line
                ),
            ));
        } else {
            seen.insert(p.external_id.as_str(), &p.origin);
        }
    }

    // External id → login of the accounts already on the box, and every login in use.
    let mut by_id: HashMap<String, String> = HashMap::new();
    let mut taken: HashSet<String> = HashSet::new();
    if let Err(e) = existing.for_each(&mut |u| {
        if let Some(id) = &u.external_id {
            by_id.insert(id.clone(), u.login.clone());
        }
        taken.insert(u.login.clone());
    }) {
        return unreadable(e);
    }

    // A login used outside the accounts this import manages (another school's, at the region) is taken too.
    let elsewhere = |login: &str| existing.get(login).ok().flatten().is_some();

    // Logins: kept for known people, imposed by the export, or generated.
    let mut logins: Vec<String> = Vec::with_capacity(people.len());
    for p in &people {
        let login = if let Some(login) = by_id.get(p.external_id.as_str()) {
            login.clone()
        } else if let Some(wanted) = &p.login {
            if account::validate_login(wanted).is_err() {
                errors.push(issue(
                    &p.origin,
                    "login",
                    format!("identifiant de connexion « {wanted} » invalide (lettres minuscules, chiffres, . - _)"),
                ));
                String::new()
            } else if taken.contains(wanted) || elsewhere(wanted) {
                let owner = match existing.get(wanted) {
                    Ok(Some(u)) => u.display_name,
                    _ => "une autre personne".to_string(),
                };
                errors.push(issue(
                    &p.origin,
                    "login",
                    format!("identifiant de connexion « {wanted} » déjà pris par {owner}"),
                ));
                String::new()
            } else {
                taken.insert(wanted.clone());
                wanted.clone()
            }
        } else {
            let base = generated_login(p);
            if base.is_empty() {
                errors.push(issue(&p.origin, "nom", "nom et prénom vides : impossible de créer un identifiant".into()));
                String::new()
            } else {
                let login = free_login(&base, &|l| taken.contains(l) || elsewhere(l));
                taken.insert(login.clone());
                login
            }
        };
        logins.push(login);
    }

    // External id → login, for this import and the box.
    let mut login_of: HashMap<&str, &str> = by_id.iter().map(|(id, login)| (id.as_str(), login.as_str())).collect();
    for (p, login) in people.iter().zip(&logins) {
        login_of.insert(p.external_id.as_str(), login.as_str());
    }
    // Pupils by folded name, for ONDE's guardians, who name their children.
    let mut pupils_by_name: HashMap<(String, String), Vec<(usize, &Person)>> = HashMap::new();
    for (i, p) in people.iter().enumerate() {
        if p.role == Role::Pupil {
            pupils_by_name.entry((fold::fold(&p.last_name), fold::fold(&p.first_name))).or_default().push((i, p));
        }
    }
    let mut children: Vec<Vec<String>> = vec![Vec::new(); people.len()];
    let index_of: HashMap<&str, usize> = people.iter().enumerate().map(|(i, p)| (p.external_id.as_str(), i)).collect();
    for (i, p) in people.iter().enumerate() {
        for child in &p.children {
            let found = match child {
                ChildRef::Id(id) => login_of.get(id.as_str()).map(|l| l.to_string()).ok_or_else(|| {
                    format!("enfant d'identifiant « {id} » inconnu : importez aussi le fichier des élèves")
                }),
                ChildRef::Name { last_name, first_name, class } => {
                    let key = (fold::fold(last_name), fold::fold(first_name));
                    let candidates: Vec<&(usize, &Person)> = pupils_by_name
                        .get(&key)
                        .map(|v| {
                            v.iter()
                                .filter(|(_, c)| {
                                    class.as_ref().is_none_or(|cl| c.classes.is_empty() || c.classes.contains(cl))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    match candidates.as_slice() {
                        [(j, _)] => Ok(logins[*j].clone()),
                        [] => Err(format!(
                            "enfant « {first_name} {last_name} »{} introuvable parmi les élèves importés : vérifiez l'orthographe ou importez le fichier des élèves",
                            class.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
                        )),
                        _ => Err(format!("plusieurs élèves s'appellent « {first_name} {last_name} » : précisez la classe")),
                    }
                }
            };
            match found {
                Ok(login) if !children[i].contains(&login) => children[i].push(login),
                Ok(_) => {}
                Err(message) => errors.push(issue(&p.origin, "enfant", message)),
            }
        }
    }
    // Pupils who name their parents (AAF): link from the parent's side.
    for (j, p) in people.iter().enumerate() {
        for parent in &p.parents {
            if let Some(&i) = index_of.get(parent.as_str()) {
                if !children[i].contains(&logins[j]) {
                    children[i].push(logins[j].clone());
                }
            }
        }
    }

    if !errors.is_empty() {
        errors.sort_by(|a, b| (a.file.as_str(), a.line).cmp(&(b.file.as_str(), b.line)));
        return Plan { changes: Vec::new(), report: Report { errors, ..Report::default() } };
    }

    let mut report = Report::default();
    // Leavers first, while `seen` still borrows the people: the loop below consumes them, moving their
    // fields into the accounts instead of copying (a region-sized import holds 100 000 of each).
    let mut leavers: Vec<User> = Vec::new();
    if let Err(e) = existing.for_each(&mut |u| {
        let gone = u.external_id.as_deref().is_some_and(|id| !seen.contains_key(id));
        if gone && u.leaving_since.is_none() && complete_roles.contains(u.role.as_str()) {
            leavers.push(u.clone());
        }
    }) {
        return unreadable(e);
    }
    drop((seen, login_of, pupils_by_name, index_of));
    let mut changes = Vec::with_capacity(people.len());
    for ((p, login), kids) in people.into_iter().zip(logins).zip(children) {
        let old = match by_id.get(p.external_id.as_str()).map(|login| existing.get(login)) {
            None => None,
            Some(Ok(old)) => old,
            Some(Err(e)) => return unreadable(e),
        };
        let mut user = old.clone().unwrap_or_else(|| User {
            login,
            created: now,
            activation_code: Some(new_activation_code()),
            ..User::default()
        });
        user.display_name = display_name(&p);
        user.classes = classes_of(&p);
        user.role = p.role;
        user.groups = p.groups;
        user.subjects = p.subjects;
        user.email = p.email.filter(|e| !e.is_empty());
        user.birth_date = p.birth_date;
        user.external_id = Some(p.external_id);
        user.leaving_since = None;
        if p.role == Role::Parent {
            user.children = kids;
        }
        match &old {
            None => report.created += 1,
            Some(old) if *old == user => continue,
            Some(old) => {
                let moved = old.role == Role::Pupil && old.classes != user.classes;
                let other = User { classes: old.classes.clone(), ..user.clone() } != *old;
                if moved {
                    report.moved += 1;
                }
                if other || !moved {
                    report.updated += 1;
                }
            }
        }
        changes.push(user);
    }
    for user in leavers {
        report.leaving += 1;
        changes.push(User { leaving_since: Some(now), ..user });
    }
    Plan { changes, report }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(file: &str, line: u64, id: &str, role: Role, first: &str, last: &str, class: &str) -> Person {
        let mut p = Person::new(Origin { file: file.into(), line }, role);
        p.external_id = id.into();
        p.first_name = first.into();
        p.last_name = last.into();
        if !class.is_empty() {
            p.classes = vec![class.into()];
        }
        p
    }

    fn parsed(people: Vec<Person>, complete: bool) -> Parsed {
        Parsed { people, issues: vec![], complete }
    }

    fn apply(existing: &mut Vec<User>, plan: &Plan) {
        for u in &plan.changes {
            match existing.iter_mut().find(|e| e.login == u.login) {
                Some(e) => *e = u.clone(),
                None => existing.push(u.clone()),
            }
        }
    }

    #[test]
    fn logins_are_prenom_nom_numbered_on_collision_and_stable() {
        let file = || {
            parsed(
                vec![
                    person("e.csv", 2, "1", Role::Pupil, "Léa", "Martin", "CM2"),
                    person("e.csv", 3, "2", Role::Pupil, "Léa", "Martin", "CM1"),
                    person("e.csv", 4, "3", Role::Pupil, "Jean-Éric", "N'Diaye", "CM1"),
                ],
                true,
            )
        };
        let mut users = vec![];
        let plan = plan(users.as_slice(), vec![file()], 1);
        assert!(plan.report.errors.is_empty(), "{:?}", plan.report.errors);
        let logins: Vec<&str> = plan.changes.iter().map(|u| u.login.as_str()).collect();
        assert_eq!(logins[..2], ["lea.martin", "lea.martin2"]);
        assert!(logins[2].starts_with("jean-eric."), "{}", logins[2]);
        assert!(plan.changes.iter().all(|u| u.activation_code.as_ref().is_some_and(|c| c.len() == 8)));
        assert_eq!(plan.report.created, 3);
        apply(&mut users, &plan);
        let again = super::plan(users.as_slice(), vec![file()], 2);
        assert_eq!(again.report, Report::default(), "re-importing the same export changes nothing");
        assert!(again.changes.is_empty());
    }

    #[test]
    fn moves_updates_and_leavers() {
        let mut users = vec![];
        let first = plan(
            &users,
            vec![parsed(
                vec![
                    person("e.csv", 2, "1", Role::Pupil, "Léa", "Martin", "CM1"),
                    person("e.csv", 3, "2", Role::Pupil, "Tom", "Petit", "CM1"),
                    person("e.csv", 4, "3", Role::Pupil, "Zoé", "Roux", "CM1"),
                ],
                true,
            )],
            1,
        );
        apply(&mut users, &first);
        let mut renamed = person("e.csv", 3, "2", Role::Pupil, "Tom", "Petit-Durand", "CM1");
        renamed.birth_date = Some("2015-01-02".into());
        let second = plan(
            &users,
            vec![parsed(vec![person("e.csv", 2, "1", Role::Pupil, "Léa", "Martin", "CM2"), renamed], true)],
            5,
        );
        assert_eq!(
            (second.report.created, second.report.updated, second.report.moved, second.report.leaving),
            (0, 1, 1, 1)
        );
        apply(&mut users, &second);
        let zoe = users.iter().find(|u| u.external_id.as_deref() == Some("3")).expect("zoe");
        assert_eq!(zoe.leaving_since, Some(5));
        let tom = users.iter().find(|u| u.external_id.as_deref() == Some("2")).expect("tom");
        assert_eq!(tom.login, "tom.petit", "a renamed person keeps their login");
        // A partial (delta) export never marks anyone as leaving.
        let third = plan(
            users.as_slice(),
            vec![parsed(vec![person("d.csv", 2, "1", Role::Pupil, "Léa", "Martin", "CM2")], false)],
            9,
        );
        assert_eq!(third.report.leaving, 0);
    }

    #[test]
    fn guardians_are_linked_by_name_and_unknown_children_are_errors() {
        let mut mum = person("r.csv", 2, "p1", Role::Parent, "Anne", "Martin", "");
        mum.children = vec![
            ChildRef::Name { last_name: "MARTIN".into(), first_name: "Lea".into(), class: Some("CM2".into()) },
            ChildRef::Name { last_name: "Inconnu".into(), first_name: "Personne".into(), class: None },
        ];
        let files = vec![
            parsed(vec![person("e.csv", 2, "1", Role::Pupil, "Léa", "Martin", "CM2")], true),
            parsed(vec![mum.clone()], true),
        ];
        let bad = plan(&[] as &[User], files, 1);
        assert!(bad.changes.is_empty());
        assert_eq!(bad.report.errors.len(), 1);
        assert_eq!((bad.report.errors[0].file.as_str(), bad.report.errors[0].line), ("r.csv", 2));
        assert!(bad.report.errors[0].message.contains("Personne Inconnu"), "{}", bad.report.errors[0].message);
        mum.children.pop();
        let good = plan(
            &[] as &[User],
            vec![
                parsed(vec![person("e.csv", 2, "1", Role::Pupil, "Léa", "Martin", "CM2")], true),
                parsed(vec![mum], true),
            ],
            1,
        );
        let parent = good.changes.iter().find(|u| u.role == Role::Parent).expect("parent");
        assert_eq!(parent.children, vec!["lea.martin".to_string()]);
    }

    #[test]
    fn duplicate_ids_across_files_are_reported_with_both_places() {
        let files = vec![
            parsed(vec![person("a.csv", 2, "X", Role::Pupil, "A", "B", "CM1")], true),
            parsed(vec![person("b.csv", 7, "X", Role::Pupil, "C", "D", "CM1")], true),
        ];
        let p = plan(&[] as &[User], files, 1);
        assert_eq!(p.report.errors.len(), 1);
        assert_eq!(p.report.errors[0].line, 7);
        assert!(p.report.errors[0].message.contains("a.csv ligne 2"));
    }
}

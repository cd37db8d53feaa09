//! The tree each user sees, and who may do what in it.
//!
//! A user's view has four kinds of space: `me/` (their own), `classes/<class>/` (read by the class, written
//! by its teachers), `classes/<class>/rendus/<login>/` (each pupil hands in to their own folder, the class's
//! teachers read them all) and `school/` (read by all, written by staff and admins). View paths map onto one
//! shared internal tree (`users/<login>/…`, `classes/…`, `school/…`), so the same file has one copy whoever
//! looks at it.

use crate::account::{Role, User};

/// What a view path resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where it lives in the store; `None` for the virtual folders (`/`, `classes/`).
    pub internal: Option<Vec<String>>,
    pub read: bool,
    pub write: bool,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `/`: lists `me`, `classes`, `school`.
    Root,
    /// `classes/`: lists the classes the user may see.
    Classes,
    /// `classes/<c>/`: its listing always shows `rendus`.
    ClassRoot,
    /// `classes/<c>/rendus/`: teachers see every pupil's folder, a pupil only their own.
    Rendus { class: String },
    /// The root of a space (`me/`, `school/`, `classes/<c>/rendus/<p>/`): exists even before anything is written.
    SpaceRoot,
    /// Anything inside a space.
    Inside,
}

/// How a user relates to a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    None,
    /// Reads the class space (its pupils; parents of its pupils; staff).
    Reader,
    /// Writes the class space and reads all hand-ins (its teachers; admins).
    Teacher,
}

/// The classes a user belongs to; for a parent, their children's (`children_classes` is looked up by the caller).
pub fn classes_of(user: &User, children_classes: &[String]) -> Vec<String> {
    let mut classes = user.classes.clone();
    if user.role == Role::Parent {
        for c in children_classes {
            if !classes.contains(c) {
                classes.push(c.clone());
            }
        }
    }
    classes
}

fn membership(user: &User, class: &str, children_classes: &[String]) -> Membership {
    match user.role {
        Role::Admin => Membership::Teacher,
        Role::Staff => Membership::Reader,
        Role::Teacher if user.classes.iter().any(|c| c == class) => Membership::Teacher,
        Role::Pupil if user.classes.iter().any(|c| c == class) => Membership::Reader,
        Role::Parent if classes_of(user, children_classes).iter().any(|c| c == class) => Membership::Reader,
        _ => Membership::None,
    }
}

fn owned(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Resolves a validated view path for `user`. `None` means "no such place" (404), as opposed to a place the
/// user may not read (a `Target` with `read == false`, 403).
pub fn resolve(user: &User, view: &[String], children_classes: &[String], children: &[String]) -> Option<Target> {
    let seg: Vec<&str> = view.iter().map(String::as_str).collect();
    let target =
        |internal: Vec<String>, read, write, kind| Some(Target { internal: Some(internal), read, write, kind });
    match seg.as_slice() {
        [] => Some(Target { internal: None, read: true, write: false, kind: Kind::Root }),
        ["me", rest @ ..] => {
            let mut internal = owned(&["users", &user.login]);
            internal.extend(rest.iter().map(|s| s.to_string()));
            let kind = if rest.is_empty() { Kind::SpaceRoot } else { Kind::Inside };
            target(internal, true, !rest.is_empty(), kind)
        }
        ["school", rest @ ..] => {
            let write = matches!(user.role, Role::Staff | Role::Admin) && !rest.is_empty();
            let kind = if rest.is_empty() { Kind::SpaceRoot } else { Kind::Inside };
            target(view.to_vec(), true, write, kind)
        }
        ["classes"] => Some(Target { internal: None, read: true, write: false, kind: Kind::Classes }),
        ["classes", class, rest @ ..] => {
            let member = membership(user, class, children_classes);
            if member == Membership::None && user.role != Role::Admin {
                // Another class exists or not: the user may not know either way.
                return target(view.to_vec(), false, false, Kind::Inside);
            }
            match rest {
                [] => target(view.to_vec(), true, false, Kind::ClassRoot),
                ["rendus"] => target(view.to_vec(), true, false, Kind::Rendus { class: class.to_string() }),
                ["rendus", pupil, inner @ ..] => {
                    let own = user.role == Role::Pupil && *pupil == user.login;
                    let child = user.role == Role::Parent && children.iter().any(|c| c == pupil);
                    let read = own || child || member == Membership::Teacher;
                    let write = (own || user.role == Role::Admin) && !inner.is_empty();
                    let kind = if inner.is_empty() { Kind::SpaceRoot } else { Kind::Inside };
                    target(view.to_vec(), read, write, kind)
                }
                _ => target(view.to_vec(), true, member == Membership::Teacher, Kind::Inside),
            }
        }
        _ => None,
    }
}

/// Whether a name in `classes/<c>/rendus/` listing may be shown to `user`.
pub fn may_see_handin(user: &User, class: &str, pupil: &str, children_classes: &[String], children: &[String]) -> bool {
    membership(user, class, children_classes) == Membership::Teacher
        || (user.role == Role::Pupil && user.login == pupil)
        || (user.role == Role::Parent && children.iter().any(|c| c == pupil))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(login: &str, role: Role, classes: &[&str]) -> User {
        User {
            login: login.into(),
            display_name: login.into(),
            role,
            classes: classes.iter().map(|s| s.to_string()).collect(),
            children: vec![],
            ..User::default()
        }
    }

    fn at(u: &User, path: &str) -> Option<(bool, bool)> {
        let view: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(String::from).collect();
        resolve(u, &view, &[], &[]).map(|t| (t.read, t.write))
    }

    #[test]
    fn pupils_read_their_class_and_write_only_their_own_hand_in() {
        let lea = user("lea", Role::Pupil, &["CM2"]);
        assert_eq!(at(&lea, "me/notes.txt"), Some((true, true)));
        assert_eq!(at(&lea, "classes/CM2/cours.pdf"), Some((true, false)));
        assert_eq!(at(&lea, "classes/CM2/rendus/lea/devoir.pdf"), Some((true, true)));
        assert_eq!(at(&lea, "classes/CM2/rendus/tom/devoir.pdf"), Some((false, false)));
        assert_eq!(at(&lea, "classes/CE1/cours.pdf"), Some((false, false)));
        assert_eq!(at(&lea, "school/menu.pdf"), Some((true, false)));
        assert_eq!(at(&lea, "etc/passwd"), None);
    }

    #[test]
    fn teachers_write_their_class_and_read_all_hand_ins() {
        let prof = user("prof", Role::Teacher, &["CM2"]);
        assert_eq!(at(&prof, "classes/CM2/cours.pdf"), Some((true, true)));
        assert_eq!(at(&prof, "classes/CM2/rendus/lea/devoir.pdf"), Some((true, false)));
        assert_eq!(at(&prof, "classes/CM2/rendus"), Some((true, false)));
        assert_eq!(at(&prof, "classes/CE1/cours.pdf"), Some((false, false)));
        assert_eq!(at(&prof, "school/menu.pdf"), Some((true, false)));
    }

    #[test]
    fn staff_and_admins_write_the_school_space() {
        assert_eq!(at(&user("sec", Role::Staff, &[]), "school/menu.pdf"), Some((true, true)));
        assert_eq!(at(&user("admin", Role::Admin, &[]), "classes/CE1/x"), Some((true, true)));
        assert_eq!(at(&user("p", Role::Parent, &[]), "school/menu.pdf"), Some((true, false)));
    }

    #[test]
    fn parents_read_their_childrens_classes_and_hand_ins() {
        let mut mum = user("mum", Role::Parent, &[]);
        mum.children = vec!["lea".into()];
        let view = |p: &str| p.split('/').map(String::from).collect::<Vec<_>>();
        let t = resolve(&mum, &view("classes/CM2/cours.pdf"), &["CM2".into()], &mum.children.clone());
        assert_eq!(t.map(|t| (t.read, t.write)), Some((true, false)));
        let t = resolve(&mum, &view("classes/CM2/rendus/lea/x"), &["CM2".into()], &mum.children.clone());
        assert_eq!(t.map(|t| (t.read, t.write)), Some((true, false)));
        let t = resolve(&mum, &view("classes/CM2/rendus/tom/x"), &["CM2".into()], &mum.children.clone());
        assert_eq!(t.map(|t| (t.read, t.write)), Some((false, false)));
    }
}

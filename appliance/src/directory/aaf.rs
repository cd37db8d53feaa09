//! AAF XML exports of the secondary schools (`ENT_<UAI>_Complet_<date>_Eleve_0000.xml`, `_PersRelEleve_`,
//! `_PersEducNat_`, `_EtabEducNat_`): DSML-like `<addRequest>` entries of `<attr name="…"><value>…</value>`.
//!
//! Files of several hundred MB exist, and an import that ran out of memory and silently dropped people is
//! the classic AAF failure: the file is streamed with quick-xml over a `BufRead`, one entry in memory at a
//! time, each XML event bounded in size, nesting bounded in depth. Line numbers come from counting the
//! newlines the parser consumed ([`LineCounter`]). Any `<!DOCTYPE` is refused (AAF has none; it is how
//! entity bombs get in), a truncated file keeps the people read so far but is reported and never
//! `complete`.
//!
//! Values are often compound with `$`: `ENTEleveClasses` = `0123456A$3A` (UAI$class),
//! `ENTAuxEnsClassesMatieres` = `0123456A$3A$MATHEMATIQUES`, `ENTPersonFonctions` = `0123456A$DIR$DIRECTION`.
//! A leading UAI is removed; a value naming another school than the file's (`ENT_<UAI>_…`) is skipped, so a
//! teacher working in two schools does not bring the other school's `3A` into this one. `functions` keep the
//! part after the UAI as given (`DIR$DIRECTION`). Parent–child links (`ENTElevePersRelEleve`,
//! `ENTAuxPersRelEleveEleve`) keep the first `$` part, the other person's `ENTPersonJointure`.
//!
//! `modifyRequest` and `deleteRequest` entries (Delta exports) are not applied: one issue counts them.

use std::io::BufRead;

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::encoding::{self, Latin1ToUtf8, LimitError, LineCounter, Sniff};
use super::fold::fold;
use super::model::{ChildRef, Issue, Origin, Parsed, Person};
use super::values::{self, issue, push_unique, Seen};
use super::School;
use crate::account::Role;

/// Largest single XML event (a tag, a text node): real values are a few dozen bytes.
pub const MAX_EVENT_BYTES: u64 = 1 << 20;
/// Deepest nesting: AAF goes 5 levels deep.
pub const MAX_DEPTH: usize = 32;
/// Most values in one entry: a teacher has a few hundred at worst.
pub const MAX_VALUES: usize = 10_000;

/// Which AAF file, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AafKind {
    Eleve,
    PersRelEleve,
    PersEducNat,
    EtabEducNat,
    /// An XML file whose name does not say: each entry's role is inferred from its attributes.
    Unknown,
}

pub fn kind_of(file: &str) -> AafKind {
    let lower = file.to_ascii_lowercase();
    if lower.contains("_persreleleve_") {
        AafKind::PersRelEleve
    } else if lower.contains("_perseducnat_") {
        AafKind::PersEducNat
    } else if lower.contains("_etabeducnat_") {
        AafKind::EtabEducNat
    } else if lower.contains("_eleve_") {
        AafKind::Eleve
    } else {
        AafKind::Unknown
    }
}

/// `0123456A`: seven digits and a letter.
pub fn is_uai(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 8 && b[..7].iter().all(u8::is_ascii_digit) && b[7].is_ascii_alphabetic()
}

/// The UAI of `ENT_<UAI>_…` file names.
pub fn uai_of(file: &str) -> Option<String> {
    file.split('_').nth(1).filter(|part| is_uai(part)).map(str::to_ascii_uppercase)
}

/// `_Complet_` exports list everybody; `_Delta_` ones only changes.
pub fn is_complete_export(file: &str) -> bool {
    file.to_ascii_lowercase().contains("_complet_")
}

#[derive(Debug)]
struct Attr {
    name: String,
    line: u64,
    values: Vec<String>,
}

/// One `<addRequest>`: where it starts, its `<identifier><id>`, its attributes.
#[derive(Debug)]
struct Entry {
    line: u64,
    id: Option<String>,
    attrs: Vec<Attr>,
    values: usize,
    broken: bool,
}

impl Entry {
    /// Non-empty values of attribute `name` (names compare case-insensitively, as in LDAP), with the line
    /// of their `<attr>`.
    fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = (&'a str, u64)> + use<'a, 'n> {
        self.attrs
            .iter()
            .filter(move |a| a.name.eq_ignore_ascii_case(name))
            .flat_map(|a| a.values.iter().map(move |v| (v.as_str(), a.line)))
            .filter(|(v, _)| !v.is_empty())
    }

    fn first<'a>(&'a self, name: &str) -> Option<(&'a str, u64)> {
        self.values(name).next()
    }

    fn has(&self, name: &str) -> bool {
        self.first(name).is_some()
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.attrs.iter().any(|a| {
            a.name.len() >= prefix.len()
                && a.name[..prefix.len()].eq_ignore_ascii_case(prefix)
                && a.values.iter().any(|v| !v.is_empty())
        })
    }
}

/// Streams the entries of an AAF file to `on_entry`. Issues about the file itself go to `issues`. True if
/// the file was read to its end and well-formed.
fn read_entries<R: BufRead>(
    file: &str,
    mut reader: R,
    issues: &mut Vec<Issue>,
    on_entry: &mut dyn FnMut(Entry, &mut Vec<Issue>),
) -> bool {
    let head = match reader.fill_buf() {
        Ok(head) => head,
        Err(e) => {
            issues.push(issue(file, 1, "", format!("lecture du fichier impossible ({e}) : déposez-le à nouveau")));
            return false;
        }
    };
    let bom = match encoding::sniff(head) {
        Sniff::Text { bom } => bom,
        Sniff::Refused(why) => {
            issues.push(issue(file, 1, "", why));
            return false;
        }
    };
    let latin1 = bom == 0 && declares_latin1(head);
    reader.consume(bom);
    if latin1 {
        read_xml(file, Latin1ToUtf8::new(reader), issues, on_entry)
    } else {
        read_xml(file, reader, issues, on_entry)
    }
}

/// Whether the XML declaration names a Latin-1 encoding (quick-xml itself reads UTF-8 only).
fn declares_latin1(head: &[u8]) -> bool {
    if !head.starts_with(b"<?xml") {
        return false;
    }
    let end = head.iter().position(|b| *b == b'>').unwrap_or(head.len());
    let decl = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    let Some(rest) = decl.split("encoding").nth(1) else { return false };
    let name: String = rest
        .trim_start_matches(|c: char| c == '=' || c.is_whitespace())
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| !matches!(c, '"' | '\''))
        .collect();
    matches!(fold(&name).as_str(), "iso88591" | "iso885915" | "latin1" | "windows1252" | "cp1252")
}

fn xml_error_message(e: &quick_xml::Error) -> String {
    match e {
        quick_xml::Error::Syntax(s) => {
            format!("XML mal formé ({s}) : le fichier est sans doute tronqué ou abîmé ; déposez l'export complet")
        }
        quick_xml::Error::IllFormed(s) => format!("XML mal formé ({s}) : déposez l'export AAF d'origine"),
        quick_xml::Error::Encoding(_) => {
            "caractères invalides : le fichier n'est pas en UTF-8 comme il le déclare ; déposez l'export d'origine"
                .to_string()
        }
        quick_xml::Error::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<LimitError>()) {
            Some(limit) => format!("{limit} : ce n'est pas un export AAF normal, fichier refusé"),
            None => format!("lecture interrompue ({io}) : déposez le fichier à nouveau"),
        },
        other => format!("XML illisible ({other}) : déposez l'export AAF d'origine"),
    }
}

fn tag_name(e: &BytesStart<'_>) -> String {
    e.local_name().as_ref().to_string()
}

fn newlines(s: &str) -> u64 {
    s.bytes().filter(|b| *b == b'\n').count() as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collect {
    Nothing,
    Value,
    Id,
}

/// The reading state between events.
struct State<'f> {
    file: &'f str,
    entry: Option<Entry>,
    attr: Option<Attr>,
    collect: Collect,
    text: String,
    requests: u64,
    skipped: u64,
    first_skipped: u64,
}

impl State<'_> {
    fn open(&mut self, e: &BytesStart<'_>, name: &str, line: u64, issues: &mut Vec<Issue>) {
        match name {
            "addRequest" | "modifyRequest" | "deleteRequest" => {
                self.requests += 1;
                self.attr = None;
                self.collect = Collect::Nothing;
                self.entry = if name == "addRequest" {
                    Some(Entry { line, id: None, attrs: Vec::new(), values: 0, broken: false })
                } else {
                    if self.skipped == 0 {
                        self.first_skipped = line;
                    }
                    self.skipped += 1;
                    None
                };
            }
            "attr" | "modification" if self.entry.is_some() => {
                let attr_name = match e.try_get_attribute("name") {
                    Ok(Some(a)) => a.normalized_value(XmlVersion::Implicit1_0).map(|v| v.trim().to_string()).ok(),
                    _ => None,
                };
                match attr_name {
                    Some(attr_name) if !attr_name.is_empty() => {
                        self.attr = Some(Attr { name: attr_name, line, values: Vec::new() });
                    }
                    _ => {
                        issues.push(issue(self.file, line, name, format!("<{name}> sans attribut « name » : ignoré")));
                        self.attr = None;
                    }
                }
            }
            "value" if self.attr.is_some() => {
                self.collect = Collect::Value;
                self.text.clear();
            }
            "id" if self.entry.is_some() && self.attr.is_none() => {
                self.collect = Collect::Id;
                self.text.clear();
            }
            _ => {}
        }
    }

    fn close(&mut self, name: &str, issues: &mut Vec<Issue>, on_entry: &mut dyn FnMut(Entry, &mut Vec<Issue>)) {
        match name {
            "value" if self.collect == Collect::Value => {
                self.collect = Collect::Nothing;
                if let (Some(entry), Some(attr)) = (self.entry.as_mut(), self.attr.as_mut()) {
                    entry.values += 1;
                    if entry.values <= MAX_VALUES {
                        attr.values.push(self.text.trim().to_string());
                    }
                }
            }
            "id" if self.collect == Collect::Id => {
                self.collect = Collect::Nothing;
                if let Some(entry) = self.entry.as_mut() {
                    entry.id = Some(self.text.trim().to_string()).filter(|id| !id.is_empty());
                }
            }
            "attr" | "modification" => {
                if let (Some(entry), Some(attr)) = (self.entry.as_mut(), self.attr.take()) {
                    entry.attrs.push(attr);
                }
            }
            "addRequest" => {
                if let Some(entry) = self.entry.take() {
                    if entry.values > MAX_VALUES {
                        issues.push(issue(
                            self.file,
                            entry.line,
                            "addRequest",
                            format!(
                                "fiche de plus de {MAX_VALUES} valeurs ignorée : ce n'est pas une fiche AAF normale"
                            ),
                        ));
                    } else {
                        on_entry(entry, issues);
                    }
                }
            }
            _ => {}
        }
    }
}

fn read_xml<S: BufRead>(
    file: &str,
    source: S,
    issues: &mut Vec<Issue>,
    on_entry: &mut dyn FnMut(Entry, &mut Vec<Issue>),
) -> bool {
    let mut xml = Reader::from_reader(LineCounter::new(source, MAX_EVENT_BYTES));
    let mut buf = Vec::new();
    let mut stack: Vec<(String, u64)> = Vec::new();
    let mut state = State {
        file,
        entry: None,
        attr: None,
        collect: Collect::Nothing,
        text: String::new(),
        requests: 0,
        skipped: 0,
        first_skipped: 0,
    };
    loop {
        buf.clear();
        xml.get_mut().mark();
        let event = xml.read_event_into(&mut buf);
        // The counter stands just after the event: a tag starts as many lines earlier as it has newlines.
        let after = xml.get_ref().line();
        match event {
            Err(e) => {
                issues.push(issue(file, after, "", xml_error_message(&e)));
                return false;
            }
            Ok(Event::Eof) => break,
            Ok(Event::DocType(d)) => {
                issues.push(issue(
                    file,
                    after.saturating_sub(newlines(&d)),
                    "DOCTYPE",
                    "déclaration <!DOCTYPE> (entités XML) refusée par sécurité : un export AAF n'en contient pas ; \
                     déposez le fichier d'origine",
                ));
                return false;
            }
            Ok(Event::Start(e)) => {
                let line = after.saturating_sub(newlines(&e));
                let name = tag_name(&e);
                if stack.len() >= MAX_DEPTH {
                    issues.push(issue(
                        file,
                        line,
                        &name,
                        format!(
                            "XML imbriqué sur plus de {MAX_DEPTH} niveaux : ce n'est pas un export AAF, fichier refusé"
                        ),
                    ));
                    return false;
                }
                state.open(&e, &name, line, issues);
                stack.push((name, line));
            }
            Ok(Event::Empty(e)) => {
                let line = after.saturating_sub(newlines(&e));
                let name = tag_name(&e);
                state.open(&e, &name, line, issues);
                state.close(&name, issues, on_entry);
            }
            Ok(Event::End(e)) => {
                stack.pop();
                state.close(e.local_name().as_ref(), issues, on_entry);
            }
            Ok(Event::Text(t)) if state.collect != Collect::Nothing => state.text.push_str(&t.xml10_content()),
            Ok(Event::CData(c)) if state.collect != Collect::Nothing => state.text.push_str(&c),
            Ok(Event::GeneralRef(r)) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c.to_string()),
                    Ok(None) => resolve_predefined_entity(&r).map(str::to_string),
                    Err(_) => None,
                };
                match resolved {
                    Some(text) if state.collect != Collect::Nothing => state.text.push_str(&text),
                    Some(_) => {}
                    None => {
                        let field = state.attr.as_ref().map_or(String::new(), |a| a.name.clone());
                        issues.push(issue(
                            file,
                            after,
                            &field,
                            format!("référence « &{}; » inconnue : fichier XML invalide, fiche ignorée", &*r),
                        ));
                        if let Some(entry) = state.entry.as_mut() {
                            entry.broken = true;
                        }
                    }
                }
            }
            Ok(_) => {}
        }
    }
    if let Some((name, line)) = stack.last() {
        let end = xml.get_ref().line();
        issues.push(issue(
            file,
            end,
            name,
            format!(
                "fichier XML tronqué : il s'arrête ligne {end} alors que <{name}> (ligne {line}) n'est pas fermé ; \
                 le transfert a sans doute été interrompu, déposez le fichier complet"
            ),
        ));
        return false;
    }
    if state.skipped > 0 {
        issues.push(issue(
            file,
            state.first_skipped,
            "modifyRequest",
            format!(
                "{} fiche(s) de modification ou de suppression (export Delta) non appliquée(s) : \
                 importez l'export Complet",
                state.skipped
            ),
        ));
    }
    if state.requests == 0 {
        issues.push(issue(file, 1, "", "aucune fiche <addRequest> : ce fichier n'est pas un export AAF"));
        return false;
    }
    true
}

/// What the parser knows about the file while turning entries into people.
struct Context<'f> {
    file: &'f str,
    kind: AafKind,
    uai: Option<String>,
}

impl Context<'_> {
    /// The parts of a compound value after its UAI, or `None` if it belongs to another school.
    fn local_parts<'v>(&self, value: &'v str) -> Option<Vec<&'v str>> {
        let parts: Vec<&str> = value.split('$').map(str::trim).collect();
        match parts.first() {
            Some(first) if is_uai(first) => {
                if self.uai.as_deref().is_some_and(|uai| !first.eq_ignore_ascii_case(uai)) {
                    return None;
                }
                Some(parts[1..].to_vec())
            }
            _ => Some(parts),
        }
    }

    /// First part of a local value (a class, a group), checked as a folder name.
    fn folder_names(&self, entry: &Entry, attr: &str, what: &str, issues: &mut Vec<Issue>) -> Vec<String> {
        let mut names = Vec::new();
        for (value, line) in entry.values(attr) {
            let Some(parts) = self.local_parts(value) else { continue };
            match parts.first() {
                Some(&"") | None => {}
                Some(name) => match values::check_class(name, what) {
                    Ok(name) => push_unique(&mut names, name),
                    Err(m) => issues.push(issue(self.file, line, attr, m)),
                },
            }
        }
        names
    }
}

/// The role an `ENTPersonProfils` value gives (`National_ENS` …), teachers first.
fn profile_role(entry: &Entry) -> Option<Role> {
    let mut role = None;
    for (value, _) in entry.values("ENTPersonProfils") {
        let found = match fold(value).as_str() {
            "nationalelv" => Role::Pupil,
            "nationaltut" => Role::Parent,
            "nationalens" => Role::Teacher,
            p if p.starts_with("national") => Role::Staff,
            _ => continue,
        };
        if role.is_none() || found == Role::Teacher {
            role = Some(found);
        }
    }
    role
}

/// Teacher or other staff, for `PersEducNat` entries: a profile `National_ENS`, a title or function `ENS`,
/// or any teaching attribute (`ENTAuxEns…`) makes a teacher.
fn staff_role(entry: &Entry, ctx: &Context<'_>) -> Role {
    if let Some(role @ (Role::Teacher | Role::Staff)) = profile_role(entry) {
        return role;
    }
    let teaches = entry.has_prefix("ENTAuxEns")
        || entry.values("title").any(|(v, _)| fold(v) == "ens")
        || entry.values("categoriePersonne").any(|(v, _)| fold(v) == "enseignant")
        || entry
            .values("ENTPersonFonctions")
            .filter_map(|(v, _)| ctx.local_parts(v))
            .any(|parts| parts.first().is_some_and(|code| code.eq_ignore_ascii_case("ENS")));
    if teaches {
        Role::Teacher
    } else {
        Role::Staff
    }
}

fn role_of(entry: &Entry, ctx: &Context<'_>) -> Option<Role> {
    match ctx.kind {
        AafKind::Eleve => Some(Role::Pupil),
        AafKind::PersRelEleve => Some(Role::Parent),
        AafKind::PersEducNat => Some(staff_role(entry, ctx)),
        AafKind::EtabEducNat => None,
        AafKind::Unknown => match profile_role(entry) {
            Some(Role::Teacher | Role::Staff) => Some(staff_role(entry, ctx)),
            Some(role) => Some(role),
            None if entry.has_prefix("ENTEleve") => Some(Role::Pupil),
            None if entry.has("ENTAuxPersRelEleveEleve") => Some(Role::Parent),
            None if entry.has_prefix("ENTAuxEns") || entry.has("ENTPersonFonctions") => Some(staff_role(entry, ctx)),
            None => None,
        },
    }
}

fn person_of(entry: &Entry, ctx: &Context<'_>, issues: &mut Vec<Issue>) -> Option<Person> {
    let file = ctx.file;
    if entry.broken {
        return None;
    }
    let Some(id) = entry.first("ENTPersonJointure").map(|(v, _)| v).or(entry.id.as_deref()) else {
        issues.push(issue(
            file,
            entry.line,
            "ENTPersonJointure",
            "fiche sans ENTPersonJointure (identifiant) : ignorée ; refaites l'export AAF",
        ));
        return None;
    };
    let name = |attr: &str, what: &str, issues: &mut Vec<Issue>| {
        let (value, line) = entry.first(attr).unwrap_or(("", entry.line));
        values::check_name(value, what).map_err(|m| issues.push(issue(file, line, attr, m))).ok()
    };
    let last = name("sn", "nom (sn)", issues);
    let first = name("givenName", "prénom (givenName)", issues);
    let (Some(last), Some(first)) = (last, first) else { return None };
    let Some(role) = role_of(entry, ctx) else {
        issues.push(issue(
            file,
            entry.line,
            "ENTPersonProfils",
            format!(
                "fiche « {last} {first} » : impossible de dire si c'est un élève, un parent ou un personnel ; ignorée"
            ),
        ));
        return None;
    };
    let mut person = Person::new(Origin { file: file.to_string(), line: entry.line }, role);
    person.external_id = id.to_string();
    person.last_name = last;
    person.first_name = first;
    if let Some((raw, line)) = entry.first("ENTPersonDateNaissance") {
        match values::parse_date(raw) {
            Some(date) => person.birth_date = Some(date),
            None => issues.push(issue(file, line, "ENTPersonDateNaissance", values::bad_date_message(raw))),
        }
    }
    if let Some((raw, line)) = entry.first("mail") {
        match values::check_email(raw) {
            Ok(mail) => person.email = Some(mail),
            Err(m) => issues.push(issue(file, line, "mail", m)),
        }
    }
    person.uai = entry.first("ENTPersonStructRattach").map(|(v, _)| v.to_string());
    for attr in ["ENTEleveClasses", "ENTAuxEnsClasses"] {
        for class in ctx.folder_names(entry, attr, "classe", issues) {
            push_unique(&mut person.classes, class);
        }
    }
    for attr in ["ENTEleveGroupes", "ENTAuxEnsGroupes", "ENTAuxEnsGroupesMatieres"] {
        for group in ctx.folder_names(entry, attr, "groupe", issues) {
            push_unique(&mut person.groups, group);
        }
    }
    for class in ctx.folder_names(entry, "ENTAuxEnsClassesPrincipal", "classe", issues) {
        push_unique(&mut person.classes, class.clone());
        push_unique(&mut person.principal_of, class);
    }
    for (value, line) in entry.values("ENTAuxEnsClassesMatieres") {
        let Some(parts) = ctx.local_parts(value) else { continue };
        let (Some(class), subject) = (parts.first().filter(|c| !c.is_empty()), parts.get(1)) else { continue };
        match values::check_class(class, "classe") {
            Ok(class) => {
                if let Some(subject) = subject.filter(|s| !s.is_empty()) {
                    push_unique(&mut person.subjects, (class.clone(), subject.to_string()));
                }
                push_unique(&mut person.classes, class);
            }
            Err(m) => issues.push(issue(file, line, "ENTAuxEnsClassesMatieres", m)),
        }
    }
    for (value, _) in entry.values("ENTPersonFonctions") {
        if let Some(parts) = ctx.local_parts(value) {
            let function = parts.join("$");
            if !function.trim_matches('$').is_empty() {
                push_unique(&mut person.functions, function);
            }
        }
    }
    for attr in ["ENTElevePersRelEleve", "ENTEleveParents", "ENTEleveAutoriteParentale"] {
        for (value, _) in entry.values(attr) {
            if let Some(parent) = value.split('$').next().map(str::trim).filter(|p| !p.is_empty()) {
                push_unique(&mut person.parents, parent.to_string());
            }
        }
    }
    for (value, _) in entry.values("ENTAuxPersRelEleveEleve") {
        if let Some(child) = value.split('$').next().map(str::trim).filter(|c| !c.is_empty()) {
            push_unique(&mut person.children, ChildRef::Id(child.to_string()));
        }
    }
    Some(person)
}

/// Parses a people file (`Eleve`, `PersRelEleve`, `PersEducNat`, or an XML file of unknown name). An
/// `EtabEducNat` file gives no people (see [`parse_schools`]) and is never `complete`.
pub fn parse<R: BufRead>(file: &str, reader: R) -> Parsed {
    let ctx = Context { file, kind: kind_of(file), uai: uai_of(file) };
    let mut parsed = Parsed::default();
    let mut people = Vec::new();
    let mut seen = Seen::default();
    let finished = read_entries(file, reader, &mut parsed.issues, &mut |entry, issues| {
        if ctx.kind == AafKind::EtabEducNat {
            return;
        }
        let Some(person) = person_of(&entry, &ctx, issues) else { return };
        if let Some(first_line) = seen.first_line(&person.external_id, entry.line) {
            issues.push(issue(
                file,
                entry.line,
                "ENTPersonJointure",
                format!(
                    "identifiant « {} » déjà utilisé ligne {first_line} : deux fiches pour la même personne, \
                     la seconde est ignorée ; signalez-le au responsable de l'annuaire",
                    person.external_id
                ),
            ));
            return;
        }
        people.push(person);
    });
    parsed.people = people;
    parsed.complete = finished && ctx.kind != AafKind::EtabEducNat && is_complete_export(file);
    parsed
}

/// Parses an `EtabEducNat` file into its schools (`ENTStructureUAI`, `ENTStructureNomCourant`).
pub fn parse_schools<R: BufRead>(file: &str, reader: R) -> (Vec<School>, Vec<Issue>) {
    let mut issues = Vec::new();
    let mut schools = Vec::new();
    read_entries(file, reader, &mut issues, &mut |entry, issues| {
        let uai = entry.first("ENTStructureUAI").map(|(v, _)| v).or(entry.id.as_deref());
        let Some(uai) = uai.filter(|u| is_uai(u)) else {
            issues.push(issue(
                file,
                entry.line,
                "ENTStructureUAI",
                "établissement sans UAI valide (7 chiffres et une lettre) : ignoré",
            ));
            return;
        };
        let name = ["ENTStructureNomCourant", "ou", "cn"].iter().find_map(|a| entry.first(a)).map_or("", |(v, _)| v);
        schools.push(School {
            uai: uai.to_ascii_uppercase(),
            name: name.to_string(),
            origin: Origin { file: file.to_string(), line: entry.line },
        });
    });
    (schools, issues)
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read};

    use super::*;
    use crate::directory::parse_bytes;

    const ELEVE: &str = "ENT_0123456A_Complet_20260901_Eleve_0000.xml";

    #[test]
    fn file_names_say_kind_uai_and_completeness() {
        assert_eq!(kind_of(ELEVE), AafKind::Eleve);
        assert_eq!(kind_of("ENT_0123456A_Delta_20260902_PersRelEleve_0001.xml"), AafKind::PersRelEleve);
        assert_eq!(kind_of("ENT_0123456A_Complet_20260901_PersEducNat_0000.xml"), AafKind::PersEducNat);
        assert_eq!(kind_of("ENT_0123456A_Complet_20260901_EtabEducNat_0000.xml"), AafKind::EtabEducNat);
        assert_eq!(kind_of("export.xml"), AafKind::Unknown);
        assert_eq!(uai_of(ELEVE).as_deref(), Some("0123456A"));
        assert!(is_complete_export(ELEVE));
        assert!(!is_complete_export("ENT_0123456A_Delta_20260902_Eleve_0001.xml"));
    }

    #[test]
    fn pupils_with_classes_groups_parents_and_lines() {
        let parsed = parse_bytes(ELEVE, &fixture!("aaf/ENT_0123456A_Complet_20260901_Eleve_0000.xml"));
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
        assert!(parsed.complete);
        assert_eq!(parsed.people.len(), 5);
        let lea = &parsed.people[0];
        assert_eq!(lea.external_id, "5100001");
        assert_eq!((lea.last_name.as_str(), lea.first_name.as_str()), ("DUPONT", "Léa"));
        assert_eq!(lea.role, Role::Pupil);
        assert_eq!(lea.birth_date.as_deref(), Some("2012-03-31"));
        assert_eq!(lea.classes, ["3A"]);
        assert_eq!(lea.groups, ["3A_ANGLAIS", "LATIN"]);
        assert_eq!(lea.parents, ["6100001", "6100002"]);
        assert_eq!(lea.uai.as_deref(), Some("0123456A"));
        assert_eq!(lea.email, None);
        assert_eq!(lea.origin, Origin { file: ELEVE.into(), line: 3 });
        // The second entry writes each attribute on one line: lines still right.
        assert_eq!(parsed.people[1].origin.line, 46);
        assert_eq!(parsed.people[1].first_name, "Zoé");
        assert_eq!(parsed.people[2].last_name, "N'DIAYE");
        assert_eq!(parsed.people[2].birth_date.as_deref(), Some("2012-02-29"));
        // Character and predefined references are resolved.
        assert_eq!(parsed.people[4].first_name, "Léna & Chloé");
        assert_eq!(parsed.people[4].origin.line, 128);
    }

    #[test]
    fn guardians_link_their_children_by_id() {
        let name = "ENT_0123456A_Complet_20260901_PersRelEleve_0000.xml";
        let parsed = parse_bytes(name, &fixture!("aaf/ENT_0123456A_Complet_20260901_PersRelEleve_0000.xml"));
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
        assert_eq!(parsed.people.len(), 4);
        let jerome = &parsed.people[2];
        assert_eq!((jerome.first_name.as_str(), jerome.role), ("Jérôme", Role::Parent));
        assert_eq!(jerome.children, [ChildRef::Id("5100002".into()), ChildRef::Id("5100003".into())]);
        assert_eq!(jerome.email.as_deref(), Some("jerome.martin@example.org"));
        assert_eq!(parsed.people[1].email, None);
    }

    #[test]
    fn staff_get_subjects_principal_classes_and_functions_of_this_school_only() {
        let name = "ENT_0123456A_Complet_20260901_PersEducNat_0000.xml";
        let parsed = parse_bytes(name, &fixture!("aaf/ENT_0123456A_Complet_20260901_PersEducNat_0000.xml"));
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
        assert_eq!(parsed.people.len(), 4);
        let garnier = &parsed.people[0];
        assert_eq!(garnier.role, Role::Teacher);
        assert_eq!(garnier.first_name, "Hélène");
        assert_eq!(garnier.classes, ["3A", "4B"], "5C belongs to another school");
        let subjects: Vec<(&str, &str)> = garnier.subjects.iter().map(|(c, s)| (c.as_str(), s.as_str())).collect();
        assert_eq!(subjects, [("3A", "MATHEMATIQUES"), ("4B", "MATHEMATIQUES"), ("3A", "SCIENCES PHYSIQUES")]);
        assert_eq!(garnier.principal_of, ["3A"]);
        assert_eq!(garnier.groups, ["LATIN"]);
        assert_eq!(garnier.functions, ["ENS$ENSEIGNEMENT$L1300$MATHEMATIQUES"]);
        assert_eq!(garnier.birth_date.as_deref(), Some("1978-05-14"));
        let rousseau = &parsed.people[1];
        assert_eq!(rousseau.role, Role::Teacher, "an ENS function without profile is a teacher");
        assert_eq!(rousseau.subjects, [("4B".to_string(), "FRANCAIS".to_string())]);
        let chateau = &parsed.people[2];
        assert_eq!((chateau.role, chateau.functions.as_slice()), (Role::Staff, &["DIR$DIRECTION".to_string()][..]));
        assert_eq!(parsed.people[3].role, Role::Staff);
        assert_eq!(parsed.people[3].first_name, "Jean-Éric");
    }

    #[test]
    fn the_school_file_gives_a_school_and_no_people() {
        let name = "ENT_0123456A_Complet_20260901_EtabEducNat_0000.xml";
        let bytes = fixture!("aaf/ENT_0123456A_Complet_20260901_EtabEducNat_0000.xml");
        let parsed = parse_bytes(name, &bytes);
        assert!(parsed.people.is_empty() && parsed.issues.is_empty());
        assert!(!parsed.complete, "a file without people must never make everybody a leaver");
        let (schools, issues) = crate::directory::parse_schools(name, &bytes[..]);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(
            schools,
            [School {
                uai: "0123456A".into(),
                name: "COLLEGE DES TILLEULS".into(),
                origin: Origin { file: name.into(), line: 3 }
            }]
        );
    }

    #[test]
    fn bad_values_are_reported_on_the_line_of_their_attribute() {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ficAlimMENESR>\n<addRequest>\n<attributes>\n\
            <attr name=\"ENTPersonJointure\"><value>1</value></attr>\n\
            <attr name=\"sn\"><value>DUPONT</value></attr>\n\
            <attr name=\"givenName\"><value>Léa</value></attr>\n\
            <attr name=\"ENTPersonDateNaissance\">\n<value>31/02/2012</value>\n</attr>\n\
            <attr name=\"ENTEleveClasses\"><value>0123456A$3/A</value></attr>\n\
            <attr name=\"mail\"><value>pas-un-courriel</value></attr>\n\
            </attributes>\n</addRequest>\n\
            <addRequest><attributes><attr name=\"ENTPersonJointure\"><value>2</value></attr>\n\
            <attr name=\"givenName\"><value>Zoé</value></attr></attributes></addRequest>\n\
            <modifyRequest><identifier><id>3</id></identifier></modifyRequest>\n\
            <deleteRequest><identifier><id>4</id></identifier></deleteRequest>\n\
            </ficAlimMENESR>\n";
        let name = "ENT_0123456A_Delta_20260902_Eleve_0001.xml";
        let parsed = parse_bytes(name, xml.as_bytes());
        assert!(!parsed.complete);
        assert_eq!(parsed.people.len(), 1);
        assert_eq!(parsed.people[0].birth_date, None);
        assert!(parsed.people[0].classes.is_empty());
        let found: Vec<(u64, &str)> = parsed.issues.iter().map(|i| (i.line, i.field.as_str())).collect();
        assert_eq!(
            found,
            [(8, "ENTPersonDateNaissance"), (12, "mail"), (11, "ENTEleveClasses"), (15, "sn"), (17, "modifyRequest"),],
            "{:?}",
            parsed.issues
        );
        assert_eq!(parsed.issues[0].message, "date de naissance « 31/02/2012 » invalide (attendu JJ/MM/AAAA)");
        assert!(parsed.issues[4].message.starts_with("2 fiche(s)"), "{}", parsed.issues[4].message);
    }

    #[test]
    fn latin1_declared_files_are_read() {
        let xml = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n<ficAlimMENESR><addRequest><attributes>\
            <attr name=\"ENTPersonJointure\"><value>1</value></attr><attr name=\"sn\"><value>B\xc9RANGER</value></attr>\
            <attr name=\"givenName\"><value>Chlo\xe9</value></attr></attributes></addRequest></ficAlimMENESR>";
        let parsed = parse_bytes(ELEVE, xml);
        assert!(parsed.issues.is_empty(), "{:?}", parsed.issues);
        assert_eq!((parsed.people[0].last_name.as_str(), parsed.people[0].first_name.as_str()), ("BÉRANGER", "Chloé"));
        // Undeclared Latin-1 is not UTF-8: refused with the line, not mangled.
        let body = xml.iter().position(|b| *b == b'\n').map_or(&xml[..], |i| &xml[i..]);
        let raw = [&b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>"[..], body].concat();
        let parsed = parse_bytes(ELEVE, &raw);
        assert!(parsed.people.is_empty());
        assert!(!parsed.complete);
        assert_eq!(parsed.issues.len(), 1, "{:?}", parsed.issues);
        assert_eq!(parsed.issues[0].line, 2);
        assert!(parsed.issues[0].message.contains("UTF-8"), "{:?}", parsed.issues);
    }

    /// Produces a large AAF file entry by entry, never holding it whole.
    struct Generated {
        next: usize,
        count: usize,
        chunk: Vec<u8>,
        pos: usize,
        produced: u64,
    }

    impl Read for Generated {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.pos == self.chunk.len() {
                self.chunk.clear();
                self.pos = 0;
                if self.next == 0 {
                    self.chunk.extend_from_slice(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ficAlimMENESR>\n");
                }
                if self.next < self.count {
                    let i = self.next;
                    self.chunk.extend_from_slice(
                        format!(
                            "  <addRequest>\n    <identifier>\n      <id>{i}</id>\n    </identifier>\n    <attributes>\n\
                             <attr name=\"ENTPersonJointure\">\n<value>{i}</value>\n</attr>\n\
                             <attr name=\"sn\">\n<value>ÉLÈVE{i}</value>\n</attr>\n\
                             <attr name=\"givenName\">\n<value>Zoé</value>\n</attr>\n\
                             <attr name=\"ENTPersonDateNaissance\">\n<value>{:02}/03/2012</value>\n</attr>\n\
                             <attr name=\"ENTEleveClasses\">\n<value>0123456A$3{}</value>\n</attr>\n\
                             <attr name=\"ENTEleveGroupes\">\n<value>0123456A$LATIN</value>\n<value>0123456A$CHORALE</value>\n</attr>\n\
                             <attr name=\"ENTElevePersRelEleve\">\n<value>P{i}$1$1$1$0$1</value>\n</attr>\n\
                             <attr name=\"ENTPersonStructRattach\">\n<value>0123456A</value>\n</attr>\n\
                             </attributes>\n  </addRequest>\n",
                            i % 28 + 1,
                            ["A", "B", "C"][i % 3],
                        )
                        .as_bytes(),
                    );
                } else if self.next == self.count {
                    self.chunk.extend_from_slice(b"</ficAlimMENESR>\n");
                }
                self.next += 1;
            }
            let n = out.len().min(self.chunk.len() - self.pos);
            out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
            self.pos += n;
            self.produced += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn multi_megabyte_files_stream() {
        let count = 14_000;
        let mut source = Generated { next: 0, count, chunk: Vec::new(), pos: 0, produced: 0 };
        let parsed = parse(ELEVE, BufReader::new(&mut source));
        assert!(source.produced > 8 << 20, "only {} bytes", source.produced);
        assert!(parsed.issues.is_empty(), "{:?}", &parsed.issues[..parsed.issues.len().min(3)]);
        assert!(parsed.complete);
        assert_eq!(parsed.people.len(), count);
        let last = &parsed.people[count - 1];
        assert_eq!(last.external_id, (count - 1).to_string());
        assert_eq!(last.classes, [["3A", "3B", "3C"][(count - 1) % 3]]);
        assert_eq!(last.parents, [format!("P{}", count - 1)]);
        // The first entry on line 3, then 32 lines per entry.
        assert_eq!(last.origin.line, 3 + 32 * (count as u64 - 1));
    }
}

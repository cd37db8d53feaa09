//! What the national exports say about a person, once parsed: the common shape of ONDE, AAF and generic CSV
//! records, before any matching against the box's accounts.

use serde::{Deserialize, Serialize};

use crate::account::Role;

/// Where a record or a problem comes from: the file's own name and line (header = line 1; for XML, the
/// line of the element).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: String,
    pub line: u64,
}

/// One problem found in an export. `message` is French and says what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub file: String,
    pub line: u64,
    pub field: String,
    pub message: String,
}

/// How a parent record names a child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildRef {
    /// By the child's external id (AAF `ENTAuxPersRelEleveEleve`, generic CSV).
    Id(String),
    /// By name and class, as ONDE's responsables file does.
    Name { last_name: String, first_name: String, class: Option<String> },
}

/// One person of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub origin: Origin,
    /// Stable key across exports (AAF `ENTPersonJointure`; for files without one, see each parser).
    pub external_id: String,
    pub role: Role,
    pub last_name: String,
    pub first_name: String,
    /// ISO 8601 date (`2012-03-31`), validated.
    pub birth_date: Option<String>,
    pub classes: Vec<String>,
    pub groups: Vec<String>,
    pub email: Option<String>,
    /// A login the export imposes (generic CSV `login`/`alias`); otherwise one is generated.
    pub login: Option<String>,
    /// `(class, subject)` pairs a teacher teaches (AAF `ENTAuxEnsClassesMatieres`).
    pub subjects: Vec<(String, String)>,
    /// Classes where the teacher is professeur principal.
    pub principal_of: Vec<String>,
    /// Functions of staff (AAF `ENTPersonFonctions`), as given.
    pub functions: Vec<String>,
    /// For parents: their children.
    pub children: Vec<ChildRef>,
    /// For pupils: their parents' external ids, when the export links that way (AAF `ENTElevePersRelEleve`).
    pub parents: Vec<String>,
    /// The établissement the export attaches the person to (AAF `ENTPersonStructRattach`).
    pub uai: Option<String>,
}

impl Person {
    pub fn new(origin: Origin, role: Role) -> Person {
        Person {
            origin,
            external_id: String::new(),
            role,
            last_name: String::new(),
            first_name: String::new(),
            birth_date: None,
            classes: Vec::new(),
            groups: Vec::new(),
            email: None,
            login: None,
            subjects: Vec::new(),
            principal_of: Vec::new(),
            functions: Vec::new(),
            children: Vec::new(),
            parents: Vec::new(),
            uai: None,
        }
    }
}

/// What one export file held.
#[derive(Debug, Default)]
pub struct Parsed {
    pub people: Vec<Person>,
    pub issues: Vec<Issue>,
    /// True for AAF "Complet" exports and ONDE extractions: people missing from them are leaving.
    pub complete: bool,
}

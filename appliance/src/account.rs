//! Accounts: who people are, their role and classes, and their password (argon2id, never stored in clear).

use std::sync::Mutex;

use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use serde::{Deserialize, Serialize};

use crate::path;

/// The ENT profiles (entcore: Student, Teacher, Relative, Personnel, plus the box's own admin).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Pupil,
    Teacher,
    Parent,
    Staff,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Pupil, Role::Teacher, Role::Parent, Role::Staff, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pupil => "pupil",
            Role::Teacher => "teacher",
            Role::Parent => "parent",
            Role::Staff => "staff",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The French word the portal shows.
    pub fn label(self) -> &'static str {
        match self {
            Role::Pupil => "Élève",
            Role::Teacher => "Enseignant",
            Role::Parent => "Parent",
            Role::Staff => "Personnel",
            Role::Admin => "Administrateur",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub login: String,
    pub display_name: String,
    pub role: Role,
    #[serde(default)]
    pub classes: Vec<String>,
    /// Logins of a parent's children.
    #[serde(default)]
    pub children: Vec<String>,
    /// PHC string of the argon2id hash; empty until an imported account is activated.
    #[serde(default)]
    pub password_hash: String,
    /// Unix milliseconds.
    pub created: i64,
    /// The stable id of the national export the account came from (AAF `ENTPersonJointure`…); imports match
    /// people by it, never by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// `(class, subject)` pairs a teacher teaches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<String>,
    /// Set when a complete export no longer lists the person: the account is disabled at once and deleted,
    /// with its personal space, after the configured delay (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving_since: Option<i64>,
    /// One-time code printed on the activation sheet; the first login with it must choose a password. Kept in
    /// clear (like a temporary password) so the admin can reprint the sheet; it dies at activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_code: Option<String>,
    /// The school (UAI) of the account, at the region, which holds every school's people; `None` on a box
    /// (all its people are its school's) and for the region's own accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub school: Option<String>,
    /// When the password (or the activation) last changed, Unix ms: when a box and the region both changed
    /// it before they synced, the later change wins.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub password_changed: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl User {
    pub fn disabled(&self) -> bool {
        self.leaving_since.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("« {0} » n'est pas un UAI : 7 chiffres puis une lettre, par exemple 0123456A")]
    BadUai(String),
    #[error("l'identifiant « {0} » n'est pas valide : lettres minuscules, chiffres, « . », « - » ou « _ », 64 caractères au plus")]
    BadLogin(String),
    #[error("le nom affiché est vide ou trop long")]
    BadDisplayName,
    #[error("le mot de passe doit contenir au moins 8 caractères")]
    WeakPassword,
    #[error("le nom de classe « {0} » n'est pas valide")]
    BadClass(String),
    #[error("hachage du mot de passe impossible : {0}")]
    Hash(String),
}

/// OWASP's recommended argon2id parameters: 19 MiB of memory, 2 passes, 1 lane.
fn params() -> Params {
    Params::new(19 * 1024, 2, 1, None).unwrap_or_default()
}

/// Argon2's working memory, kept between hashes. Allocated per hash, each 19 MiB block went back to glibc,
/// which kept it: the box's RSS grew by 18 MiB per concurrent login and passed 2 GiB in a benchmark. Reused,
/// the memory stays at `POOLED` blocks; the app runs one hash at a time.
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());
const POOLED: usize = 1;

fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let mut memory = MEMORY.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let result = f(&mut memory[..blocks]);
    let mut pool = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < POOLED {
        pool.push(memory);
    }
    result
}

pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let params = params();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt.decode_b64(&mut salt_bytes).map_err(|e| AccountError::Hash(e.to_string()))?;
    let mut out = [0u8; 32];
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    with_memory(params.block_count(), |memory| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt_raw, &mut out, memory)
    })
    .map_err(|e| AccountError::Hash(e.to_string()))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| AccountError::Hash(e.to_string()))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| AccountError::Hash(e.to_string()))?),
    };
    Ok(phc.to_string())
}

/// Checks a password against a stored hash. Slow on purpose (tens of ms): run it on a blocking thread.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Ok(params), Some(expected), Some(salt)) = (Params::try_from(&hash), hash.hash, hash.salt) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else { return false };
    let version = hash.version.and_then(|v| Version::try_from(v).ok()).unwrap_or(Version::V0x13);
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params.clone());
    let computed = with_memory(params.block_count(), |memory| {
        argon.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, memory)
    });
    computed.is_ok() && crate::session::same_bytes(&out, expected.as_bytes())
}

/// A hash of a random password, verified against when the login is unknown so that an unknown login and a
/// wrong password take the same time.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_password()).unwrap_or_default())
}

/// A password a technician can read aloud: 16 characters without look-alikes.
pub fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..16).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

pub fn validate_login(login: &str) -> Result<(), AccountError> {
    let ok = !login.is_empty()
        && login.len() <= 64
        && login.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
        && !login.starts_with('.')
        && login != "..";
    if ok {
        Ok(())
    } else {
        Err(AccountError::BadLogin(login.to_string()))
    }
}

/// What an admin asks for when creating an account.
#[derive(Debug, Deserialize)]
pub struct NewUser {
    pub login: String,
    pub display_name: String,
    pub role: Role,
    pub password: String,
    #[serde(default)]
    pub classes: Vec<String>,
    #[serde(default)]
    pub children: Vec<String>,
    /// At the regional gateway: the school the account belongs to.
    #[serde(default)]
    pub uai: Option<String>,
}

impl NewUser {
    /// Validates every field and hashes the password.
    pub fn into_user(self) -> Result<User, AccountError> {
        validate_login(&self.login)?;
        let display_name = self.display_name.trim().to_string();
        if display_name.is_empty() || display_name.chars().count() > 128 || display_name.chars().any(char::is_control) {
            return Err(AccountError::BadDisplayName);
        }
        if self.password.chars().count() < 8 {
            return Err(AccountError::WeakPassword);
        }
        let mut classes = Vec::new();
        for class in self.classes {
            let class = path::normalize_segment(class.trim()).map_err(|_| AccountError::BadClass(class.clone()))?;
            if class == "rendus" {
                return Err(AccountError::BadClass(class));
            }
            if !classes.contains(&class) {
                classes.push(class);
            }
        }
        for child in &self.children {
            validate_login(child)?;
        }
        if let Some(uai) = self.uai.as_deref().filter(|u| !firmware_config::is_uai(u)) {
            return Err(AccountError::BadUai(uai.to_owned()));
        }
        Ok(User {
            school: self.uai,
            login: self.login,
            display_name,
            role: self.role,
            classes,
            children: self.children,
            password_hash: hash_password(&self.password)?,
            created: crate::store::now_ms(),
            ..User::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsE", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn logins_are_the_ent_kind() {
        for ok in ["admin", "jean.dupont", "marie-claire.martin2", "a_b"] {
            assert!(validate_login(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Jean", "jean dupont", "../x", ".hidden", "é", "a/b", &"x".repeat(65)] {
            assert!(validate_login(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_users_are_checked_field_by_field() {
        let base = || NewUser {
            login: "lea.martin".into(),
            display_name: "Léa Martin".into(),
            role: Role::Pupil,
            password: "motdepasse".into(),
            classes: vec!["CM2 A".into(), "CM2 A".into()],
            children: vec![],
            uai: None,
        };
        let user = base().into_user().expect("valid");
        assert_eq!(user.classes, vec!["CM2 A".to_string()]);
        assert!(matches!(NewUser { password: "court".into(), ..base() }.into_user(), Err(AccountError::WeakPassword)));
        assert!(matches!(
            NewUser { classes: vec!["../x".into()], ..base() }.into_user(),
            Err(AccountError::BadClass(_))
        ));
        assert!(matches!(
            NewUser { classes: vec!["rendus".into()], ..base() }.into_user(),
            Err(AccountError::BadClass(_))
        ));
        assert!(matches!(
            NewUser { display_name: " ".into(), ..base() }.into_user(),
            Err(AccountError::BadDisplayName)
        ));
    }
}

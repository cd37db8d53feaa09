//! The box's shared state and the operations that several front ends (JSON API, portal pages) share:
//! opening the store, the first admin account, logging in, quotas, and what a user may see.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use firmware_config::Config;

use std::path::PathBuf;

use crate::account::{self, Role, User};
use crate::directory::import::{self, Report};
use crate::directory::upload;
use crate::metrics::Metrics;
use crate::session::{self, Session};
use crate::store::{self, Store, StoreError};
use crate::throttle::Throttle;

/// The folder of a school in the tree: the region keeps each school's replica under `schools/<UAI>/`; a box's
/// school is the whole tree.
pub fn school_root(school: Option<&str>) -> Vec<String> {
    match school {
        Some(uai) => vec![store::versions::SCHOOLS.to_string(), uai.to_string()],
        None => Vec::new(),
    }
}

pub struct App {
    pub config: Config,
    pub store: Store,
    pub throttle: Throttle,
    pub metrics: Metrics,
    /// Set when this process is the regional gateway: its CA and enrollment state.
    pub region: Option<Arc<crate::region::Gateway>>,
    /// The enrollment worker of a provisioned box, set once it is started.
    pub enroll: std::sync::OnceLock<crate::enroll::EnrollHandle>,
    /// The replication worker of a box with a gateway, set once it is started.
    pub sync: std::sync::OnceLock<crate::sync::worker::SyncHandle>,
    /// The school's uplink: replication, the cache and its prefetches share it (see `uplink`).
    pub uplink: Arc<crate::uplink::Scheduler>,
    /// The LAN cache of what comes from outside; a box only.
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// Where the forward proxy listens, once it does (for `/proxy.pac`).
    pub proxy_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// What the cache's prefetcher did last, once it runs.
    pub prefetch: std::sync::OnceLock<crate::cache::prefetch::StatusHandle>,
    /// WebDAV's state: verified Basic credentials, locks (see `http::dav`).
    pub dav: crate::http::dav::DavState,
    /// One argon2 hash at a time: each takes 19 MiB (kept between hashes, see `account`), and with one
    /// core hashing the others keep serving files while 30 pupils log in at 8:00.
    hashing: tokio::sync::Semaphore,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("identifiant ou mot de passe incorrect")]
    BadCredentials,
    #[error("trop d'essais de connexion : réessayez dans {} minutes", .0.as_secs().div_ceil(60))]
    Throttled(std::time::Duration),
    #[error("ce compte est désactivé : adressez-vous au secrétariat de l'école")]
    Disabled,
    #[error("première connexion : choisissez votre mot de passe")]
    MustActivate,
    #[error("le mot de passe doit contenir au moins 8 caractères")]
    WeakPassword,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Activation codes are printed in groups (`ABCD-EFGH`); people type them with or without the dash, in any case.
pub fn normalize_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

/// What a user's view depends on besides the user: a parent's children and their classes.
#[derive(Debug, Default, Clone)]
pub struct Family {
    pub children: Vec<String>,
    pub children_classes: Vec<String>,
}

impl App {
    /// Opens the store in the data folder (the caller holds its lock) and makes sure an admin exists.
    /// Returns the generated admin password when one had to be made up, so it can be shown once.
    pub async fn open(config: Config, data: &Path) -> Result<(Arc<App>, Option<String>), StoreError> {
        App::open_with(config, data, None).await
    }

    /// As `open`, for the regional gateway.
    pub async fn open_with(
        config: Config,
        data: &Path,
        region: Option<Arc<crate::region::Gateway>>,
    ) -> Result<(Arc<App>, Option<String>), StoreError> {
        let store = Store::open(data)?;
        let uplink = Arc::new(crate::uplink::Scheduler::new(config.uplink.rate, config.uplink.windows.clone()));
        let cache = match region {
            Some(_) => None,
            None => Some(
                crate::cache::Cache::open(&config.cache, data, uplink.clone())
                    .map_err(|e| StoreError::io(&data.join("cache"), std::io::Error::other(e.to_string())))?,
            ),
        };
        let app = App {
            uplink,
            cache,
            prefetch: std::sync::OnceLock::new(),
            proxy_addr: std::sync::OnceLock::new(),
            region,
            enroll: std::sync::OnceLock::new(),
            sync: std::sync::OnceLock::new(),
            throttle: Throttle::new(&config.login),
            metrics: Metrics::default(),
            hashing: tokio::sync::Semaphore::new(1),
            dav: crate::http::dav::DavState::default(),
            store,
            config,
        };
        let generated = app.ensure_admin().await?;
        Ok((Arc::new(app), generated))
    }

    async fn ensure_admin(&self) -> Result<Option<String>, StoreError> {
        if self.store.user("admin")?.is_some() {
            return Ok(None);
        }
        let (password, generated) = match std::env::var("RELAIS_ADMIN_PASSWORD") {
            Ok(p) if !p.is_empty() => (p, false),
            _ => (account::random_password(), true),
        };
        let hash = tokio::task::spawn_blocking(move || account::hash_password(&password).map(|h| (h, password)))
            .await
            .map_err(|e| StoreError::io(Path::new("argon2"), std::io::Error::other(e)))?
            .map_err(|e| StoreError::io(Path::new("argon2"), std::io::Error::other(e.to_string())))?;
        let admin = User {
            login: "admin".into(),
            display_name: "Administrateur".into(),
            role: Role::Admin,
            classes: vec![],
            children: vec![],
            password_hash: hash.0,
            created: store::now_ms(),
            ..User::default()
        };
        match self.store.create_user(&admin).await {
            Ok(()) => {
                log::info!("created the admin account");
                Ok(generated.then_some(hash.1))
            }
            Err(StoreError::Exists) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Changes a logged-in user's password, after checking the current one (throttled like a login). The
    /// change replicates: the new password works at school and at home after the next sync.
    pub async fn change_password(
        &self,
        user: &User,
        current: &str,
        new: &str,
        client: IpAddr,
    ) -> Result<(), LoginError> {
        if let Err(wait) = self.throttle.check(&user.login, client) {
            return Err(LoginError::Throttled(wait));
        }
        let (current, phc) = (current.to_string(), user.password_hash.clone());
        if !self.hash_work(move || account::verify_password(&current, &phc)).await.unwrap_or(false) {
            self.throttle.failed(&user.login, client);
            return Err(LoginError::BadCredentials);
        }
        if new.chars().count() < 8 {
            return Err(LoginError::WeakPassword);
        }
        let new = new.to_string();
        let mut updated = self.store.user(&user.login)?.ok_or(LoginError::BadCredentials)?;
        updated.password_hash = self
            .hash_work(move || account::hash_password(&new))
            .await?
            .map_err(|e| StoreError::io(Path::new("argon2"), std::io::Error::other(e.to_string())))?;
        updated.password_changed = store::now_ms();
        self.store.put_user(&updated).await?;
        log::info!("user {} changed their password from {client}", user.login);
        Ok(())
    }

    /// What `relais status` and the admin page show.
    pub fn status(&self) -> crate::status::Status {
        crate::status::gather(&crate::status::Sources {
            config: &self.config,
            store: &self.store,
            region: self.region.as_deref(),
            enroll: self.enroll.get().map(crate::enroll::EnrollHandle::status),
            sync: self.sync.get().map(crate::sync::worker::SyncHandle::status),
            cache: self.cache.as_ref().map(|c| c.summary()),
            running: true,
        })
    }

    /// Runs a password hash or check on a blocking thread, one at a time (see `hashing`).
    pub async fn hash_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self.hashing.acquire().await;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| StoreError::io(Path::new("argon2"), std::io::Error::other(e)))
    }

    /// The quota of a role, `None` when unlimited.
    pub fn quota(&self, role: Role) -> Option<u64> {
        let q = &self.config.quota;
        match role {
            Role::Pupil => q.pupil.0,
            Role::Teacher => q.teacher.0,
            Role::Parent => q.parent.0,
            Role::Staff => q.staff.0,
            Role::Admin => q.admin.0,
        }
    }

    /// Checks a password and opens a session. Returns the cookie token and the user.
    pub async fn login(&self, login: &str, password: &str, client: IpAddr) -> Result<(String, User), LoginError> {
        let user = self.check_credentials(login, password, client).await?;
        let token = self.open_session(&user).await?;
        log::info!("user {} logged in from {client}", user.login);
        Ok((token, user))
    }

    /// Checks a password under the login throttle, without opening a session: `login`, and WebDAV's Basic
    /// authentication (which sends the password with every request), share it.
    pub async fn check_credentials(&self, login: &str, password: &str, client: IpAddr) -> Result<User, LoginError> {
        if let Err(wait) = self.throttle.check(login, client) {
            self.metrics.logins_throttled.inc();
            return Err(LoginError::Throttled(wait));
        }
        let user = self.store.user(login)?;
        // An account waiting for activation accepts its one-time code instead of a password.
        let pending = user.as_ref().filter(|u| u.password_hash.is_empty()).and_then(|u| u.activation_code.as_deref());
        if pending.is_some_and(|code| session::same_secret(&normalize_code(password), code)) {
            return Err(LoginError::MustActivate);
        }
        let phc = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| account::decoy_hash().to_string());
        let password = password.to_string();
        let ok = self.hash_work(move || account::verify_password(&password, &phc)).await.unwrap_or(false);
        let user = match user {
            Some(user) if ok && !user.password_hash.is_empty() => user,
            _ => {
                self.throttle.failed(login, client);
                self.metrics.logins_failed.inc();
                log::warn!("failed login for {login:?} from {client}");
                return Err(LoginError::BadCredentials);
            }
        };
        if user.disabled() {
            return Err(LoginError::Disabled);
        }
        self.throttle.succeeded(login);
        Ok(user)
    }

    async fn open_session(&self, user: &User) -> Result<String, StoreError> {
        let token = session::new_token();
        let lifetime = self.config.login.session_lifetime.0.as_millis() as i64;
        let session =
            Session { login: user.login.clone(), expires: store::now_ms() + lifetime, csrf: session::new_token() };
        self.store.put_session(&session::key(&token), &session).await?;
        self.metrics.logins_ok.inc();
        Ok(token)
    }

    /// First login of an imported account: the one-time activation code buys the right to set a password.
    /// Returns a session like `login`.
    pub async fn activate(
        &self,
        login: &str,
        code: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<(String, User), LoginError> {
        if let Err(wait) = self.throttle.check(login, client) {
            self.metrics.logins_throttled.inc();
            return Err(LoginError::Throttled(wait));
        }
        let user = self.store.user(login)?;
        let valid = user.as_ref().is_some_and(|u| {
            u.password_hash.is_empty()
                && u.activation_code.as_deref().is_some_and(|c| session::same_secret(c, &normalize_code(code)))
        });
        let Some(mut user) = user.filter(|_| valid) else {
            self.throttle.failed(login, client);
            self.metrics.logins_failed.inc();
            return Err(LoginError::BadCredentials);
        };
        if user.disabled() {
            return Err(LoginError::Disabled);
        }
        if password.chars().count() < 8 {
            return Err(LoginError::WeakPassword);
        }
        let password = password.to_string();
        user.password_hash = self
            .hash_work(move || account::hash_password(&password))
            .await?
            .map_err(|e| StoreError::io(Path::new("argon2"), std::io::Error::other(e.to_string())))?;
        user.activation_code = None;
        user.password_changed = store::now_ms();
        self.store.put_user(&user).await?;
        self.throttle.succeeded(login);
        let token = self.open_session(&user).await?;
        log::info!("user {} activated their account from {client}", user.login);
        Ok((token, user))
    }

    /// The session and user behind a cookie token, if it is live.
    pub fn session_user(&self, token: &str) -> Result<Option<(String, Session, User)>, StoreError> {
        let key = session::key(token);
        let Some(session) = self.store.session(&key)? else {
            return Ok(None);
        };
        if session.expired(store::now_ms()) {
            return Ok(None);
        }
        Ok(self.store.user(&session.login)?.filter(|u| !u.disabled()).map(|user| (key, session, user)))
    }

    pub fn family(&self, user: &User) -> Result<Family, StoreError> {
        if user.role != Role::Parent {
            return Ok(Family::default());
        }
        let mut family = Family { children: user.children.clone(), children_classes: Vec::new() };
        for child in &user.children {
            if let Some(c) = self.store.user(child)? {
                for class in c.classes {
                    if !family.children_classes.contains(&class) {
                        family.children_classes.push(class);
                    }
                }
            }
        }
        Ok(family)
    }

    /// Every class the box knows (from accounts and from class folders), sorted.
    pub fn all_classes(&self, school: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut classes: Vec<String> =
            self.store.users()?.into_iter().filter(|u| u.school.as_deref() == school).flat_map(|u| u.classes).collect();
        let mut folder = school_root(school);
        folder.push("classes".to_string());
        classes.extend(self.store.list(&folder)?.into_iter().filter(|(_, e)| e.dir).map(|(n, _)| n));
        classes.sort();
        classes.dedup();
        Ok(classes)
    }

    /// Deletes the accounts whose leaving delay has passed, with their personal space and hand-ins.
    pub async fn purge_leavers(&self) -> Result<usize, StoreError> {
        let delay = self.config.directory.leaver_delay.0.as_millis() as i64;
        let now = store::now_ms();
        let due: Vec<User> = self
            .store
            .users()?
            .into_iter()
            .filter(|u| u.leaving_since.is_some_and(|since| since + delay <= now))
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        for user in &due {
            let root = school_root(user.school.as_deref());
            let within =
                |rest: &[&str]| root.iter().cloned().chain(rest.iter().map(|s| s.to_string())).collect::<Vec<_>>();
            let classes = self.all_classes(user.school.as_deref())?;
            let mut spaces = vec![within(&["users", &user.login])];
            spaces.extend(classes.iter().map(|c| within(&["classes", c, "rendus", &user.login])));
            for space in spaces {
                match self.store.delete(&space).await {
                    Ok(()) | Err(StoreError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            self.store.delete_user(&user.login).await?;
            log::info!("deleted the account of {} (left the school), with their files", user.login);
        }
        Ok(due.len())
    }

    /// Imports directory exports (each an uploaded file on disk, with the name the client gave if any):
    /// all-or-nothing, with a snapshot for undo. The report lists every problem when nothing was changed.
    pub async fn import(self: &Arc<Self>, uploads: Vec<(Option<String>, PathBuf)>) -> Result<Report, StoreError> {
        self.import_for(uploads, None).await
    }

    /// As `import`, for one school's people at the region (`school`: its UAI): only that school's accounts
    /// are matched and marked leaving, and every login of the region counts as taken.
    pub async fn import_for(
        self: &Arc<Self>,
        uploads: Vec<(Option<String>, PathBuf)>,
        school: Option<String>,
    ) -> Result<Report, StoreError> {
        let max_expanded = self.config.directory.max_import_size.0.saturating_mul(8);
        let files = tokio::task::spawn_blocking(move || {
            uploads.iter().flat_map(|(name, path)| upload::read(name.as_deref(), path, max_expanded)).collect()
        })
        .await
        .map_err(|e| StoreError::io(Path::new("import"), std::io::Error::other(e)))?;
        let now = store::now_ms();
        let app = self.clone();
        let of = school.clone();
        let plan = tokio::task::spawn_blocking(move || {
            import::plan(&SchoolAccounts { store: &app.store, school: of.as_deref() }, files, now)
        })
        .await
        .map_err(|e| StoreError::io(Path::new("import"), std::io::Error::other(e)))?;
        let mut plan = plan;
        for user in &mut plan.changes {
            user.school.clone_from(&school);
        }
        if plan.report.errors.is_empty() {
            self.store.apply_directory(&plan.changes).await?;
            let r = &plan.report;
            log::info!(
                "directory import: {} created, {} updated, {} moved, {} leaving",
                r.created,
                r.updated,
                r.moved,
                r.leaving
            );
        } else {
            log::warn!("directory import refused: {} problems, nothing changed", plan.report.errors.len());
        }
        Ok(plan.report)
    }

    /// Drops expired sessions; run periodically.
    pub fn purge_sessions(&self) -> Result<usize, StoreError> {
        let now = store::now_ms();
        self.store.purge_sessions(|s| s.expired(now))
    }
}

/// The accounts of one school (all of a box's; one UAI's at the region), for a directory import.
struct SchoolAccounts<'a> {
    store: &'a Store,
    school: Option<&'a str>,
}

impl import::Accounts for SchoolAccounts<'_> {
    fn for_each(&self, f: &mut dyn FnMut(&User)) -> Result<(), String> {
        self.store
            .for_each_user(&mut |u| {
                if u.school.as_deref() == self.school {
                    f(u);
                }
            })
            .map_err(|e| e.to_string())
    }

    fn get(&self, login: &str) -> Result<Option<User>, String> {
        self.store.user(login).map_err(|e| e.to_string())
    }
}

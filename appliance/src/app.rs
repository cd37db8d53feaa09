//! The box's shared state and the operations that several front ends (JSON API, portal pages) share:
//! opening the store, the first admin account, logging in, quotas, and what a user may see.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use firmware_config::Config;

use crate::account::{self, Role, User};
use crate::metrics::Metrics;
use crate::session::{self, Session};
use crate::store::{self, Store, StoreError};
use crate::throttle::Throttle;

pub struct App {
    pub config: Config,
    pub store: Store,
    pub throttle: Throttle,
    pub metrics: Metrics,
    /// Bounds concurrent argon2 verifications: each takes 19 MiB, and 30 pupils logging in at 8:00 must not
    /// push a 1 GiB box into swap.
    hashing: tokio::sync::Semaphore,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("identifiant ou mot de passe incorrect")]
    BadCredentials,
    #[error("trop d'essais de connexion : réessayez dans {} minutes", .0.as_secs().div_ceil(60))]
    Throttled(std::time::Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
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
        let store = Store::open(data)?;
        let app = App {
            throttle: Throttle::new(&config.login),
            metrics: Metrics::default(),
            hashing: tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
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
        if let Err(wait) = self.throttle.check(login, client) {
            self.metrics.logins_throttled.inc();
            return Err(LoginError::Throttled(wait));
        }
        let user = self.store.user(login)?;
        let phc = user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| account::decoy_hash().to_string());
        let ok = {
            let _permit = self.hashing.acquire().await;
            let password = password.to_string();
            tokio::task::spawn_blocking(move || account::verify_password(&password, &phc)).await.unwrap_or(false)
        };
        let user = match user {
            Some(user) if ok => user,
            _ => {
                self.throttle.failed(login, client);
                self.metrics.logins_failed.inc();
                log::warn!("failed login for {login:?} from {client}");
                return Err(LoginError::BadCredentials);
            }
        };
        self.throttle.succeeded(login);
        let token = session::new_token();
        let lifetime = self.config.login.session_lifetime.0.as_millis() as i64;
        let session =
            Session { login: user.login.clone(), expires: store::now_ms() + lifetime, csrf: session::new_token() };
        self.store.put_session(&session::key(&token), &session).await?;
        self.metrics.logins_ok.inc();
        log::info!("user {} logged in from {client}", user.login);
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
        Ok(self.store.user(&session.login)?.map(|user| (key, session, user)))
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
    pub fn all_classes(&self) -> Result<Vec<String>, StoreError> {
        let mut classes: Vec<String> = self.store.users()?.into_iter().flat_map(|u| u.classes).collect();
        classes.extend(self.store.list(&["classes".to_string()])?.into_iter().filter(|(_, e)| e.dir).map(|(n, _)| n));
        classes.sort();
        classes.dedup();
        Ok(classes)
    }

    /// Drops expired sessions; run periodically.
    pub fn purge_sessions(&self) -> Result<usize, StoreError> {
        let now = store::now_ms();
        self.store.purge_sessions(|s| s.expired(now))
    }
}

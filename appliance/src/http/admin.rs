//! `/api/admin/users`: the admin creates and lists accounts.

use http::{Method, StatusCode};
use serde::Serialize;

use super::{body, json, ApiError, Ctx, Request, Response};
use crate::account::{NewUser, User};
use crate::store::StoreError;

/// An account as the admin sees it: everything but the password hash.
#[derive(Serialize)]
pub struct UserView<'a> {
    login: &'a str,
    display_name: &'a str,
    role: &'static str,
    classes: &'a [String],
    children: &'a [String],
}

impl<'a> From<&'a User> for UserView<'a> {
    fn from(u: &'a User) -> Self {
        UserView {
            login: &u.login,
            display_name: &u.display_name,
            role: u.role.as_str(),
            classes: &u.classes,
            children: &u.children,
        }
    }
}

pub async fn users(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    ctx.require_admin(req.headers())?;
    match *req.method() {
        Method::GET => {
            let users = ctx.app.store.users()?;
            let view: Vec<UserView> = users.iter().map(UserView::from).collect();
            Ok(json(StatusCode::OK, &view))
        }
        Method::POST => {
            let idle = ctx.app.config.limits.body_idle_timeout.0;
            let new: NewUser = body::read_json(req, idle).await?;
            let user = create(ctx, new).await?;
            Ok(json(StatusCode::CREATED, &UserView::from(&user)))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Validates, hashes (on a blocking thread) and stores a new account.
pub async fn create(ctx: &Ctx, new: NewUser) -> Result<User, ApiError> {
    let login = new.login.clone();
    let user = tokio::task::spawn_blocking(move || new.into_user())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    match ctx.app.store.create_user(&user).await {
        Ok(()) => {
            let by = ctx.user.as_ref().map_or("-", |u| u.login.as_str());
            log::info!("account {login} ({}) created by {by}", user.role.as_str());
            Ok(user)
        }
        Err(StoreError::Exists) => Err(ApiError::Conflict(format!("l'identifiant « {login} » existe déjà"))),
        Err(e) => Err(e.into()),
    }
}

//! `/api/login`, `/api/logout`, `/api/me`.

use http::{header, StatusCode};
use serde::{Deserialize, Serialize};

use super::{body, json, set, with_status, ApiError, Ctx, Request, Response};
use crate::account::User;
use crate::session;

#[derive(Deserialize)]
struct Credentials {
    login: String,
    password: String,
}

#[derive(Serialize)]
struct Quota {
    used: u64,
    limit: Option<u64>,
}

#[derive(Serialize)]
struct Me<'a> {
    login: &'a str,
    display_name: &'a str,
    role: &'static str,
    classes: Vec<String>,
    children: &'a [String],
    quota: Quota,
}

/// The `Set-Cookie` value for a new session; `Secure` under TLS so the cookie never leaves in clear.
pub fn session_cookie(token: &str, max_age_secs: u64, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!("{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}", session::COOKIE)
}

/// Hands a new session to the browser: its cookie on `resp`, and the user on the request's context (for the
/// log line).
pub fn start_session(ctx: &mut Ctx, resp: &mut Response, token: &str, user: User) {
    let max_age = ctx.app.config.login.session_lifetime.0.as_secs();
    set(resp, header::SET_COOKIE, &session_cookie(token, max_age, ctx.conn.tls));
    ctx.user = Some(user);
}

pub fn clear_cookie() -> String {
    format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", session::COOKIE)
}

pub async fn login(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let idle = ctx.app.config.limits.body_idle_timeout.0;
    let creds: Credentials = body::read_json(req, idle).await?;
    let (token, user) = ctx.app.login(&creds.login, &creds.password, ctx.peer.ip()).await?;
    let mut resp = me_response(ctx, &user)?;
    start_session(ctx, &mut resp, &token, user);
    Ok(resp)
}

#[derive(Deserialize)]
struct Activation {
    login: String,
    code: String,
    password: String,
}

/// First login of an imported account: `{"login","code","password"}` sets the password and opens a session.
pub async fn activate(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let idle = ctx.app.config.limits.body_idle_timeout.0;
    let a: Activation = body::read_json(req, idle).await?;
    let (token, user) = ctx.app.activate(&a.login, &a.code, &a.password, ctx.peer.ip()).await?;
    let mut resp = me_response(ctx, &user)?;
    start_session(ctx, &mut resp, &token, user);
    Ok(resp)
}

#[derive(Deserialize)]
struct PasswordChange {
    current: String,
    new: String,
}

/// `POST /api/password` `{"current","new"}`: the logged-in user changes their password → 204.
pub async fn change_password(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let user = ctx.authenticate(req.headers())?;
    let idle = ctx.app.config.limits.body_idle_timeout.0;
    let change: PasswordChange = body::read_json(req, idle).await?;
    ctx.app.change_password(&user, &change.current, &change.new, ctx.peer.ip()).await?;
    Ok(with_status(StatusCode::NO_CONTENT, super::empty()))
}

pub async fn logout(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    ctx.authenticate(req.headers())?;
    if let Some((key, _)) = &ctx.session {
        ctx.app.store.delete_session(key).await?;
    }
    let mut resp = with_status(StatusCode::NO_CONTENT, super::empty());
    set(&mut resp, header::SET_COOKIE, &clear_cookie());
    Ok(resp)
}

pub fn me(ctx: &mut Ctx, req: &Request) -> Result<Response, ApiError> {
    let user = ctx.authenticate(req.headers())?;
    me_response(ctx, &user)
}

fn me_response(ctx: &Ctx, user: &User) -> Result<Response, ApiError> {
    let family = ctx.app.family(user)?;
    let me = Me {
        login: &user.login,
        display_name: &user.display_name,
        role: user.role.as_str(),
        classes: crate::space::classes_of(user, &family.children_classes),
        children: &user.children,
        quota: Quota { used: ctx.app.store.usage(&user.login)?, limit: ctx.app.quota(user.role) },
    };
    Ok(json(StatusCode::OK, &me))
}

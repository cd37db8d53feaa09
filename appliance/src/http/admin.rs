//! `/api/admin/users`: the admin creates and lists accounts.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
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

/// `GET /api/admin/status`: the facts `relais status` prints (DESIGN.md).
pub fn status(ctx: &mut Ctx, req: &Request) -> Result<Response, ApiError> {
    ctx.require_admin(req.headers())?;
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    Ok(json(StatusCode::OK, &ctx.app.status()))
}

pub async fn users(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    ctx.require_admin(req.headers())?;
    match *req.method() {
        Method::GET => {
            // At the gateway, `?uai=` lists one school's people.
            let uai = req.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "uai").map(|(_, v)| v.into_owned())
            });
            let users = ctx.app.store.users()?;
            let view: Vec<UserView> =
                users.iter().filter(|u| uai.is_none() || u.school == uai).map(UserView::from).collect();
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

/// `POST /api/admin/import[?file=NAME]`: one export (CSV, XML) or a zip of several → the report; 422 with
/// every problem and nothing changed if anything is wrong.
pub async fn import(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    ctx.require_admin(req.headers())?;
    let req_query = req.uri().query().unwrap_or("").to_owned();
    let name = query_param(&req_query, "file");
    let idle = ctx.app.config.limits.body_idle_timeout.0;
    let path = receive(ctx, body::stream(req.into_body(), idle), &mut 0).await?;
    // At the gateway, `?uai=` names the school whose people the export lists.
    let uai = query_param(&req_query, "uai");
    if let Some(uai) = uai.as_deref() {
        if ctx.app.region.is_none() || !firmware_config::is_uai(uai) {
            let _ = std::fs::remove_file(&path);
            return Err(ApiError::BadRequest(format!(
                "« uai={uai} » : seule la passerelle régionale importe pour un UAI valide"
            )));
        }
    }
    let report = ctx.app.import_for(vec![(name, path.clone())], uai).await;
    let _ = std::fs::remove_file(&path);
    let report = report?;
    let status = if report.errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    Ok(json(status, &report))
}

/// `POST /api/admin/import/undo`: puts the directory back as it was before the last import.
pub async fn undo(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    ctx.require_admin(req.headers())?;
    match ctx.app.store.undo_directory().await {
        Ok(n) => {
            log::info!("directory import undone: {n} accounts restored");
            Ok(json(StatusCode::OK, &serde_json::json!({ "restored": n })))
        }
        Err(StoreError::NotFound) => Err(ApiError::Conflict("aucun import à annuler".into())),
        Err(e) => Err(e.into()),
    }
}

/// Streams an upload into a scratch file under the store's `tmp/`. `total` counts the bytes of every file of
/// one import, which together may not pass `directory.max_import_size`.
pub async fn receive(
    ctx: &Ctx,
    chunks: impl Stream<Item = Result<Bytes, ApiError>>,
    total: &mut u64,
) -> Result<std::path::PathBuf, ApiError> {
    use std::io::Write;
    let limit = ctx.app.config.directory.max_import_size.0;
    let (path, mut file) = ctx.app.store.scratch_file()?;
    let mut chunks = std::pin::pin!(chunks);
    let result = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            *total += chunk.len() as u64;
            if *total > limit {
                return Err(ApiError::PayloadTooLarge);
            }
            file.write_all(&chunk).map_err(|e| ApiError::Internal(format!("import scratch file: {e}")))?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Validates, hashes (on a blocking thread) and stores a new account.
pub async fn create(ctx: &Ctx, new: NewUser) -> Result<User, ApiError> {
    let login = new.login.clone();
    if new.uai.is_some() && ctx.app.region.is_none() {
        return Err(ApiError::BadRequest("« uai » ne s'emploie que sur la passerelle régionale".into()));
    }
    let user = ctx.app.hash_work(move || new.into_user()).await?.map_err(|e| ApiError::BadRequest(e.to_string()))?;
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

fn query_param(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

//! The portal's pages: French, rendered on the server, usable without JavaScript.
//!
//! Every form carries a CSRF token: the session's for logged-in pages, a double-submit cookie for the login
//! form (before there is a session). Actions answer with a redirect (post/redirect/get), and messages are
//! picked from a fixed list by code so nothing the client sends is echoed into a page.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::files::{self, Item, Node};
use super::{auth, body, full, redirect, set, with_status, ApiError, Ctx, Request, Response};
use crate::account::{NewUser, Role, User};
use crate::path;
use crate::session::{self, Session};
use crate::space::Kind;

const LOGIN_CSRF_COOKIE: &str = "relais_csrf";

const STYLE: &str = r#"
:root{--bleu:#1d4e89;--fond:#f4f6fa;--texte:#1b1b1b;--gris:#5a5a5a}
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,sans-serif;color:var(--texte);background:var(--fond)}
header{background:var(--bleu);color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center;flex-wrap:wrap}
header a{color:#fff}header .qui{margin-left:auto}header form{display:inline}
main{max-width:60rem;margin:1rem auto;padding:0 1rem}
h1{font-size:1.5rem}a{color:var(--bleu)}
.tuiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(14rem,1fr));gap:1rem;padding:0;list-style:none}
.tuiles a{display:block;background:#fff;border:1px solid #cfd6e4;border-radius:.5rem;padding:1rem;text-decoration:none;font-weight:600}
.tuiles a:hover,.tuiles a:focus{border-color:var(--bleu)}
.tuiles small{display:block;font-weight:400;color:var(--gris)}
table{width:100%;border-collapse:collapse;background:#fff}th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #e1e5ee}
td.n{text-align:right;white-space:nowrap}
form.ligne{display:flex;gap:.5rem;flex-wrap:wrap;align-items:end;margin:.5rem 0}
label{display:block;font-weight:600}input,select,button{font:inherit;padding:.3rem .5rem}
button{background:var(--bleu);color:#fff;border:0;border-radius:.3rem;cursor:pointer}
button.lien{background:none;color:var(--bleu);text-decoration:underline;padding:0}
.msg{background:#e6f4ea;border-left:4px solid #1e7e34;padding:.5rem 1rem}
.err{background:#fdecea;border-left:4px solid #b3261e;padding:.5rem 1rem}
.alerte{background:#fff4d6;border-left:.3rem solid #b36b00;padding:.6rem .8rem}
.quota{background:#dde3ee;border-radius:.3rem;height:.8rem;max-width:20rem}.quota div{background:var(--bleu);height:100%;border-radius:.3rem}
.connexion{max-width:22rem;margin:3rem auto;background:#fff;padding:1.5rem;border-radius:.5rem;border:1px solid #cfd6e4}
.connexion input{width:100%;margin-bottom:.8rem}
nav.fil{margin:.5rem 0}
"#;

/// Messages shown after an action, by code.
fn message(code: &str) -> Option<&'static str> {
    Some(match code {
        "envoye" => "Fichier(s) envoyé(s).",
        "dossier" => "Dossier créé.",
        "supprime" => "Supprimé.",
        "compte" => "Compte créé.",
        "annule" => "Le dernier import a été annulé : l'annuaire est revenu à son état précédent.",
        _ => return None,
    })
}

fn query(req: &Request) -> HashMap<String, String> {
    req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["o", "Ko", "Mo", "Go", "To"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} o")
    } else {
        format!("{value:.1} {}", UNITS[unit]).replace('.', ",")
    }
}

fn page(status: StatusCode, title: &str, user: Option<(&User, &Session)>, school: &str, content: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="fr" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – Relais" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a href="/accueil" { strong { "Relais" } }
                    @if !school.is_empty() { span { (school) } }
                    @if let Some((user, session)) = user {
                        span.qui { (user.display_name) " (" (user.role.label()) ")" }
                        a href="/compte" { "Mot de passe" }
                        form method="post" action="/deconnexion" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Se déconnecter" }
                        }
                    }
                }
                main { (content) }
            }
        }
    };
    let mut resp = with_status(status, full(markup.into_string()));
    set(&mut resp, header::CONTENT_TYPE, "text/html; charset=utf-8");
    set(&mut resp, header::CACHE_CONTROL, "no-store");
    set(
        &mut resp,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
    );
    set(&mut resp, header::X_FRAME_OPTIONS, "DENY");
    set(&mut resp, header::REFERRER_POLICY, "same-origin");
    resp
}

fn error_page(ctx: &Ctx, e: &ApiError) -> Response {
    let session = ctx.session.as_ref().map(|(_, s)| s);
    let user = ctx.user.as_ref().zip(session);
    let content = html! {
        h1 { "Impossible" }
        p.err { (e.to_string()) }
        p { a href="/accueil" { "Retour à l'accueil" } }
    };
    page(e.status(), "Erreur", user, &ctx.app.config.identity.name, content)
}

/// Serves a portal page; errors become French error pages, missing logins a redirect to the login form.
pub async fn handle(ctx: &mut Ctx, req: Request) -> Response {
    match route(ctx, req).await {
        Ok(resp) => resp,
        Err(ApiError::Unauthorized) => redirect("/connexion"),
        Err(e) => {
            if let ApiError::Internal(cause) = &e {
                log::error!("portal: {cause}");
            }
            error_page(ctx, &e)
        }
    }
}

async fn route(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => {
            Ok(if ctx.authenticate(req.headers()).is_ok() { redirect("/accueil") } else { redirect("/connexion") })
        }
        (Method::GET, "/connexion") => Ok(login_page(ctx, req.headers(), StatusCode::OK, None)),
        (Method::POST, "/connexion") => login_submit(ctx, req).await,
        (Method::POST, "/connexion/activation") => activation_submit(ctx, req).await,
        (Method::POST, "/deconnexion") => logout(ctx, req).await,
        (Method::GET, "/accueil") => home(ctx, &req),
        (Method::GET, "/compte") => {
            let (user, session) = logged_in(ctx, req.headers())?;
            Ok(password_page(ctx, &user, &session, StatusCode::OK, None))
        }
        (Method::POST, "/compte") => password_submit(ctx, req).await,
        (Method::GET, "/admin/comptes") => accounts(ctx, &req),
        (Method::GET, "/admin/import") => import_page(ctx, &req),
        (Method::POST, "/admin/import") => import_submit(ctx, req).await,
        (Method::POST, "/admin/import/annuler") => import_undo(ctx, req).await,
        (Method::GET, "/admin/activation") => activation_sheet(ctx, &req),
        (Method::POST, "/admin/comptes") => accounts_submit(ctx, req).await,
        (Method::GET, p) if p == "/fichiers" || p.starts_with("/fichiers/") => browse(ctx, &req),
        (Method::POST, p) if p.starts_with("/fichiers/") => files_submit(ctx, req).await,
        _ => Err(ApiError::NotFound),
    }
}

/// The session of a logged-in page, with its CSRF token.
fn logged_in(ctx: &mut Ctx, headers: &HeaderMap) -> Result<(User, Session), ApiError> {
    let user = ctx.authenticate(headers)?;
    let session = ctx.session.as_ref().map(|(_, s)| s.clone()).ok_or(ApiError::Unauthorized)?;
    Ok((user, session))
}

fn check_csrf(expected: &str, form: &HashMap<String, String>) -> Result<(), ApiError> {
    match form.get("csrf") {
        Some(sent) if session::same_secret(sent, expected) => Ok(()),
        _ => Err(ApiError::BadRequest(
            "formulaire expiré ou venu d'un autre site : rechargez la page et recommencez".into(),
        )),
    }
}

/// `/compte`: the user changes their password (it then works at school and at home after the next sync).
fn password_page(
    ctx: &Ctx,
    user: &User,
    session: &Session,
    status: StatusCode,
    notice: Option<(bool, &str)>,
) -> Response {
    let content = html! {
        h1 { "Changer mon mot de passe" }
        @if let Some((ok, text)) = notice {
            @if ok { p.msg role="status" { (text) } } @else { p.err role="alert" { (text) } }
        }
        form method="post" action="/compte" {
            input type="hidden" name="csrf" value=(session.csrf);
            label for="current" { "Mot de passe actuel" }
            input #current name="current" type="password" autocomplete="current-password" required;
            label for="new" { "Nouveau mot de passe (8 caractères au moins)" }
            input #new name="new" type="password" autocomplete="new-password" minlength="8" required;
            label for="confirm" { "Nouveau mot de passe, encore une fois" }
            input #confirm name="confirm" type="password" autocomplete="new-password" minlength="8" required;
            button type="submit" { "Changer le mot de passe" }
        }
        p { "Le nouveau mot de passe vaut aussi pour l'ENT à la maison, dès la prochaine synchronisation." }
    };
    page(status, "Mot de passe", Some((user, session)), &ctx.app.config.identity.name, content)
}

async fn password_submit(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let (user, session) = logged_in(ctx, req.headers())?;
    let form = read_form(ctx, req).await?;
    check_csrf(&session.csrf, &form)?;
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("new") != field("confirm") {
        let text = "Les deux nouveaux mots de passe sont différents.";
        return Ok(password_page(ctx, &user, &session, StatusCode::BAD_REQUEST, Some((false, text))));
    }
    let (status, notice) = match ctx.app.change_password(&user, &field("current"), &field("new"), ctx.peer.ip()).await {
        Ok(()) => (StatusCode::OK, (true, "Mot de passe changé.".to_string())),
        Err(crate::app::LoginError::BadCredentials) => {
            (StatusCode::UNAUTHORIZED, (false, "Le mot de passe actuel n'est pas le bon.".to_string()))
        }
        Err(e) => {
            let e = ApiError::from(e);
            (e.status(), (false, e.to_string()))
        }
    };
    Ok(password_page(ctx, &user, &session, status, Some((notice.0, &notice.1))))
}

async fn read_form(ctx: &Ctx, req: Request) -> Result<HashMap<String, String>, ApiError> {
    let idle = ctx.app.config.limits.body_idle_timeout.0;
    let bytes = body::read_small(req.into_body(), idle, body::SMALL_BODY).await?;
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|h| session::cookie(h, name))
}

fn login_page(ctx: &Ctx, headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let token = cookie_value(headers, LOGIN_CSRF_COOKIE)
        .filter(|t| t.len() == 43)
        .map(str::to_string)
        .unwrap_or_else(session::new_token);
    let content = html! {
        div.connexion {
            h1 { "Connexion" }
            @if let Some(error) = error { p.err role="alert" { (error) } }
            form method="post" action="/connexion" {
                input type="hidden" name="csrf" value=(token);
                label for="login" { "Identifiant" }
                input #login name="login" autocomplete="username" required autofocus;
                label for="password" { "Mot de passe" }
                input #password name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Se connecter" }
            }
        }
    };
    let mut resp = page(status, "Connexion", None, &ctx.app.config.identity.name, content);
    set(
        &mut resp,
        header::SET_COOKIE,
        &format!(
            "{LOGIN_CSRF_COOKIE}={token}; Path=/connexion; HttpOnly; SameSite=Strict{}",
            if ctx.conn.tls { "; Secure" } else { "" }
        ),
    );
    resp
}

async fn login_submit(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    let form = read_form(ctx, req).await?;
    let expected = cookie_value(&headers, LOGIN_CSRF_COOKIE).unwrap_or("").to_string();
    if expected.is_empty() || check_csrf(&expected, &form).is_err() {
        return Ok(login_page(ctx, &headers, StatusCode::BAD_REQUEST, Some("Le formulaire a expiré : recommencez.")));
    }
    let login = form.get("login").map(|s| s.trim().to_lowercase()).unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    match ctx.app.login(&login, &password, ctx.peer.ip()).await {
        Ok((token, user)) => {
            let mut resp = redirect("/accueil");
            auth::start_session(ctx, &mut resp, &token, user);
            Ok(resp)
        }
        Err(crate::app::LoginError::MustActivate) => Ok(activation_page(ctx, &headers, &login, &password, None)),
        Err(e) => {
            let e = ApiError::from(e);
            Ok(login_page(ctx, &headers, e.status(), Some(&e.to_string())))
        }
    }
}

/// The first-login form: the activation code (carried over from the login form) and a new password twice.
fn activation_page(ctx: &Ctx, headers: &HeaderMap, login: &str, code: &str, error: Option<&str>) -> Response {
    let token = cookie_value(headers, LOGIN_CSRF_COOKIE).unwrap_or("").to_string();
    let content = html! {
        div.connexion {
            h1 { "Première connexion" }
            p { "Bienvenue ! Choisissez votre mot de passe (8 caractères au moins). Vous l'utiliserez à chaque connexion." }
            @if let Some(error) = error { p.err role="alert" { (error) } }
            form method="post" action="/connexion/activation" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="login" value=(login);
                input type="hidden" name="code" value=(code);
                label for="password" { "Nouveau mot de passe" }
                input #password name="password" type="password" autocomplete="new-password" minlength="8" required autofocus;
                label for="confirm" { "Confirmez le mot de passe" }
                input #confirm name="confirm" type="password" autocomplete="new-password" minlength="8" required;
                button type="submit" { "Enregistrer et se connecter" }
            }
        }
    };
    page(StatusCode::OK, "Première connexion", None, &ctx.app.config.identity.name, content)
}

async fn activation_submit(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    let form = read_form(ctx, req).await?;
    let expected = cookie_value(&headers, LOGIN_CSRF_COOKIE).unwrap_or("").to_string();
    if expected.is_empty() || check_csrf(&expected, &form).is_err() {
        return Ok(login_page(ctx, &headers, StatusCode::BAD_REQUEST, Some("Le formulaire a expiré : recommencez.")));
    }
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let (login, code, password) = (field("login"), field("code"), field("password"));
    if password != field("confirm") {
        return Ok(activation_page(ctx, &headers, &login, &code, Some("Les deux mots de passe sont différents.")));
    }
    match ctx.app.activate(&login, &code, &password, ctx.peer.ip()).await {
        Ok((token, user)) => {
            let mut resp = redirect("/accueil");
            auth::start_session(ctx, &mut resp, &token, user);
            Ok(resp)
        }
        Err(crate::app::LoginError::WeakPassword) => Ok(activation_page(
            ctx,
            &headers,
            &login,
            &code,
            Some("Le mot de passe doit contenir au moins 8 caractères."),
        )),
        Err(e) => {
            let e = ApiError::from(e);
            Ok(login_page(ctx, &headers, e.status(), Some(&e.to_string())))
        }
    }
}

async fn logout(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let (_, session) = logged_in(ctx, req.headers())?;
    let form = read_form(ctx, req).await?;
    check_csrf(&session.csrf, &form)?;
    if let Some((key, _)) = &ctx.session {
        ctx.app.store.delete_session(key).await?;
    }
    let mut resp = redirect("/connexion");
    set(&mut resp, header::SET_COOKIE, &auth::clear_cookie());
    Ok(resp)
}

fn quota_bar(ctx: &Ctx, user: &User) -> Result<Markup, ApiError> {
    let used = ctx.app.store.usage(&user.login)?;
    let limit = ctx.app.quota(user.role);
    Ok(html! {
        @match limit {
            Some(limit) => {
                @let percent = used.saturating_mul(100).checked_div(limit).map_or(100, |p| p.min(100));
                p {
                    "Espace utilisé : " (human_size(used)) " sur " (human_size(limit)) " (" (percent) " %)"
                }
                div.quota role="progressbar" aria-label="Espace utilisé" aria-valuenow=(percent) aria-valuemin="0" aria-valuemax="100" {
                    div style=(format!("width:{percent}%")) {}
                }
            }
            None => { p { "Espace utilisé : " (human_size(used)) " (sans limite)" } }
        }
    })
}

fn files_link(view: &[String]) -> String {
    let mut link = format!("/fichiers/{}", path::encode(view));
    if !link.ends_with('/') {
        link.push('/');
    }
    link
}

fn home(ctx: &mut Ctx, req: &Request) -> Result<Response, ApiError> {
    let (user, session) = logged_in(ctx, req.headers())?;
    let family = ctx.app.family(&user)?;
    let classes = match user.role {
        Role::Admin | Role::Staff => ctx.app.all_classes(user.school.as_deref())?,
        _ => crate::space::classes_of(&user, &family.children_classes),
    };
    let status = ctx.app.status();
    let cut = status.role == "box"
        && status.uplink != "online"
        && (!status.gateway.is_empty() || status.cache.as_ref().is_some_and(|c| c.upstream_down));
    let content = html! {
        h1 { "Bonjour " (user.display_name) }
        @if cut {
            p.alerte role="status" {
                "La connexion internet de l'école est coupée. Vos fichiers restent disponibles ici, "
                "et les ressources déjà en cache aussi ; le reste reviendra avec la connexion."
            }
        }
        (quota_bar(ctx, &user)?)
        ul.tuiles {
            li { a href="/fichiers/me/" { "Mes fichiers" small { "Votre espace personnel" } } }
            @for class in &classes {
                li { a href=(files_link(&["classes".into(), class.clone()])) { "Classe " (class) small { "Documents de la classe" } } }
                @match user.role {
                    Role::Pupil => {
                        li { a href=(files_link(&["classes".into(), class.clone(), "rendus".into(), user.login.clone()])) {
                            "Rendre un devoir – " (class) small { "Déposez votre travail" } } }
                    }
                    Role::Teacher | Role::Admin => {
                        li { a href=(files_link(&["classes".into(), class.clone(), "rendus".into()])) {
                            "Devoirs rendus – " (class) small { "Travaux des élèves" } } }
                    }
                    _ => {}
                }
            }
            li { a href="/fichiers/school/" { "Espace de l'établissement" small { "Documents de l'école" } } }
            @if user.role == Role::Admin {
                li { a href="/admin/comptes" { "Administration" small { "Comptes des utilisateurs" } } }
                li { a href="/admin/import" { "Importer l'annuaire" small { "ONDE, AAF ou CSV" } } }
                li { a href="/admin/activation" { "Fiches d'activation" small { "À imprimer, par classe" } } }
            }
        }
        @if user.role == Role::Admin { (box_status(&status)) }
    };
    Ok(page(StatusCode::OK, "Accueil", Some((&user, &session)), &ctx.app.config.identity.name, content))
}

/// The admin's view of the box: what a technician on the phone asks first.
fn box_status(s: &crate::status::Status) -> Markup {
    let school = match &s.uai {
        Some(uai) => uai.clone(),
        None if s.role == "region" => "passerelle régionale".into(),
        None => "box autonome (non provisionnée)".into(),
    };
    let certificate = match (&s.certificate.not_after, s.certificate.seconds_left) {
        (Some(at), Some(left)) if left > 0 => format!("valable jusqu'au {at} ({} jours)", left / 86_400),
        (Some(at), _) => format!("EXPIRÉ depuis le {at} : la box se réinscrit au prochain contact avec la région"),
        (None, _) if s.uai.is_some() => "pas encore inscrite auprès de la région".into(),
        (None, _) => "aucun".into(),
    };
    let uplink = match (s.uplink.as_str(), &s.last_contact) {
        ("online", Some(at)) => format!("en ligne (dernier contact le {at})"),
        ("online", None) => "en ligne".into(),
        (_, Some(at)) => format!("hors ligne (dernier contact le {at})"),
        (_, None) => "hors ligne".into(),
    };
    html! {
        section.etat aria-labelledby="etat" {
            h2 #etat { "État de la box" }
            dl {
                dt { "Établissement" } dd { (school) }
                dt { "Certificat" } dd { (certificate) }
                @if s.role == "box" {
                    dt { "Liaison avec la région" } dd { (uplink) }
                    @if !s.gateway.is_empty() {
                        dt { "Synchronisation" }
                        dd {
                            "dernière réussie : " (s.replication.last_success.as_deref().unwrap_or("jamais"))
                            " ; en attente : " (s.replication.backlog.up_changes) " changement(s) ("
                            (crate::status::bytes(s.replication.backlog.up_bytes)) ") vers la région, "
                            (s.replication.backlog.down_changes) " (" (crate::status::bytes(s.replication.backlog.down_bytes))
                            ") depuis la région"
                            @if let Some(error) = &s.replication.last_error { br; "dernière erreur : " (error) }
                        }
                    }
                }
                @if let Some(c) = &s.cache {
                    dt { "Cache internet" }
                    dd {
                        (c.entries) " objets, " (crate::status::bytes(c.bytes)) " sur " (crate::status::bytes(c.budget))
                        " ; " (format!("{:.0}", c.request_hit_ratio * 100.0)) " % des demandes et "
                        (format!("{:.0}", c.byte_hit_ratio * 100.0)) " % des octets servis sans la connexion ; "
                        (crate::status::bytes(c.saved_bytes)) " économisés"
                    }
                }
                dt { "Disque" } dd { (crate::status::bytes(s.disk.used)) " de fichiers, " (crate::status::bytes(s.disk.free)) " libres" }
                dt { "Version" } dd { "relais " (s.version) }
            }
        }
    }
}

fn view_of(req_path: &str) -> Result<path::UserPath, ApiError> {
    let raw = req_path.strip_prefix("/fichiers").unwrap_or("");
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    path::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn browse(ctx: &mut Ctx, req: &Request) -> Result<Response, ApiError> {
    let (user, session) = logged_in(ctx, req.headers())?;
    let upath = view_of(req.uri().path())?;
    let (target, family) = files::target(&ctx.app, &user, &upath.segments)?;
    let items = match files::lookup(&ctx.app, &user, &target, &family)? {
        Node::File(_) => return Ok(redirect(&format!("/api/files/{}", path::encode(&upath.segments)))),
        Node::Folder(items) => items,
    };
    let q = query(req);
    let notice = q.get("msg").and_then(|c| message(c));
    let here = files_link(&upath.segments);
    // Whether the user may add here, and remove each item: the permission of a path one level down.
    let may_write = |name: &str| {
        let mut probe = upath.segments.clone();
        probe.push(name.to_string());
        files::target(&ctx.app, &user, &probe).map(|(t, _)| t.write && t.kind == Kind::Inside).unwrap_or(false)
    };
    let writable = target.internal.is_some() && may_write("nouveau");
    let zip_href = format!("/api/files/{}/?zip", path::encode(&upath.segments));
    let content = html! {
        nav.fil aria-label="Fil d'Ariane" {
            a href="/fichiers/" { "Racine" }
            @for depth in 1..=upath.segments.len() {
                " / " a href=(files_link(&upath.segments[..depth])) { (upath.segments[depth - 1]) }
            }
        }
        h1 { (upath.segments.last().map_or("Mes espaces", String::as_str)) }
        @if let Some(notice) = notice { p.msg role="status" { (notice) } }
        (quota_bar(ctx, &user)?)
        @if items.is_empty() { p { "Ce dossier est vide." } } @else {
            table {
                thead { tr { th scope="col" { "Nom" } th scope="col" { "Taille" } th scope="col" { "Modifié" } th scope="col" { span { "Actions" } } } }
                tbody {
                    @for item in &items { (row(&upath.segments, item, may_write(&item.name), &session)) }
                }
            }
        }
        @if target.internal.is_some() && !items.is_empty() {
            p { a href=(zip_href) { "Tout télécharger (zip)" } }
        }
        @if writable {
            h2 { "Ajouter" }
            form.ligne method="post" action=(here) enctype="multipart/form-data" {
                input type="hidden" name="csrf" value=(session.csrf);
                div { label for="fichiers" { "Fichiers" } input #fichiers type="file" name="fichier" multiple required; }
                button type="submit" { "Envoyer" }
            }
            form.ligne method="post" action=(here) {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="hidden" name="action" value="dossier";
                div { label for="nom" { "Nouveau dossier" } input #nom name="nom" required maxlength="255"; }
                button type="submit" { "Créer" }
            }
        }
    };
    Ok(page(StatusCode::OK, "Fichiers", Some((&user, &session)), &ctx.app.config.identity.name, content))
}

/// A date as people at the school read it: in the box's time zone, day first.
fn local_time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) => ts.to_zoned_datetime(jiff::tz::TimeZone::system()).strftime("%d/%m/%Y %H:%M").to_string(),
        Err(_) => String::new(),
    }
}

fn row(dir: &[String], item: &Item, writable: bool, session: &Session) -> Markup {
    let mut child = dir.to_vec();
    child.push(item.name.clone());
    let modified = if item.modified_ms > 0 { local_time(item.modified_ms) } else { String::new() };
    html! {
        tr {
            td {
                @if item.dir { a href=(files_link(&child)) { (item.name) "/" } }
                @else { a href=(format!("/api/files/{}", path::encode(&child))) download=(item.name) { (item.name) } }
            }
            td.n { @if !item.dir { (human_size(item.size)) } }
            td { (modified) }
            td {
                @if writable {
                    form method="post" action=(files_link(dir)) {
                        input type="hidden" name="csrf" value=(session.csrf);
                        input type="hidden" name="action" value="supprimer";
                        input type="hidden" name="nom" value=(item.name);
                        button.lien type="submit" aria-label=(format!("Supprimer {}", item.name)) { "Supprimer" }
                    }
                }
            }
        }
    }
}

async fn files_submit(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let (user, session) = logged_in(ctx, req.headers())?;
    let upath = view_of(req.uri().path())?;
    let here = files_link(&upath.segments);
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if content_type.starts_with("multipart/form-data") {
        upload(ctx, &user, &session, &upath.segments, &content_type, req).await?;
        return Ok(redirect(&format!("{here}?msg=envoye")));
    }
    let form = read_form(ctx, req).await?;
    check_csrf(&session.csrf, &form)?;
    let name = form.get("nom").map(|n| n.trim()).unwrap_or("");
    let name = path::normalize_segment(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut view = upath.segments.clone();
    view.push(name);
    let (target, _) = files::target(&ctx.app, &user, &view)?;
    let internal = files::writable(&target)?;
    match form.get("action").map(String::as_str) {
        Some("dossier") => {
            ctx.app.store.mkdir(internal, &user.login).await?;
            Ok(redirect(&format!("{here}?msg=dossier")))
        }
        Some("supprimer") => {
            ctx.app.store.delete(internal).await?;
            log::info!("{} deleted {}", user.login, view.join("/"));
            Ok(redirect(&format!("{here}?msg=supprime")))
        }
        _ => Err(ApiError::BadRequest("action inconnue".into())),
    }
}

/// Form upload: the CSRF field must come first (browsers send fields in page order), then each file is
/// streamed into the store like a PUT.
async fn upload(
    ctx: &Ctx,
    user: &User,
    session: &Session,
    dir: &[String],
    content_type: &str,
    req: Request,
) -> Result<(), ApiError> {
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| ApiError::BadRequest(format!("formulaire invalide : {e}")))?;
    let idle = ctx.app.config.limits.body_idle_timeout.0;
    let mut multipart = multer::Multipart::new(body::stream(req.into_body(), idle), boundary);
    let bad = |e: multer::Error| match e {
        multer::Error::StreamReadFailed(inner) => match inner.downcast::<ApiError>() {
            Ok(api) => *api,
            Err(other) => ApiError::BadRequest(format!("envoi interrompu : {other}")),
        },
        other => ApiError::BadRequest(format!("formulaire invalide : {other}")),
    };
    let mut csrf_ok = false;
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        match field.name() {
            Some("csrf") => {
                let sent = field.text().await.map_err(bad)?;
                csrf_ok = session::same_secret(&sent, &session.csrf);
            }
            Some("fichier") if csrf_ok => {
                let Some(file_name) = field.file_name().map(str::to_string) else { continue };
                if file_name.is_empty() {
                    continue;
                }
                // Some browsers send a path ("C:\Users\…\devoir.pdf"): keep the last part.
                let base = file_name.rsplit(['/', '\\']).next().unwrap_or(&file_name);
                let name = path::normalize_segment(base).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                let mut view = dir.to_vec();
                view.push(name);
                let (target, _) = files::target(&ctx.app, user, &view)?;
                let internal = files::writable(&target)?.to_vec();
                let old = ctx.app.store.stat(&internal)?;
                let room = files::room(&ctx.app, user, old.as_ref())?;
                let written = files::store_upload(&ctx.app, user, &internal, room, field.map_err(bad)).await?;
                let size = written.entry.size;
                log::info!("{} wrote {} ({size} bytes, form)", user.login, view.join("/"));
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "formulaire expiré ou venu d'un autre site : rechargez la page et recommencez".into(),
                ))
            }
        }
    }
    Ok(())
}

fn accounts(ctx: &mut Ctx, req: &Request) -> Result<Response, ApiError> {
    let (user, session) = logged_in(ctx, req.headers())?;
    if user.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    let q = query(req);
    accounts_page(ctx, &user, &session, StatusCode::OK, q.get("msg").and_then(|c| message(c)), None)
}

fn accounts_page(
    ctx: &Ctx,
    user: &User,
    session: &Session,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
) -> Result<Response, ApiError> {
    let users = ctx.app.store.users()?;
    let content = html! {
        h1 { "Comptes" }
        @if let Some(notice) = notice { p.msg role="status" { (notice) } }
        @if let Some(error) = error { p.err role="alert" { (error) } }
        h2 { "Créer un compte" }
        form method="post" action="/admin/comptes" {
            input type="hidden" name="csrf" value=(session.csrf);
            div.ligne {
                div { label for="login" { "Identifiant" } input #login name="login" required pattern="[a-z0-9._-]+" maxlength="64"; }
                div { label for="nom" { "Nom affiché" } input #nom name="display_name" required maxlength="128"; }
                div { label for="role" { "Profil" }
                    select #role name="role" {
                        @for role in Role::ALL { option value=(role.as_str()) { (role.label()) } }
                    }
                }
            }
            div.ligne {
                div { label for="mdp" { "Mot de passe (8 caractères au moins)" } input #mdp name="password" type="password" required minlength="8" autocomplete="new-password"; }
                div { label for="classes" { "Classes (séparées par des virgules)" } input #classes name="classes"; }
                div { label for="enfants" { "Enfants (identifiants, pour un parent)" } input #enfants name="children"; }
            }
            button type="submit" { "Créer le compte" }
        }
        h2 { "Comptes existants (" (users.len()) ")" }
        table {
            thead { tr { th scope="col" { "Identifiant" } th scope="col" { "Nom" } th scope="col" { "Profil" } th scope="col" { "Classes" } } }
            tbody {
                @for u in &users {
                    tr { td { (u.login) } td { (u.display_name) } td { (u.role.label()) } td { (u.classes.join(", ")) } }
                }
            }
        }
    };
    Ok(page(status, "Comptes", Some((user, session)), &ctx.app.config.identity.name, content))
}

async fn accounts_submit(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let (user, session) = logged_in(ctx, req.headers())?;
    if user.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    let form = read_form(ctx, req).await?;
    check_csrf(&session.csrf, &form)?;
    let list = |key: &str| -> Vec<String> {
        form.get(key)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let field = |key: &str| form.get(key).cloned().unwrap_or_default();
    let Some(role) = Role::parse(&field("role")) else {
        return accounts_page(ctx, &user, &session, StatusCode::BAD_REQUEST, None, Some("Profil inconnu."));
    };
    let new = NewUser {
        login: field("login").trim().to_string(),
        display_name: field("display_name"),
        role,
        password: field("password"),
        classes: list("classes"),
        children: list("children"),
        uai: None,
    };
    match super::admin::create(ctx, new).await {
        Ok(_) => Ok(redirect("/admin/comptes?msg=compte")),
        Err(e @ (ApiError::BadRequest(_) | ApiError::Conflict(_))) => {
            accounts_page(ctx, &user, &session, e.status(), None, Some(&e.to_string()))
        }
        Err(e) => Err(e),
    }
}

fn admin_session(ctx: &mut Ctx, headers: &HeaderMap) -> Result<(User, Session), ApiError> {
    let (user, session) = logged_in(ctx, headers)?;
    if user.role != Role::Admin {
        return Err(ApiError::Forbidden);
    }
    Ok((user, session))
}

fn import_form(session: &Session) -> Markup {
    html! {
        form method="post" action="/admin/import" enctype="multipart/form-data" {
            input type="hidden" name="csrf" value=(session.csrf);
            div.ligne {
                div {
                    label for="exports" { "Fichiers d'export (ONDE CSV, AAF XML, CSV, ou un zip)" }
                    input #exports type="file" name="fichier" multiple required accept=".csv,.xml,.zip";
                }
                button type="submit" { "Importer" }
            }
        }
        form method="post" action="/admin/import/annuler" {
            input type="hidden" name="csrf" value=(session.csrf);
            button.lien type="submit" { "Annuler le dernier import" }
        }
    }
}

fn import_page(ctx: &mut Ctx, req: &Request) -> Result<Response, ApiError> {
    let (user, session) = admin_session(ctx, req.headers())?;
    let notice = query(req).get("msg").and_then(|c| message(c));
    let content = html! {
        h1 { "Importer l'annuaire" }
        @if let Some(notice) = notice { p.msg role="status" { (notice) } }
        p { "Déposez les exports de l'école : ONDE (CSVExtraction-eleves, -enseignants, -responsables), AAF (fichiers ENT_…_Complet_…xml) ou un CSV avec les colonnes nom, prénom, classe, profil. Rien n'est modifié si un fichier contient une erreur ; un instantané de l'annuaire est pris avant chaque import." }
        (import_form(&session))
        p { a href="/admin/activation" { "Fiches d'activation à imprimer" } " · " a href="/admin/comptes" { "Comptes" } }
    };
    Ok(page(StatusCode::OK, "Import", Some((&user, &session)), &ctx.app.config.identity.name, content))
}

async fn import_submit(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let (user, session) = admin_session(ctx, req.headers())?;
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let boundary = multer::parse_boundary(&content_type)
        .map_err(|e| ApiError::BadRequest(format!("formulaire invalide : {e}")))?;
    let idle = ctx.app.config.limits.body_idle_timeout.0;
    let mut multipart = multer::Multipart::new(body::stream(req.into_body(), idle), boundary);
    let mut uploads: Vec<(Option<String>, std::path::PathBuf)> = Vec::new();
    let mut csrf_ok = false;
    let result: Result<(), ApiError> = async {
        let bad = |e: multer::Error| ApiError::BadRequest(format!("envoi interrompu : {e}"));
        let mut total = 0u64;
        while let Some(field) = multipart.next_field().await.map_err(bad)? {
            match field.name() {
                Some("csrf") => csrf_ok = session::same_secret(&field.text().await.map_err(bad)?, &session.csrf),
                Some("fichier") if csrf_ok => {
                    let name = field.file_name().map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string());
                    let path = super::admin::receive(ctx, field.map_err(bad), &mut total).await?;
                    uploads.push((name, path));
                }
                _ => return Err(ApiError::BadRequest("formulaire expiré : rechargez la page et recommencez".into())),
            }
        }
        Ok(())
    }
    .await;
    let report = match result {
        Ok(()) => ctx.app.import(uploads.clone()).await.map_err(ApiError::from),
        Err(e) => Err(e),
    };
    for (_, path) in &uploads {
        let _ = std::fs::remove_file(path);
    }
    let report = report?;
    let ok = report.errors.is_empty();
    let content = html! {
        h1 { "Rapport d'import" }
        @if ok {
            p.msg role="status" { "Import réussi." }
        } @else {
            p.err role="alert" { "L'import a été refusé : aucun compte n'a été modifié. Corrigez les fichiers puis recommencez." }
        }
        table {
            tbody {
                tr { th scope="row" { "Comptes créés" } td.n { (report.created) } }
                tr { th scope="row" { "Comptes mis à jour" } td.n { (report.updated) } }
                tr { th scope="row" { "Changements de classe" } td.n { (report.moved) } }
                tr { th scope="row" { "Départs (comptes désactivés)" } td.n { (report.leaving) } }
                tr { th scope="row" { "Erreurs" } td.n { (report.errors.len()) } }
            }
        }
        @if !ok {
            h2 { "Erreurs" }
            table {
                thead { tr { th scope="col" { "Fichier" } th scope="col" { "Ligne" } th scope="col" { "Champ" } th scope="col" { "Problème" } } }
                tbody {
                    @for e in &report.errors {
                        tr { td { (e.file) } td.n { (e.line) } td { (e.field) } td { (e.message) } }
                    }
                }
            }
        }
        h2 { "Nouvel import" }
        (import_form(&session))
        p { a href="/admin/activation" { "Fiches d'activation à imprimer" } }
    };
    let status = if ok { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    Ok(page(status, "Rapport d'import", Some((&user, &session)), &ctx.app.config.identity.name, content))
}

async fn import_undo(ctx: &mut Ctx, req: Request) -> Result<Response, ApiError> {
    let (_, session) = admin_session(ctx, req.headers())?;
    let form = read_form(ctx, req).await?;
    check_csrf(&session.csrf, &form)?;
    match ctx.app.store.undo_directory().await {
        Ok(n) => {
            log::info!("directory import undone from the portal: {n} accounts restored");
            Ok(redirect("/admin/import?msg=annule"))
        }
        Err(crate::store::StoreError::NotFound) => Err(ApiError::Conflict("aucun import à annuler".into())),
        Err(e) => Err(e.into()),
    }
}

/// Printable activation sheets: one card per person not yet activated, for one class (or all).
fn activation_sheet(ctx: &mut Ctx, req: &Request) -> Result<Response, ApiError> {
    let (user, session) = admin_session(ctx, req.headers())?;
    let class = query(req).get("classe").cloned();
    let mut pending: Vec<User> = ctx
        .app
        .store
        .users()?
        .into_iter()
        .filter(|u| u.activation_code.is_some() && !u.disabled())
        .filter(|u| class.as_ref().is_none_or(|c| u.classes.contains(c)))
        .collect();
    pending.sort_by(|a, b| (a.classes.first(), &a.display_name).cmp(&(b.classes.first(), &b.display_name)));
    let classes = ctx.app.all_classes(None)?;
    let school = ctx.app.config.identity.name.clone();
    let content = html! {
        style { (PreEscaped(".fiches{display:grid;grid-template-columns:repeat(2,1fr);gap:.5rem}.fiche{border:1px dashed #555;padding:.8rem;background:#fff;break-inside:avoid}.fiche code{font-size:1.3rem;letter-spacing:.1rem}@media print{header,.noprint{display:none}main{margin:0;max-width:none}}")) }
        div.noprint {
            h1 { "Fiches d'activation" }
            p { "Chaque fiche donne l'identifiant et le code d'activation d'une personne qui ne s'est pas encore connectée. À la première connexion, le code sert de mot de passe puis la personne choisit le sien." }
            form.ligne method="get" action="/admin/activation" {
                div {
                    label for="classe" { "Classe" }
                    select #classe name="classe" {
                        option value="" { "Toutes" }
                        @for c in &classes { option value=(c) selected[class.as_deref() == Some(c.as_str())] { (c) } }
                    }
                }
                button type="submit" { "Afficher" }
            }
            p { (pending.len()) " fiche(s). Utilisez la fonction Imprimer du navigateur." }
        }
        div.fiches {
            @for u in &pending {
                div.fiche {
                    p { strong { (u.display_name) } @if let Some(c) = u.classes.first() { " – " (c) } }
                    p { "Identifiant : " code { (u.login) } }
                    p { "Code d'activation : " code { (crate::directory::import::format_code(u.activation_code.as_deref().unwrap_or(""))) } }
                    p { small { "Connectez-vous sur le portail " (school) " avec ce code comme mot de passe, puis choisissez votre mot de passe." } }
                }
            }
        }
    };
    Ok(page(StatusCode::OK, "Fiches d'activation", Some((&user, &session)), &ctx.app.config.identity.name, content))
}

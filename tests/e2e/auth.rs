//! Logging in and out, sessions and their cookie, login throttling, admin-only endpoints, the one-process
//! lock on the data folder, and the first admin password.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::*;

/// Throttling high enough that tests about something else never meet it.
const LENIENT: &str = "[login]\nmax_failures_per_login = 100\nmax_failures_per_client = 1000\n";

#[test]
fn login_sets_a_strict_httponly_session_cookie() {
    let relais = Relais::start(LENIENT);
    let mut client = relais.anonymous();
    let resp = client.login("admin", ADMIN_PASSWORD).expect_status(200);
    let set_cookie = session_set_cookie(&resp).expect("Set-Cookie relais_session");
    let attributes: Vec<String> = set_cookie.split(';').skip(1).map(|a| a.trim().to_ascii_lowercase()).collect();
    assert!(attributes.iter().any(|a| a == "httponly"), "no HttpOnly in {set_cookie:?}");
    assert!(attributes.iter().any(|a| a == "samesite=strict"), "no SameSite=Strict in {set_cookie:?}");
    assert!(attributes.iter().any(|a| a == "path=/"), "no Path=/ in {set_cookie:?}");
    let value = set_cookie.split(';').next().and_then(|kv| kv.split_once('=')).map(|(_, v)| v).unwrap_or_default();
    assert!(value.len() >= 16, "session token {value:?} is too short to be unguessable");

    let me = client.me();
    assert_eq!(me["login"], "admin");
    assert_eq!(me["role"], "admin");
    assert!(me["display_name"].is_string(), "{me}");
    assert!(me["classes"].is_array(), "{me}");
    assert!(me["quota"]["used"].is_u64(), "{me}");
    assert!(me["quota"]["limit"].is_u64() || me["quota"]["limit"].is_null(), "{me}");

    // Two logins give two different sessions.
    let other = relais.admin();
    assert_ne!(other.cookie(), client.cookie(), "two logins share a session token");
}

#[test]
fn unknown_login_and_wrong_password_get_the_same_401() {
    let relais = Relais::start(LENIENT);
    let admin = relais.admin();
    admin.create_user("alice", "pupil", &["6A"], &[]);
    let mut client = relais.anonymous();
    let wrong_password = client.login("alice", "pas-le-bon-mot-de-passe").expect_status(401);
    let unknown_login = client.login("personne", "pas-le-bon-mot-de-passe").expect_status(401);
    wrong_password.error_message();
    assert_eq!(wrong_password.body, unknown_login.body, "the two 401s differ: {wrong_password:?} vs {unknown_login:?}");
    assert!(session_set_cookie(&wrong_password).is_none(), "a failed login set a session: {wrong_password:?}");
    assert!(client.cookie().is_none());

    // Malformed logins are refused, not crashed on.
    for body in [json!({}), json!({"login": "alice"}), json!({"login": 3, "password": []})] {
        let resp = client.post_json("/api/login", &body);
        assert!(matches!(resp.status, 400 | 401), "login with {body}: {resp:?}");
    }
    relais.login("alice", &password_of("alice"));
}

#[test]
fn repeated_failures_for_one_login_get_429() {
    let relais =
        Relais::start("[login]\nmax_failures_per_login = 5\nmax_failures_per_client = 1000\nwindow = \"15m\"\n");
    let admin = relais.admin();
    admin.create_user("alice", "pupil", &["6A"], &[]);
    admin.create_user("bob", "pupil", &["6A"], &[]);
    let mut client = relais.anonymous();
    for attempt in 1..=5 {
        let resp = client.login("alice", "mauvais-mot-de-passe");
        assert_eq!(resp.status, 401, "failure #{attempt} should still be a plain 401: {resp:?}");
    }
    // Throttled now, even with the right password.
    for password in ["mauvais-mot-de-passe".to_string(), password_of("alice")] {
        let resp = client.login("alice", &password);
        assert_eq!(resp.status, 429, "attempt after 5 failures: {resp:?}");
        resp.error_message();
        let retry_after = resp.header("retry-after").unwrap_or_else(|| panic!("429 without Retry-After: {resp:?}"));
        let seconds: u64 =
            retry_after.trim().parse().unwrap_or_else(|_| panic!("Retry-After {retry_after:?} is not seconds"));
        assert!(seconds > 0 && seconds <= 15 * 60, "Retry-After {seconds} outside the 15 min window");
        assert!(client.cookie().is_none());
    }
    // Another login from the same client is not affected.
    relais.login("bob", &password_of("bob"));
}

#[test]
fn repeated_failures_from_one_client_get_429() {
    let relais = Relais::start("[login]\nmax_failures_per_login = 100\nmax_failures_per_client = 4\n");
    let mut client = relais.anonymous();
    for i in 1..=4 {
        let resp = client.login(&format!("inconnu{i}"), "mauvais-mot-de-passe");
        assert_eq!(resp.status, 401, "failure #{i} from this client: {resp:?}");
    }
    let resp = client.login("inconnu5", "mauvais-mot-de-passe");
    assert_eq!(resp.status, 429, "5th failure from one client with max_failures_per_client = 4: {resp:?}");
    assert!(resp.header("retry-after").is_some(), "429 without Retry-After: {resp:?}");
}

#[test]
fn logout_ends_the_session() {
    let relais = Relais::start(LENIENT);
    let client = relais.admin();
    let other = relais.admin();
    client.me();
    client.logout().expect_status(204);
    let resp = client.call("GET", "/api/me").expect_status(401);
    resp.error_message();
    assert_eq!(client.get("me/").status, 401, "files after logout");
    // Only that session ended.
    other.me();
}

#[test]
fn requests_without_a_valid_session_get_401() {
    let relais = Relais::start(LENIENT);
    let admin = relais.admin();
    admin.put("me/secret.txt", b"secret").expect_status(201);
    let forged = admin.with_cookie(Some("relais_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    let empty = admin.with_cookie(Some("relais_session="));
    for client in [relais.anonymous(), forged, empty] {
        for (method, path) in [
            ("GET", "/api/me".to_string()),
            ("GET", files_url("me/secret.txt")),
            ("GET", files_url("me/")),
            ("PUT", files_url("me/x.txt")),
            ("DELETE", files_url("me/secret.txt")),
            ("GET", "/api/admin/users".to_string()),
        ] {
            let resp = client.call(method, &path);
            assert_eq!(resp.status, 401, "{method} {path} with cookie {:?}: {resp:?}", client.cookie());
            resp.error_message();
        }
    }
    assert_eq!(admin.get("me/secret.txt").expect_status(200).body, b"secret");
    assert_eq!(admin.names("me/"), ["secret.txt"]);
}

#[test]
fn session_expires_after_its_lifetime() {
    let relais = Relais::start("[login]\nsession_lifetime = \"3s\"\n");
    let started = Instant::now();
    let client = relais.admin();
    client.me();
    wait_until("the 3 s session to expire", Duration::from_secs(30), || {
        let expired = client.call("GET", "/api/me").status == 401;
        if !expired {
            std::thread::sleep(Duration::from_millis(500));
        }
        expired
    });
    let lived = started.elapsed();
    assert!(lived >= Duration::from_secs(2), "session ended after {lived:?} with session_lifetime = 3s");
}

#[test]
fn admin_creates_users_and_everyone_else_gets_403() {
    let relais = Relais::start(LENIENT);
    let admin = relais.admin();
    admin.create_user("prof", "teacher", &["6A"], &[]);
    admin.create_user("alice", "pupil", &["6A"], &[]);
    admin.create_user("maman", "parent", &[], &["alice"]);
    admin.create_user("secretariat", "staff", &[], &[]);

    let alice = relais.login("alice", &password_of("alice"));
    let me = alice.me();
    assert_eq!(me["login"], "alice");
    assert_eq!(me["role"], "pupil");
    assert_eq!(me["display_name"], "Test alice");
    assert_eq!(me["classes"], json!(["6A"]));

    for login in ["prof", "alice", "maman", "secretariat"] {
        let client = relais.login(login, &password_of(login));
        let resp = client.call("GET", "/api/admin/users");
        assert_eq!(resp.status, 403, "{login} listing users: {resp:?}");
        resp.error_message();
        let body = json!({"login": format!("intrus-{login}"), "display_name": "X", "role": "admin",
                          "password": "motdepasse123", "classes": [], "children": []});
        let resp = client.post_json("/api/admin/users", &body);
        assert_eq!(resp.status, 403, "{login} creating an admin: {resp:?}");
    }
    let users = admin.call("GET", "/api/admin/users").expect_status(200).json();
    let logins: Vec<&str> = users.as_array().expect("array").iter().filter_map(|u| u["login"].as_str()).collect();
    assert!(!logins.iter().any(|l| l.starts_with("intrus")), "a refused creation happened: {logins:?}");
}

#[test]
fn user_creation_checks_its_fields() {
    let relais = Relais::start(LENIENT);
    let admin = relais.admin();
    admin.create_user("alice", "pupil", &["6A"], &[]);
    let user = |login: &str, role: &str, password: &str| {
        json!({"login": login, "display_name": "Quelqu'un", "role": role, "password": password,
               "classes": ["6A"], "children": []})
    };
    let resp = admin.post_json("/api/admin/users", &user("alice", "pupil", "autre-mot-de-passe"));
    assert_eq!(resp.status, 409, "creating alice twice: {resp:?}");
    resp.error_message();
    let bad = [
        ("password of 7 chars", user("bob", "pupil", "1234567")),
        ("unknown role", user("bob", "sorcier", "motdepasse123")),
        ("empty login", user("", "pupil", "motdepasse123")),
        ("login with a slash", user("bo/b", "pupil", "motdepasse123")),
        ("no password", json!({"login": "bob", "display_name": "Bob", "role": "pupil", "classes": []})),
        (
            "classes not a list",
            json!({"login": "bob", "display_name": "Bob", "role": "pupil", "password": "motdepasse123", "classes": "6A"}),
        ),
    ];
    for (what, body) in bad {
        let resp = admin.post_json("/api/admin/users", &body);
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        resp.error_message();
    }
    let req = admin.request("POST", "/api/admin/users").set("Content-Type", "application/json");
    let resp = Client::send(req, Some(b"{\"login\": \"bob\", "));
    assert_eq!(resp.status, 400, "truncated JSON: {resp:?}");

    // Nothing was created by the refused requests; alice kept her password.
    let users = admin.call("GET", "/api/admin/users").expect_status(200).json();
    let logins: Vec<&str> = users.as_array().expect("array").iter().filter_map(|u| u["login"].as_str()).collect();
    assert!(!logins.contains(&"bob"), "{logins:?}");
    relais.login("alice", &password_of("alice"));
    // The shortest accepted password is 8 characters.
    admin.post_json("/api/admin/users", &user("bob", "pupil", "12345678")).expect_status(201);
    relais.login("bob", "12345678");
}

#[test]
fn user_list_shows_users_without_password_hashes() {
    let relais = Relais::start(LENIENT);
    let admin = relais.admin();
    admin.create_user("prof", "teacher", &["6A", "5B"], &[]);
    admin.create_user("alice", "pupil", &["6A"], &[]);
    admin.create_user("maman", "parent", &[], &["alice"]);
    let resp = admin.call("GET", "/api/admin/users").expect_status(200);
    let text = resp.text();
    for leak in ["argon2", "$v=19", password_of("alice").as_str(), "mot-de-passe-admin"] {
        assert!(!text.contains(leak), "user list contains {leak:?}: {text}");
    }
    let users = resp.json();
    let by_login = |login: &str| -> Value {
        users
            .as_array()
            .expect("array")
            .iter()
            .find(|u| u["login"] == login)
            .cloned()
            .unwrap_or_else(|| panic!("{login} missing from {users}"))
    };
    for user in users.as_array().expect("array") {
        let keys: Vec<&String> = user.as_object().expect("object").keys().collect();
        assert!(!keys.iter().any(|k| k.contains("password") || k.contains("hash")), "secret field in {user}");
    }
    assert_eq!(by_login("admin")["role"], "admin");
    assert_eq!(by_login("prof")["role"], "teacher");
    assert_eq!(by_login("prof")["classes"], json!(["6A", "5B"]));
    assert_eq!(by_login("alice")["display_name"], "Test alice");
    assert_eq!(by_login("maman")["children"], json!(["alice"]));
}

#[test]
fn a_second_server_on_the_same_data_folder_exits_2() {
    let relais = Relais::start("");
    let (status, _out, err) = run_bounded(relais.serve_command(), Duration::from_secs(20));
    let status = status.expect("the second relais kept running instead of exiting");
    assert_eq!(status.code(), Some(2), "second relais on the same folder: {status:?}, stderr: {err}");
    assert!(err.contains("already used"), "stderr does not say the folder is already used: {err}");
    // The first one is unharmed.
    relais.anonymous().call("GET", "/healthz").expect_status(200);
    relais.admin().me();
}

#[test]
fn admin_password_is_printed_when_not_given() {
    let mut relais = Relais::start_with(LENIENT, None);
    // The password line may come just before or after `listening on`.
    let candidates = |lines: &[String]| -> Vec<String> {
        let mut out = Vec::new();
        for line in lines.iter().filter(|l| !l.contains("listening on")) {
            for token in line.split_whitespace().rev() {
                let token = token.trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '«' | '»' | ',' | ';'));
                let token = token.strip_suffix('.').unwrap_or(token);
                if token.len() >= 8 && !out.iter().any(|t| t == token) {
                    out.push(token.to_string());
                }
            }
        }
        out
    };
    let mut password = None;
    let mut tried: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while password.is_none() && Instant::now() < deadline {
        for candidate in candidates(&relais.stdout_lines()) {
            if tried.contains(&candidate) || tried.len() >= 20 {
                continue;
            }
            tried.push(candidate.clone());
            if relais.anonymous().login("admin", &candidate).status == 200 {
                password = Some(candidate);
                break;
            }
        }
        if password.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let password = password
        .unwrap_or_else(|| panic!("no stdout line holds a working admin password: {:#?}", relais.stdout_lines()));
    assert!(password.len() >= 12, "generated admin password {password:?} is short");

    // Printed once: a restart does not print it again, and it still works.
    relais.restart();
    let lines = relais.stdout_lines();
    assert!(!lines.iter().any(|l| l.contains(&password)), "password printed again after restart: {lines:#?}");
    relais.login("admin", &password);
}

#[test]
fn a_user_changes_their_password_from_the_portal() {
    let relais = Relais::start("");
    let admin = relais.admin();
    let lea = relais.user(&admin, "lea.martin", "pupil", &["CM2"], &[]);
    let page = lea.call("GET", "/compte").expect_status(200).text();
    assert!(page.contains("Changer mon mot de passe"), "{page}");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("csrf").to_string();
    let post = |current: &str, new: &str, confirm: &str| {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("csrf", &csrf)
            .append_pair("current", current)
            .append_pair("new", new)
            .append_pair("confirm", confirm)
            .finish();
        let req = lea.request("POST", "/compte").set("Content-Type", "application/x-www-form-urlencoded");
        Client::send(req, Some(body.as_bytes()))
    };
    let old = password_of("lea.martin");
    assert_eq!(post("pas-le-bon-mot", "nouveau-mdp-1", "nouveau-mdp-1").status, 401);
    assert_eq!(post(&old, "nouveau-mdp-1", "autre-chose").status, 400);
    assert_eq!(post(&old, "court", "court").status, 400);
    assert_eq!(relais.anonymous().login("lea.martin", &old).status, 200, "nothing changed yet");
    let done = post(&old, "nouveau-mdp-1", "nouveau-mdp-1");
    assert_eq!(done.status, 200);
    assert!(done.text().contains("Mot de passe changé"), "{}", done.text());
    assert_eq!(relais.anonymous().login("lea.martin", "nouveau-mdp-1").status, 200);
    assert_eq!(relais.anonymous().login("lea.martin", &old).status, 401);
}

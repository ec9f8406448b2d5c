//! Dashboard users after `user add`: delete, disable, enable and new passwords, from the CLI
//! beside a running server and from the dashboard. Each change ends the user's sessions at the
//! next request; the last enabled admin stays; the dashboard's forms need the admin role and
//! the session's CSRF token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::process::{Command, Stdio};

mod common;
use common::*;

/// A browser on the dashboard: one client (no redirects followed), requests with a given
/// session cookie.
struct Browser {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
}

impl Browser {
    fn new(s: &Server) -> Browser {
        Browser {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: s.no_redirect_client(),
            url: s.url.clone(),
        }
    }

    /// The login form's status: 303 logged in, 401 refused.
    fn login_status(&self, user: &str, password: &str) -> u16 {
        self.rt
            .block_on(ui_login(&self.client, &self.url, user, password))
            .status()
            .as_u16()
    }

    /// A new session cookie of `user`; fails the test when the login is refused.
    fn session(&self, user: &str, password: &str) -> String {
        self.rt
            .block_on(ui_session(&self.client, &self.url, user, password))
    }

    /// GET `path` with `cookie`: the status and the page.
    fn get(&self, path: &str, cookie: &str) -> (u16, String) {
        self.rt.block_on(async {
            let r = self
                .client
                .get(format!("{}{path}", self.url))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    }

    /// POST the form to `path` with `cookie`: the status and the page.
    fn post(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> (u16, String) {
        self.rt.block_on(async {
            let r = self
                .client
                .post(format!("{}{path}", self.url))
                .header("cookie", cookie)
                .form(form)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    }

    /// Whether the session `cookie` is still logged in: a page answers 200, a logged-out
    /// session is sent to the login page (303).
    fn logged_in(&self, cookie: &str) -> bool {
        match self.get("/ui/hosts", cookie).0 {
            200 => true,
            303 => false,
            other => panic!("/ui/hosts answered {other}"),
        }
    }
}

/// `patchbay-server user <args> --data …` with the password (if any) written to its stdin.
fn user_cli(s: &Server, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(bin())
        .arg("user")
        .args(args)
        .arg("--data")
        .arg(&s.data)
        .env_remove("PATCHBAY_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// `user <args>` that must succeed.
fn user_ok(s: &Server, args: &[&str], stdin: Option<&str>) {
    let out = user_cli(s, args, stdin);
    assert!(out.status.success(), "user {args:?}: {out:?}");
}

/// `user list`: (name, role, state) per user.
fn user_list(s: &Server) -> Vec<(String, String, String)> {
    let out = user_cli(s, &["list"], None);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "{l}");
            (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
        })
        .collect()
}

fn state_of(s: &Server, name: &str) -> Option<String> {
    user_list(s)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, state)| state)
}

/// The audit log's (actor, action, detail) entries whose action starts with `prefix`.
fn audited(s: &Server, prefix: &str) -> Vec<(String, String, String)> {
    let (_, audit) = call(s, "GET", "/api/v1/audit", Some(&s.admin), None);
    audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap().to_owned();
            (text("actor"), text("action"), text("detail"))
        })
        .filter(|(_, action, _)| action.starts_with(prefix))
        .collect()
}

/// A server with user `name` (`role`, `password`) logged in: the browser and the session.
fn server_with_session(name: &str, role: &str, password: &str) -> (Server, Browser, String) {
    let s = start(|t| t.to_owned());
    add_user(&s, name, role, password);
    let browser = Browser::new(&s);
    let session = browser.session(name, password);
    assert!(browser.logged_in(&session));
    (s, browser, session)
}

#[test]
fn a_disabled_users_live_session_is_refused_at_once_and_their_login_looks_like_a_wrong_password() {
    let (s, browser, session) = server_with_session("vera", "viewer", "viewer-password");

    user_ok(&s, &["disable", "--name", "vera"], None);
    assert_eq!(state_of(&s, "vera").as_deref(), Some("disabled"));
    assert!(
        !browser.logged_in(&session),
        "the session of a disabled user still works"
    );
    // The right password is answered as a wrong one (the form tells no names apart), and the
    // refusal is in the audit log for the operator.
    let wrong = browser.rt.block_on(async {
        let r = ui_login(&browser.client, &browser.url, "vera", "wrong-password").await;
        (r.status().as_u16(), r.text().await.unwrap())
    });
    let right = browser.rt.block_on(async {
        let r = ui_login(&browser.client, &browser.url, "vera", "viewer-password").await;
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(wrong.0, 401);
    assert_eq!(right.0, 401);
    let message = |page: &str| {
        page.split("class=\"error\"")
            .nth(1)
            .map(|rest| rest.split('<').next().unwrap().to_owned())
    };
    assert!(message(&wrong.1).is_some(), "{}", wrong.1);
    assert_eq!(message(&wrong.1), message(&right.1));
    let refused = audited(&s, "login-refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "user:vera");
    assert!(refused[0].2.contains("disabled user vera"), "{refused:?}");

    user_ok(&s, &["enable", "--name", "vera"], None);
    assert_eq!(state_of(&s, "vera").as_deref(), Some("enabled"));
    assert!(
        !browser.logged_in(&session),
        "enabling gives no ended session back"
    );
    let again = browser.session("vera", "viewer-password");
    assert!(browser.logged_in(&again));
    let actions: Vec<String> = audited(&s, "user-").into_iter().map(|e| e.1).collect();
    assert!(
        actions.contains(&"user-disable".to_owned()) && actions.contains(&"user-enable".to_owned()),
        "{actions:?}"
    );
}

#[test]
fn a_deleted_users_live_session_is_refused_at_once() {
    let (s, browser, session) = server_with_session("otto", "operator", "operator-password");

    user_ok(&s, &["delete", "--name", "otto"], None);
    assert!(!browser.logged_in(&session));
    assert_eq!(state_of(&s, "otto"), None);
    assert_eq!(browser.login_status("otto", "operator-password"), 401);
    // An unknown name is refused and names where users are listed.
    let out = user_cli(&s, &["delete", "--name", "otto"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("user list"),
        "{out:?}"
    );
    // The name is free again, with a new password; the old session stays ended.
    add_user(&s, "otto", "viewer", "another-password");
    assert!(!browser.logged_in(&session));
}

#[test]
fn a_new_password_ends_every_old_session_and_the_new_password_works() {
    let s = start(|t| t.to_owned());
    add_user(&s, "vera", "viewer", "old-password");
    add_user(&s, "otto", "operator", "operator-password");
    let browser = Browser::new(&s);
    let first = browser.session("vera", "old-password");
    let second = browser.session("vera", "old-password");
    let other_user = browser.session("otto", "operator-password");

    // Read from stdin, as `user add` reads it.
    user_ok(&s, &["passwd", "--name", "vera"], Some("new-password-1\n"));
    assert!(!browser.logged_in(&first));
    assert!(!browser.logged_in(&second));
    assert!(
        browser.logged_in(&other_user),
        "another user's session ended too"
    );
    assert_eq!(browser.login_status("vera", "old-password"), 401);
    let fresh = browser.session("vera", "new-password-1");
    assert!(browser.logged_in(&fresh));

    // Too short a password is refused and changes nothing (the session stays).
    let out = user_cli(&s, &["passwd", "--name", "vera"], Some("short\n"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 8"),
        "{out:?}"
    );
    assert!(browser.logged_in(&fresh));
    assert_eq!(browser.login_status("vera", "new-password-1"), 303);
}

#[test]
fn the_last_enabled_admin_cannot_be_deleted_or_disabled() {
    let s = start(|t| t.to_owned());
    for verb in ["delete", "disable"] {
        let out = user_cli(&s, &[verb, "--name", "admin"], None);
        assert!(!out.status.success(), "{verb} admin: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("last enabled admin"),
            "{out:?}"
        );
    }
    assert_eq!(state_of(&s, "admin").as_deref(), Some("enabled"));

    add_user(&s, "ada", "admin", "admin-password");
    user_ok(&s, &["disable", "--name", "admin"], None);
    // Now ada is the only enabled admin: a disabled admin does not count.
    let out = user_cli(&s, &["delete", "--name", "ada"], None);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("last enabled admin"),
        "{out:?}"
    );
    assert_eq!(state_of(&s, "ada").as_deref(), Some("enabled"));
    // A disabled admin can be deleted: no enabled admin is lost.
    user_ok(&s, &["delete", "--name", "admin"], None);
    // Non-admins are no admins either.
    add_user(&s, "otto", "operator", "operator-password");
    let out = user_cli(&s, &["disable", "--name", "ada"], None);
    assert!(!out.status.success(), "{out:?}");
    user_ok(&s, &["disable", "--name", "otto"], None);
    assert_eq!(
        user_list(&s),
        vec![
            ("ada".to_owned(), "admin".to_owned(), "enabled".to_owned()),
            (
                "otto".to_owned(),
                "operator".to_owned(),
                "disabled".to_owned()
            ),
        ]
    );
}

#[test]
fn dashboard_user_forms_need_the_admin_role_and_the_sessions_csrf_token() {
    let s = start(|t| t.to_owned());
    add_user(&s, "ada", "admin", "admin-password");
    add_user(&s, "otto", "operator", "operator-password");
    add_user(&s, "vera", "viewer", "viewer-password");
    let browser = Browser::new(&s);
    let admin = browser.session("ada", "admin-password");
    let operator = browser.session("otto", "operator-password");
    let viewer = browser.session("vera", "viewer-password");

    let (status, access) = browser.get("/ui/access", &admin);
    assert_eq!(status, 200);
    for name in ["admin", "ada", "otto", "vera"] {
        assert!(
            access.contains(&format!("/ui/users/confirm?action=delete&amp;name={name}")),
            "{name} is not listed: {access}"
        );
    }

    // Viewers and operators: no confirmation page, and a hand-made form with their own valid
    // CSRF token is refused for every action; nothing changes.
    for (role, cookie) in [("viewer", &viewer), ("operator", &operator)] {
        let (_, own_page) = browser.get("/ui/hosts", cookie);
        let own_csrf = csrf_in(&own_page);
        for action in ["delete", "disable", "enable", "password"] {
            let (status, _) = browser.get(
                &format!("/ui/users/confirm?action={action}&name=vera"),
                cookie,
            );
            assert_eq!(status, 403, "{role} opens the {action} page");
            let (status, page) = browser.post(
                "/ui/users",
                cookie,
                &[
                    ("action", action),
                    ("name", "vera"),
                    ("csrf", &own_csrf),
                    ("password", "taken-over-1"),
                ],
            );
            assert_eq!(status, 403, "{role} may {action}: {page}");
            assert!(page.contains("needs role admin"), "{page}");
        }
    }
    assert!(browser.logged_in(&viewer));
    assert_eq!(state_of(&s, "vera").as_deref(), Some("enabled"));
    assert_eq!(browser.login_status("vera", "taken-over-1"), 401);

    // The admin: the confirmation page carries the CSRF token; without it or with another
    // one the form is refused and nothing changes.
    let (status, confirm) = browser.get("/ui/users/confirm?action=disable&name=vera", &admin);
    assert_eq!(status, 200, "{confirm}");
    assert!(confirm.contains("Disable viewer user vera"), "{confirm}");
    let csrf = csrf_in(&confirm);
    let (_, operator_page) = browser.get("/ui/hosts", &operator);
    let operators_csrf = csrf_in(&operator_page);
    for forged in [None, Some(operators_csrf.as_str())] {
        let mut form = vec![("action", "disable"), ("name", "vera")];
        if let Some(token) = forged {
            form.push(("csrf", token));
        }
        let (status, page) = browser.post("/ui/users", &admin, &form);
        assert_eq!(status, 403, "{page}");
        assert!(page.contains("stale or forged form"), "{page}");
    }
    assert!(browser.logged_in(&viewer));

    let (status, _) = browser.post(
        "/ui/users",
        &admin,
        &[("action", "disable"), ("name", "vera"), ("csrf", &csrf)],
    );
    assert_eq!(status, 303);
    assert!(!browser.logged_in(&viewer), "disabled from the dashboard");
    assert_eq!(state_of(&s, "vera").as_deref(), Some("disabled"));
    let (_, access) = browser.get("/ui/access", &admin);
    assert!(
        access.contains("/ui/users/confirm?action=enable&amp;name=vera"),
        "{access}"
    );

    // A new password from the dashboard ends the operator's session; the new one works.
    let (status, confirm) = browser.get("/ui/users/confirm?action=password&name=otto", &admin);
    assert_eq!(status, 200);
    assert!(confirm.contains("type=\"password\""), "{confirm}");
    let (status, _) = browser.post(
        "/ui/users",
        &admin,
        &[
            ("action", "password"),
            ("name", "otto"),
            ("csrf", &csrf),
            ("password", "operator-password-2"),
        ],
    );
    assert_eq!(status, 303);
    assert!(!browser.logged_in(&operator));
    assert_eq!(browser.login_status("otto", "operator-password"), 401);
    assert_eq!(browser.login_status("otto", "operator-password-2"), 303);

    // ada deletes the init admin, then cannot take herself away: the last enabled admin.
    let (status, _) = browser.post(
        "/ui/users",
        &admin,
        &[("action", "delete"), ("name", "admin"), ("csrf", &csrf)],
    );
    assert_eq!(status, 303);
    for action in ["delete", "disable"] {
        let (status, page) = browser.post(
            "/ui/users",
            &admin,
            &[("action", action), ("name", "ada"), ("csrf", &csrf)],
        );
        assert_eq!(status, 409, "{page}");
        assert!(page.contains("last enabled admin"), "{page}");
    }
    assert!(browser.logged_in(&admin));
    let changes: Vec<(String, String)> = audited(&s, "user-")
        .into_iter()
        .filter(|e| e.0 == "user:ada")
        .map(|e| (e.1, e.2))
        .collect();
    assert_eq!(
        changes.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["user-delete", "user-password", "user-disable"],
        "{changes:?}"
    );
}

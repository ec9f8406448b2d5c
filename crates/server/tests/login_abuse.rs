//! Login abuse against the real server process over TLS on loopback: floods of huge user
//! names, password sprays against the well-known `admin` from one address, and clients behind
//! a TLS proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
use common::*;

/// A client that pins the server's certificate, follows no redirect (a login's 303 is read)
/// and connects from `local` (any 127.0.0.0/8 address reaches the server on loopback).
fn client_from(s: &Server, local: [u8; 4]) -> reqwest::Client {
    s.process
        .client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from(local))
        .build()
        .unwrap()
}

/// `config.toml` text with the failed-login limits per user and per address changed.
fn with_login_limits(config: &str, per_user: u32, per_address: u32) -> String {
    config
        .replace(
            "login_failures_per_user = 5",
            &format!("login_failures_per_user = {per_user}"),
        )
        .replace(
            "login_failures_per_address = 50",
            &format!("login_failures_per_address = {per_address}"),
        )
}

/// The server's resident memory in KiB (`VmRSS` of `/proc/<pid>/status`).
fn resident_kib(s: &Server) -> u64 {
    let pid = s.process.pid().expect("the server runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A login form sent as a browser sends it (the login page first, for its CSRF token); the
/// reply's status.
async fn post_login(client: &reqwest::Client, s: &Server, user: &str, password: &str) -> u16 {
    post_login_forwarded(client, s, None, user, password).await
}

/// [`post_login`] through a proxy that names the client in `X-Forwarded-For`.
async fn post_login_forwarded(
    client: &reqwest::Client,
    s: &Server,
    forwarded_for: Option<&str>,
    user: &str,
    password: &str,
) -> u16 {
    let (cookie, csrf) = login_page(client, &s.url).await;
    let mut request = client
        .post(format!("{}/ui/login", s.url))
        .header("cookie", cookie)
        .form(&[("user", user), ("password", password), ("csrf", &csrf)]);
    if let Some(hops) = forwarded_for {
        request = request.header("x-forwarded-for", hops);
    }
    request.send().await.unwrap().status().as_u16()
}

#[test]
fn a_flood_of_huge_user_names_is_refused_and_server_memory_stays_bounded() {
    const NAMES: usize = 100;
    let s = start(|t| with_login_limits(t, 3, 100_000));
    add_user(&s, "vera", "viewer", "viewer-password");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = client_from(&s, [127, 0, 0, 1]);
        // One field a byte over its limit: 400, and not counted (three would lock vera out).
        for _ in 0..4 {
            let long_password = "p".repeat(1025);
            assert_eq!(post_login(&client, &s, "vera", &long_password).await, 400);
            let long_name = "v".repeat(257);
            assert_eq!(
                post_login(&client, &s, &long_name, "wrong-password").await,
                400
            );
        }
        assert_eq!(
            post_login(&client, &s, "vera", "viewer-password").await,
            303
        );

        let before = resident_kib(&s);
        // Names just under the 2 MiB a form may otherwise have, each different, four at a
        // time: a server that remembers failed names as typed holds NAMES × 2 MiB afterwards.
        // A fresh connection per request: the server may close one it refused mid-body.
        let fresh = s
            .process
            .client_builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let mut flood = tokio::task::JoinSet::new();
        for worker in 0..4 {
            let (client, url) = (fresh.clone(), s.url.clone());
            flood.spawn(async move {
                let mut refused = Vec::new();
                for i in 0..NAMES / 4 {
                    let name = format!("{worker}-{i}-{}", "n".repeat((2 << 20) - 4096));
                    let (cookie, csrf) = login_page(&client, &url).await;
                    let reply = client
                        .post(format!("{url}/ui/login"))
                        .header("cookie", cookie)
                        .form(&[("user", name.as_str()), ("password", "x"), ("csrf", &csrf)])
                        .send()
                        .await;
                    refused.push(match reply {
                        Ok(reply) => Refusal::Answer(reply.status().as_u16()),
                        // Refused before the body was read: the server closed the connection
                        // while it was still being sent.
                        Err(e) if e.is_request() && !e.is_connect() => Refusal::CutWhileSending,
                        Err(e) => panic!("login {i} of worker {worker}: {e:?}"),
                    });
                }
                refused
            });
        }
        let mut replies = Vec::new();
        while let Some(done) = flood.join_next().await {
            replies.extend(done.unwrap());
        }
        assert!(
            replies
                .iter()
                .all(|r| matches!(r, Refusal::Answer(413) | Refusal::CutWhileSending)),
            "every huge login form is refused (413, or cut before it was read): {replies:?}"
        );
        let grown_mib = resident_kib(&s).saturating_sub(before) / 1024;
        eprintln!("{NAMES} logins with 2 MiB names grew the server by {grown_mib} MiB");
        assert!(
            grown_mib < 64,
            "{NAMES} logins with 2 MiB names grew the server by {grown_mib} MiB"
        );
        // The server still answers, and vera still logs in.
        assert_eq!(
            post_login(&client, &s, "vera", "viewer-password").await,
            303
        );
    });
}

/// How the server answered a login form it should refuse.
#[derive(Debug)]
enum Refusal {
    /// An HTTP reply with this status.
    Answer(u16),
    /// The connection was closed while the form was still being sent.
    CutWhileSending,
}

#[test]
fn a_password_spray_against_admin_from_one_address_does_not_lock_admin_out_elsewhere() {
    let s = start(|t| with_login_limits(t, 3, 10));
    // `init` made the well-known user `admin`.
    let admin_password = s.process.dashboard_password.clone();
    add_user(&s, "vera", "viewer", "viewer-password");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let sprayer = client_from(&s, [127, 0, 0, 2]);
        let mut statuses = Vec::new();
        for _ in 0..12 {
            statuses.push(post_login(&sprayer, &s, "admin", "wrong-password").await);
        }
        assert_eq!(statuses[..3], [401, 401, 401], "{statuses:?}");
        assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
        // The spraying address is slowed for admin, even with the right password ...
        assert_eq!(
            post_login(&sprayer, &s, "admin", &admin_password).await,
            429
        );
        // ... but not for the other users there, and admin logs in from another address.
        assert_eq!(
            post_login(&sprayer, &s, "vera", "viewer-password").await,
            303
        );
        let office = client_from(&s, [127, 0, 0, 3]);
        assert_eq!(post_login(&office, &s, "admin", &admin_password).await, 303);
    });
}

#[test]
fn behind_a_trusted_proxy_a_spray_from_one_client_locks_out_neither_admin_nor_the_proxy() {
    // The proxy is the test itself, on loopback.
    let s = start(|t| {
        with_login_limits(t, 3, 5).replace(
            "trusted_proxies = []",
            "trusted_proxies = [\"127.0.0.0/8\"]",
        )
    });
    let admin_password = s.process.dashboard_password.clone();
    add_user(&s, "vera", "viewer", "viewer-password");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let proxy = client_from(&s, [127, 0, 0, 1]);
        let sprayer = Some("203.0.113.7");
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(post_login_forwarded(&proxy, &s, sprayer, "admin", "wrong").await);
        }
        // More names from there, past the address's limit.
        for i in 0..4 {
            let name = format!("nobody{i}");
            statuses.push(post_login_forwarded(&proxy, &s, sprayer, &name, "wrong").await);
        }
        assert_eq!(
            statuses,
            [401, 401, 401, 429, 429, 429, 401, 401, 429, 429],
            "admin locked from 203.0.113.7 after 3, the address after 5"
        );
        // The sprayer cannot step around its lockout by forging a hop left of its own.
        let forged = Some("198.51.100.9, 203.0.113.7");
        let r = post_login_forwarded(&proxy, &s, forged, "vera", "viewer-password").await;
        assert_eq!(r, 429);
        // Everyone else behind the same proxy logs in, admin included.
        let office = Some("198.51.100.9");
        let r = post_login_forwarded(&proxy, &s, office, "admin", &admin_password).await;
        assert_eq!(r, 303);
        let home = Some("192.0.2.44");
        let r = post_login_forwarded(&proxy, &s, home, "vera", "viewer-password").await;
        assert_eq!(r, 303);
    });

    // Without the setting, X-Forwarded-For is ignored: every login through the proxy counts
    // against the proxy's address.
    let s = start(|t| with_login_limits(t, 3, 5));
    let admin_password = s.process.dashboard_password.clone();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let proxy = client_from(&s, [127, 0, 0, 1]);
        for _ in 0..3 {
            let r = post_login_forwarded(&proxy, &s, Some("203.0.113.7"), "admin", "wrong").await;
            assert_eq!(r, 401);
        }
        let office = Some("198.51.100.9");
        let r = post_login_forwarded(&proxy, &s, office, "admin", &admin_password).await;
        assert_eq!(
            r, 429,
            "X-Forwarded-For from an untrusted peer must not name the client"
        );
        // The admin logs in from a real other address.
        let other = client_from(&s, [127, 0, 0, 3]);
        assert_eq!(post_login(&other, &s, "admin", &admin_password).await, 303);
    });
}

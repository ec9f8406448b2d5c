//! Hostile peers against the real server process: who may read `/metrics`, spreadsheet
//! formulas in exports, login CSRF and guessing, cookies over TLS, stalled uploads, many
//! downloads of a large target at once, and revoking what was handed out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};

use serde_json::json;

mod common;
use common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn metrics_need_an_api_token_or_are_disabled() {
    let s = start(|t| t.to_owned());
    let viewer = token(&s, "viewer");
    let (status, v) = call(&s, "GET", "/metrics", None, None);
    assert_eq!(status, 401, "{v}");
    let (status, v) = call(&s, "GET", "/metrics", Some("pbtok_wrong"), None);
    assert_eq!(status, 401, "{v}");
    let (status, text) = call(&s, "GET", "/metrics", Some(&viewer), None);
    assert_eq!(status, 200);
    assert!(text.as_str().unwrap().contains("patchbay_hosts{"), "{text}");

    let off = start(|t| t.replace("access = \"token\"", "access = \"disabled\""));
    let (status, v) = call(&off, "GET", "/metrics", Some(&off.admin), None);
    assert_eq!(status, 404, "{v}");
    assert!(error_of(&v).contains("metrics.access"), "{v}");
}

#[test]
fn csv_cells_that_a_spreadsheet_would_evaluate_are_escaped() {
    let s = start(|t| t.to_owned());
    let hostile = [
        "=HYPERLINK(\"http://evil.example\")",
        "+1+cmd",
        "-2+3",
        "@SUM(A1)",
    ];
    for name in hostile {
        assert_eq!(register_host(&s, &s.registration_key, name).0, 201);
    }
    let (status, csv) = get_text(&s, "/api/v1/reports/compliance?format=csv", &s.admin);
    assert_eq!(status, 200, "{csv}");
    for line in csv.lines().skip(1) {
        for cell in line.split(',') {
            let bare = cell.trim_start_matches('"');
            assert!(
                !bare.starts_with(['=', '+', '-', '@']),
                "cell {cell:?} would be evaluated: {csv}"
            );
        }
    }
    assert!(
        csv.contains("\"'=HYPERLINK(\"\"http://evil.example\"\")\""),
        "{csv}"
    );
    assert!(csv.contains("\"'@SUM(A1)\""), "{csv}");
}

#[test]
fn login_needs_the_login_forms_csrf_token_and_cookies_are_secure_over_tls() {
    // `init` writes served_over = "https": the server speaks TLS.
    let s = start(|t| t.to_owned());
    add_user(&s, "vera", "viewer", "viewer-password");
    runtime().block_on(async {
        let client = s.no_redirect_client();
        let login = format!("{}/ui/login", s.url);
        // A cross-site form: no token, or a token without the cookie that goes with it.
        let forged = client
            .post(&login)
            .form(&[("user", "vera"), ("password", "viewer-password")])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403);
        let page = client.get(&login).send().await.unwrap();
        let login_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(login_cookie.contains("Secure"), "{login_cookie}");
        let (_, csrf) = login_page(&client, &s.url).await;
        let csrf = csrf.as_str();
        let without_cookie = client
            .post(&login)
            .form(&[
                ("user", "vera"),
                ("password", "viewer-password"),
                ("csrf", csrf),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(without_cookie.status(), 403);

        let ok = ui_login(&client, &s.url, "vera", "viewer-password").await;
        assert_eq!(ok.status(), 303);
        let session = ok.headers()["set-cookie"].to_str().unwrap();
        assert!(
            session.starts_with("pb_session=") && session.contains("Secure"),
            "{session}"
        );
    });
    // Over plain HTTP (`--insecure-http`, served_over = "http") the cookie cannot be
    // Secure: browsers would drop it.
    let plain =
        start_insecure_http(|t| t.replace("served_over = \"https\"", "served_over = \"http\""));
    add_user(&plain, "vera", "viewer", "viewer-password");
    runtime().block_on(async {
        let ok = ui_login(
            &plain.no_redirect_client(),
            &plain.url,
            "vera",
            "viewer-password",
        )
        .await;
        assert_eq!(ok.status(), 303);
        let session = ok.headers()["set-cookie"].to_str().unwrap();
        assert!(!session.contains("Secure"), "{session}");
    });
}

#[test]
fn guessing_passwords_is_locked_out_with_429() {
    let s = start(|t| {
        t.replace("login_failures_per_user = 5", "login_failures_per_user = 3")
            .replace(
                "login_failures_per_address = 50",
                "login_failures_per_address = 10",
            )
    });
    add_user(&s, "vera", "viewer", "viewer-password");
    add_user(&s, "olga", "operator", "operator-password");
    runtime().block_on(async {
        let client = s.no_redirect_client();
        for _ in 0..3 {
            let r = ui_login(&client, &s.url, "vera", "wrong-password").await;
            assert_eq!(r.status(), 401);
        }
        // Locked: even the right password is refused, and the reply says when to retry.
        let r = ui_login(&client, &s.url, "vera", "viewer-password").await;
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        // Another user from the same address is not locked (yet).
        let r = ui_login(&client, &s.url, "olga", "operator-password").await;
        assert_eq!(r.status(), 303);

        // A spray of wrong passwords in parallel, against made-up users: past the address's
        // limit every attempt is refused without hashing, and the repository keeps answering.
        let mut attempts = tokio::task::JoinSet::new();
        for i in 0..60 {
            let (client, url) = (client.clone(), s.url.clone());
            attempts.spawn(async move {
                ui_login(&client, &url, &format!("nobody{i}"), "wrong-password")
                    .await
                    .status()
                    .as_u16()
            });
        }
        let timestamp = client
            .get(format!("{}/tuf/metadata/timestamp.json", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(timestamp.status(), 200);
        let mut statuses = Vec::new();
        while let Some(status) = attempts.join_next().await {
            statuses.push(status.unwrap());
        }
        let refused = statuses.iter().filter(|s| **s == 429).count();
        assert!(
            statuses.iter().all(|s| *s == 401 || *s == 429),
            "{statuses:?}"
        );
        // Three failures were counted for the address before: seven more are hashed (and a
        // few more that were being hashed when the lockout began), the rest refused.
        assert!(refused >= 40, "{refused} of 60 refused: {statuses:?}");
    });
}

/// `kB` of one `/proc/<pid>/status` field.
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

/// Publishes level 1 with `padding` bytes more in its module; the signed target's sha256
/// and length.
fn publish_large(s: &Server, padding: usize) -> (String, u64) {
    let (status, v) = call(
        s,
        "POST",
        "/api/v1/bundles",
        Some(&s.admin),
        raw(bundle_bytes_padded(1, RELEASE, true, padding)),
    );
    assert_eq!(status, 201, "{v}");
    let target = &served_targets(s)[format!("bundles/{BUILD_ID}/1.pbb")];
    (
        target["hashes"]["sha256"].as_str().unwrap().to_owned(),
        target["length"].as_u64().unwrap(),
    )
}

#[test]
fn many_downloads_of_a_large_target_at_once_keep_memory_flat() {
    const SIZE: usize = 24 << 20;
    const DOWNLOADS: usize = 24;
    let s = start(|t| t.to_owned());
    let (sha, length) = publish_large(&s, SIZE);
    let pid = s.process.pid().expect("the server runs");
    // Peak memory from here on (the upload's own buffers are gone).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = proc_status_kb(pid, "VmRSS");
    let url = format!("{}/tuf/targets/{sha}.bundles/{BUILD_ID}/1.pbb", s.url);
    runtime().block_on(async {
        let client = s.client();
        let mut responses = Vec::new();
        for _ in 0..DOWNLOADS {
            responses.push(tokio::spawn(client.get(&url).send()));
        }
        // Every download has started and none has been read: a server that loads the whole
        // target per request holds DOWNLOADS copies now.
        let mut started = Vec::new();
        for r in responses {
            started.push(r.await.unwrap().unwrap());
        }
        let peak = proc_status_kb(pid, "VmHWM");
        let grown_mib = peak.saturating_sub(before) / 1024;
        eprintln!("{DOWNLOADS} downloads at once grew the server by {grown_mib} MiB");
        assert!(
            grown_mib < 96,
            "{DOWNLOADS} downloads of a {} MiB target grew the server by {grown_mib} MiB",
            SIZE >> 20
        );
        for r in started {
            assert_eq!(r.status(), 200);
            assert_eq!(r.bytes().await.unwrap().len() as u64, length);
        }
    });
}

/// The head of the server's answer on `stream` (up to the blank line).
fn response_head(stream: &mut impl Read) -> String {
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).expect("the server never answered");
        assert!(n > 0, "closed without an answer");
        reply.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn a_stalled_upload_is_cut_with_408() {
    let s = start(|t| t.replace("request_timeout_secs = 120", "request_timeout_secs = 2"));
    let mut stream = tls_connect(&s);
    write!(
        stream,
        "POST /api/v1/bundles HTTP/1.1\r\nHost: patchbay\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n0123456789",
        s.admin
    )
    .unwrap();
    let head = response_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    // The part received was on disk; it is gone with the request.
    assert_eq!(file_names(&s.data.join("uploads")), Vec::<String>::new());
}

/// The files in `dir` (none when it does not exist).
fn file_names(dir: &std::path::Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The answer's status line to a request written by hand (its headers, then `body`).
fn status_line_of_upload(s: &Server, head: &str, body: &[u8]) -> String {
    let mut stream = tls_connect(s);
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (and stop reading) before the whole body is in.
    let _ = stream.write_all(body).and_then(|()| stream.flush());
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.contains("max_bundle_bytes"), "{reply}");
    reply.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn an_upload_over_the_size_cap_is_refused_with_413_and_leaves_nothing() {
    let s = start(|t| t.replace("max_bundle_bytes = 67108864", "max_bundle_bytes = 200000"));
    let objects = file_names(&s.data.join("objects/sha256"));
    let bundle = bundle_bytes_padded(1, RELEASE, true, 400_000);
    // Declared larger than the cap: refused before a byte of the body is read.
    let declared = format!(
        "POST /api/v1/bundles HTTP/1.1\r\nHost: patchbay\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        s.admin,
        bundle.len()
    );
    assert!(status_line_of_upload(&s, &declared, &bundle).starts_with("HTTP/1.1 413"));
    // No length declared (chunked): cut once it grows past the cap.
    let chunked = format!(
        "POST /api/v1/bundles HTTP/1.1\r\nHost: patchbay\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        s.admin
    );
    let mut body = Vec::new();
    for chunk in bundle.chunks(32 << 10) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    assert!(status_line_of_upload(&s, &chunked, &body).starts_with("HTTP/1.1 413"));
    assert_eq!(file_names(&s.data.join("uploads")), Vec::<String>::new());
    assert_eq!(file_names(&s.data.join("objects/sha256")), objects);
    let targets = served_targets(&s);
    assert!(
        !targets
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("bundles/")),
        "{targets}"
    );
}

#[test]
fn a_large_upload_goes_to_disk_and_the_servers_memory_stays_flat() {
    const SIZE: usize = 48 << 20;
    let s = start(|t| t.to_owned());
    let pid = s.process.pid().expect("the server runs");
    let bundle = bundle_bytes_padded(1, RELEASE, true, SIZE);
    let before = proc_status_kb(pid, "VmRSS");
    let mut stream = tls_connect(&s);
    write!(
        stream,
        "POST /api/v1/bundles HTTP/1.1\r\nHost: patchbay\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        s.admin,
        bundle.len()
    )
    .unwrap();
    let (first, rest) = bundle.split_at(bundle.len() * 3 / 4);
    stream.write_all(first).unwrap();
    stream.flush().unwrap();
    // The server has taken most of what was sent (it is on disk in uploads/) while the upload
    // is still open: a server that buffers the body holds it all in memory now.
    let uploads = s.data.join("uploads");
    let on_disk = |dir: &std::path::Path| -> u64 {
        file_names(dir)
            .iter()
            .map(|name| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len()))
            .sum()
    };
    let mut waited = 0;
    while on_disk(&uploads) < (first.len() as u64).saturating_sub(8 << 20) {
        waited += 1;
        assert!(waited < 600, "the upload never reached uploads/ on disk");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let grown_mib = proc_status_kb(pid, "VmRSS").saturating_sub(before) / 1024;
    eprintln!(
        "{} MiB of a {} MiB upload received: the server grew by {grown_mib} MiB",
        first.len() >> 20,
        SIZE >> 20
    );
    assert!(
        grown_mib < 12,
        "receiving {} MiB of an upload grew the server by {grown_mib} MiB",
        first.len() >> 20
    );
    stream.write_all(rest).unwrap();
    stream.flush().unwrap();
    let head = response_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    assert_eq!(file_names(&uploads), Vec::<String>::new());
    let target = &served_targets(&s)[format!("bundles/{BUILD_ID}/1.pbb")];
    assert_eq!(target["length"].as_u64().unwrap(), bundle.len() as u64);
}

/// Status codes of trickled logins sent at once through a trusted proxy on 127.0.0.1, one
/// for each `X-Forwarded-For` client given: headers and one byte of a 100-byte body, then
/// nothing until the server answers.
fn trickled_logins_through_the_proxy(s: &Server, clients: &[&str]) -> Vec<(String, u16)> {
    let threads: Vec<_> = clients
        .iter()
        .map(|client| {
            let mut stream = tls_connect(s);
            let client = (*client).to_owned();
            std::thread::spawn(move || {
                write!(
                    stream,
                    "POST /ui/login HTTP/1.1\r\nHost: patchbay\r\nX-Forwarded-For: {client}\r\n\
                     Content-Type: application/x-www-form-urlencoded\r\n\
                     Content-Length: 100\r\n\r\nu"
                )
                .unwrap();
                stream.flush().unwrap();
                let head = response_head(&mut stream);
                let status = head.get(9..12).unwrap_or_default().parse().unwrap_or(0);
                (client, status)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn behind_a_trusted_proxy_each_client_has_its_own_share_of_anonymous_requests() {
    let s = start(|t| t.replace("trusted_proxies = []", "trusted_proxies = [\"127.0.0.1\"]"));
    // Nine slow logins from one client behind the proxy and one from another, all at once:
    // the first client's ninth is refused at once (429); the other client is not, and every
    // request held is cut for its rate (408), none served.
    let mut clients = vec!["198.51.100.7"; 9];
    clients.push("198.51.100.8");
    let statuses = trickled_logins_through_the_proxy(&s, &clients);
    let refused: Vec<&(String, u16)> = statuses.iter().filter(|(_, st)| *st == 429).collect();
    assert_eq!(
        refused,
        vec![&("198.51.100.7".to_owned(), 429)],
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|(_, st)| *st == 429 || *st == 408),
        "{statuses:?}"
    );
}

/// A TLS connection that asked for `/healthz` and kept the connection open; `None` when the
/// server closed it instead.
fn kept_open_connection(
    s: &Server,
) -> Option<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    let mut stream = tls_connect(s);
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: patchbay\r\n\r\n").ok()?;
    stream.flush().ok()?;
    let mut buffer = [0u8; 1024];
    match stream.read(&mut buffer) {
        Ok(n) if buffer.get(..n)?.starts_with(b"HTTP/1.1 200") => Some(stream),
        _ => None,
    }
}

#[test]
fn one_address_holds_at_most_its_share_of_connections() {
    let s = start(|t| {
        t.replace(
            "max_connections_per_address = 256",
            "max_connections_per_address = 4",
        )
    });
    let mut held: Vec<_> = (0..4)
        .map(|n| kept_open_connection(&s).unwrap_or_else(|| panic!("connection {n} refused")))
        .collect();
    assert!(
        kept_open_connection(&s).is_none(),
        "a fifth connection from the same address was served"
    );
    // A connection that closes gives its place back (once the server has seen it close).
    drop(held.pop());
    let mut attempts = 0;
    while kept_open_connection(&s).is_none() {
        attempts += 1;
        assert!(
            attempts < 100,
            "the closed connection's place never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The id (`GET /api/v1/tokens`) of the API token named `name`.
fn token_id(s: &Server, name: &str) -> String {
    let (_, tokens) = call(s, "GET", "/api/v1/tokens", Some(&s.admin), None);
    tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn hosts_api_tokens_and_registration_keys_are_revoked() {
    let s = start(|t| t.to_owned());
    let admin = Some(s.admin.as_str());
    let operator = token(&s, "operator");

    // A registration key: listed by id (its SHA-256), revoked, then useless.
    let (status, v) = call(
        &s,
        "POST",
        "/api/v1/registration-keys",
        admin,
        Some(Body::Json(json!({"channel": "production"}))),
    );
    assert_eq!(status, 201, "{v}");
    let key = v["key"].as_str().unwrap().to_owned();
    let (_, keys) = call(&s, "GET", "/api/v1/registration-keys", admin, None);
    let keys = keys["registration_keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        !serde_json::to_string(&keys).unwrap().contains(&key),
        "{:?} unexpectedly contains {:?}",
        serde_json::to_string(&keys).unwrap(),
        &key
    );
    let id = keys
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .find(|id| *id == patchbay_server::service::secret_hash(&secret_of(&key)))
        .unwrap();
    let path = format!("/api/v1/registration-keys/{id}");
    assert_eq!(call(&s, "DELETE", &path, Some(&operator), None).0, 403);
    let (status, v) = call(&s, "DELETE", &path, admin, None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(call(&s, "DELETE", &path, admin, None).0, 404);
    assert_eq!(register_host(&s, &key, "late").0, 401);

    // A host: its token stops working at once.
    let (status, host) = register_host(&s, &s.registration_key, "web-1");
    assert_eq!(status, 201);
    let host_token = host["host_token"].as_str().unwrap().to_owned();
    let checkin = json!({"kernel_release": RELEASE, "build_id": BUILD_ID, "active_level": null,
                         "state": "unpatched", "last_error": null, "agent_version": "0.1.0"});
    let check_in = || {
        call(
            &s,
            "POST",
            "/api/v1/checkin",
            Some(&host_token),
            Some(Body::Json(checkin.clone())),
        )
        .0
    };
    assert_eq!(check_in(), 200);
    let path = format!("/api/v1/hosts/{}", host["host_id"].as_str().unwrap());
    let (status, v) = call(&s, "DELETE", &path, admin, None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(check_in(), 401);
    let (_, hosts) = call(&s, "GET", "/api/v1/hosts", admin, None);
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 0);

    // An API token.
    let id = token_id(&s, "operator");
    assert_eq!(
        call(&s, "GET", "/api/v1/kernels", Some(&operator), None).0,
        200
    );
    let (status, v) = call(&s, "DELETE", &format!("/api/v1/tokens/{id}"), admin, None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        call(&s, "GET", "/api/v1/kernels", Some(&operator), None).0,
        401
    );

    let (_, audit) = call(&s, "GET", "/api/v1/audit", admin, None);
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["registration-key-revoke", "host-revoke", "token-revoke"] {
        assert!(actions.contains(&action), "{action}: {actions:?}");
    }
}

#[test]
fn the_dashboard_revokes_tokens_keys_and_hosts_for_admins_only() {
    let s = start(|t| t.to_owned());
    add_user(&s, "ada", "admin", "admin-password");
    add_user(&s, "vera", "viewer", "viewer-password");
    let operator = token(&s, "operator");
    let (status, host) = register_host(&s, &s.registration_key, "web-1");
    assert_eq!(status, 201);
    let host_id = host["host_id"].as_str().unwrap().to_owned();
    let operator_id = token_id(&s, "operator");
    let page_text = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    };
    runtime().block_on(async {
        let client = s.no_redirect_client();
        let viewer = ui_session(&client, &s.url, "vera", "viewer-password").await;
        let get = |path: String, cookie: String| {
            let client = client.clone();
            let url = format!("{}{path}", s.url);
            async move {
                client
                    .get(url)
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap()
            }
        };
        assert_eq!(get("/ui/access".into(), viewer.clone()).await.status(), 403);

        let admin = ui_session(&client, &s.url, "ada", "admin-password").await;
        let (status, access) = page_text(get("/ui/access".into(), admin.clone()).await).await;
        assert_eq!(status, 200);
        assert!(
            access.contains(&format!("/ui/revoke?kind=token&amp;id={operator_id}")),
            "{access}"
        );

        for (kind, id) in [("token", operator_id.as_str()), ("host", host_id.as_str())] {
            let (status, confirm) =
                page_text(get(format!("/ui/revoke?kind={kind}&id={id}"), admin.clone()).await)
                    .await;
            assert_eq!(status, 200, "{confirm}");
            let csrf = csrf_in(&confirm);
            let post = |form: Vec<(&'static str, String)>, cookie: String| {
                let client = client.clone();
                let url = format!("{}/ui/revoke", s.url);
                async move {
                    client
                        .post(url)
                        .header("cookie", cookie)
                        .form(&form)
                        .send()
                        .await
                        .unwrap()
                        .status()
                }
            };
            let form = vec![("kind", kind.to_owned()), ("id", id.to_owned())];
            // Without the session's token, and from a viewer: refused, nothing revoked.
            assert_eq!(post(form.clone(), admin.clone()).await, 403);
            let mut with_csrf = form.clone();
            with_csrf.push(("csrf", csrf.clone()));
            assert_eq!(post(with_csrf.clone(), viewer.clone()).await, 403);
            assert_eq!(post(with_csrf, admin.clone()).await, 303);
        }
    });
    assert_eq!(
        call(&s, "GET", "/api/v1/kernels", Some(&operator), None).0,
        401
    );
    assert_eq!(
        call(
            &s,
            "GET",
            &format!("/api/v1/hosts/{host_id}/exposure"),
            Some(&s.admin),
            None
        )
        .0,
        404
    );
    let (_, audit) = call(&s, "GET", "/api/v1/audit", Some(&s.admin), None);
    let revocations: Vec<(&str, &str)> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .filter(|(_, action)| action.ends_with("-revoke"))
        .collect();
    assert_eq!(
        revocations,
        [("user:ada", "host-revoke"), ("user:ada", "token-revoke")]
    );
}

/// A TCP connection to the server with a 60 s read timeout: only the test's safety net, a
/// server that never closes fails the test with `WouldBlock`.
fn tcp_connect(s: &Server) -> std::net::TcpStream {
    let address = s.url.strip_prefix("https://").unwrap();
    let tcp = std::net::TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    tcp
}

/// A TLS connection to the server (its certificate pinned) for requests written by hand; the
/// handshake runs with the first write.
fn tls_connect(s: &Server) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let config = patchbay_updates::tls::pinned_client_config(&s.process.cert_sha256).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(connection, tcp_connect(s))
}

/// The secret of a registration key as the server printed it (what it stores the hash of).
fn secret_of(key: &str) -> String {
    key.parse::<patchbay_core::registration::RegistrationKey>()
        .unwrap()
        .secret()
        .expose()
        .to_owned()
}

/// Reads until the server closes the connection (over TLS, with or without close_notify); the
/// bytes read.
fn read_until_closed(stream: &mut impl Read) -> Result<usize, std::io::Error> {
    let mut total = 0;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Ok(total)
            }
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn quiet_connections_are_closed_half_a_request_or_an_unread_download() {
    const SIZE: usize = 24 << 20;
    let s = start(|t| {
        t.replace("idle_connection_secs = 120", "idle_connection_secs = 2")
            .replace("header_timeout_secs = 20", "header_timeout_secs = 2")
    });

    // A TLS handshake that never starts, then one cut after the first byte.
    let mut silent = tcp_connect(&s);
    let answered = read_until_closed(&mut silent).expect("the server kept a silent connection");
    assert_eq!(answered, 0, "nothing is answered before a handshake");
    let mut stalled = tcp_connect(&s);
    stalled.write_all(&[0x16]).unwrap();
    let answered = read_until_closed(&mut stalled).expect("the server kept a stalled handshake");
    assert_eq!(
        answered, 0,
        "nothing is answered to a handshake's first byte"
    );

    // Half a request: the headers never end. It is answered 408 and closed.
    let mut half = tls_connect(&s);
    write!(half, "GET /healthz HTTP/1.1\r\nHost: patchbay\r\n").unwrap();
    half.flush().unwrap();
    let mut answer = Vec::new();
    let _ = half.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("limits.header_timeout_secs"), "{answer:?}");

    // Headers sent a byte at a time, each well within any idle time: the header clock is not
    // reset by a byte, so the request is cut all the same.
    let mut trickled = tls_connect(&s);
    let mut cut = false;
    for byte in b"GET /healthz HTTP/1.1\r\nHost: patchbay\r\nX-Padding: aaaaaaaaaaaa\r\n\r\n" {
        if trickled
            .write_all(&[*byte])
            .and_then(|()| trickled.flush())
            .is_err()
        {
            cut = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let mut answer = Vec::new();
    let _ = trickled.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        cut || answer.starts_with("HTTP/1.1 408"),
        "headers trickled over ~16 s were served: {answer:?}"
    );

    // A download its client stops reading: the server gives up on it instead of holding the
    // connection (and its buffers) for ever.
    let (sha, _) = publish_large(&s, SIZE);
    let mut download = tls_connect(&s);
    write!(
        download,
        "GET /tuf/targets/{sha}.bundles/{BUILD_ID}/1.pbb HTTP/1.1\r\nHost: patchbay\r\n\r\n"
    )
    .unwrap();
    download.flush().unwrap();
    // The client reads nothing for longer than the idle time (the socket buffers hold only
    // a small part of the 24 MiB), then everything it can.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let received = read_until_closed(&mut download).expect("the server kept a stalled download");
    assert!(
        received < SIZE,
        "the whole target ({received} bytes) went to a client that stopped reading"
    );
    // Clients that do read are served as before.
    assert_eq!(call(&s, "GET", "/healthz", None, None).0, 200);
}

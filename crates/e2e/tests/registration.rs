//! Registration that cannot be intercepted: `patchbay register` (the real agent binary) and the
//! real server binary, with a man in the middle of our own on loopback between them. The
//! attacker is a whole other Patchbay server (its own self-signed certificate, its own valid
//! root.json): its TLS proxy decrypts what reaches it, forwards it to the real server and
//! answers root.json with its own. Registration must refuse before the key's secret is sent,
//! and the same registration straight to the server must succeed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use patchbay_core::registration::{RegistrationKey, RegistrationPins};
use patchbay_e2e::{agent_binary, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The attacker's TLS proxy: terminates TLS with `cert`/`key`, records every decrypted byte the
/// client sends, answers `root.json` requests with `fake_root`, forwards the rest upstream.
struct Interceptor {
    url: String,
    decrypted: Arc<Mutex<Vec<u8>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Interceptor {
    fn start(cert: &Path, key: &Path, fake_root: Vec<u8>, upstream: &ServerProcess) -> Self {
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let decrypted = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&decrypted);
        let (upstream_url, client) = (upstream.url.clone(), upstream.client());
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, record, fake_root, upstream_url, client) = (
                    acceptor.clone(),
                    Arc::clone(&record),
                    fake_root.clone(),
                    upstream_url.clone(),
                    client.clone(),
                );
                tokio::spawn(async move {
                    // A client that refuses our certificate ends here: nothing decrypted.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    while let Some((head, body)) = read_request(&mut tls, &record).await {
                        let mut words = head.split_whitespace();
                        let (method, path) = (words.next().unwrap(), words.next().unwrap());
                        let (status, reply) = if path.ends_with("root.json") {
                            (200, fake_root.clone())
                        } else {
                            let mut request = client
                                .request(method.parse().unwrap(), format!("{upstream_url}{path}"));
                            for line in head.lines().skip(1) {
                                if let Some((name, value)) = line.split_once(':') {
                                    let name = name.trim().to_ascii_lowercase();
                                    if name == "authorization" || name == "content-type" {
                                        request = request.header(name, value.trim());
                                    }
                                }
                            }
                            let response = request.body(body).send().await.unwrap();
                            let status = response.status().as_u16();
                            (status, response.bytes().await.unwrap().to_vec())
                        };
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n",
                            reply.len()
                        );
                        if tls.write_all(head.as_bytes()).await.is_err()
                            || tls.write_all(&reply).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Interceptor {
            url,
            decrypted,
            _runtime: runtime,
        }
    }

    fn decrypted(&self) -> Vec<u8> {
        self.decrypted.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 request (head, body) from `stream`, every byte recorded; `None` at the end.
async fn read_request(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    record: &Mutex<Vec<u8>>,
) -> Option<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    while got.len() < head_end + length {
        let n = stream.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        got.extend_from_slice(&buf[..n]);
    }
    Some((head, got[head_end..].to_vec()))
}

/// `patchbay register` on this machine's kernel identity, with its own state dir.
fn register(state: &Path, server: &str, key: &str, extra: &[&str]) -> Output {
    Command::new(agent_binary().unwrap())
        .arg("--state-dir")
        .arg(state)
        .args(["register", "--server", server, "--key", key])
        .args(extra)
        .output()
        .unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn private_dir(parent: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
#[ignore = "builds the release server and the static agent"]
fn a_man_in_the_middle_at_registration_gets_no_secret_and_the_real_server_registers() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server")).unwrap();
    // The attacker: a Patchbay server of its own, so its root.json is valid-looking.
    let attacker = ServerProcess::init(&server.bin, &dir.path().join("attacker")).unwrap();
    let attacker_cert = attacker.data_dir.join("tls/server.crt");
    let fake_root = std::fs::read(attacker.data_dir.join("tuf/metadata/root.json")).unwrap();
    let mitm = Interceptor::start(
        &attacker_cert,
        &attacker.data_dir.join("tls/server.key"),
        fake_root,
        &server,
    );
    let key: RegistrationKey = server.registration_key.parse().unwrap();
    let secret = key.secret().expose().as_bytes().to_vec();
    let secret_hex = secret[6..].to_vec();

    // 1. The key pins the server's certificate: the handshake with the attacker fails.
    let out = register(
        &private_dir(dir.path(), "host-1"),
        &mitm.url,
        &server.registration_key,
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "refused: {stderr}");
    assert!(
        stderr.contains("not the pinned one")
            && stderr.contains(server.cert_sha256.as_str())
            && stderr.contains(attacker.cert_sha256.as_str()),
        "names the expected and the seen fingerprint: {stderr}"
    );
    assert!(
        mitm.decrypted().is_empty(),
        "the attacker decrypted something"
    );

    // 2. A key without the certificate's fingerprint (a CA-checked server) and an attacker
    //    whose certificate the host's CA file trusts: the root swap is caught before the
    //    secret is sent.
    let root_only = RegistrationKey::Pinned {
        secret: key.secret().clone(),
        pins: RegistrationPins {
            root_sha256: key.pins().unwrap().root_sha256.clone(),
            cert_sha256: None,
        },
    }
    .to_string();
    let out = register(
        &private_dir(dir.path(), "host-2"),
        &mitm.url,
        &root_only,
        &["--ca-file", attacker_cert.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "refused: {stderr}");
    assert!(stderr.contains("root.json is not the one"), "{stderr}");
    let decrypted = mitm.decrypted();
    assert!(
        contains(&decrypted, b"GET /tuf/metadata/root.json"),
        "the attacker did decrypt the connection"
    );
    assert!(
        !contains(&decrypted, &secret_hex) && !contains(&decrypted, b"/api/v1/register"),
        "the registration key's secret reached the attacker"
    );

    // 3. The same key straight to the real server: registered, both pins kept.
    let state = private_dir(dir.path(), "host-3");
    let out = register(&state, &server.url, &server.registration_key, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("server.json")).unwrap()).unwrap();
    assert_eq!(link["server_cert_sha256"], server.cert_sha256.as_str());
    assert_eq!(
        std::fs::read(state.join("tuf/root.json")).unwrap(),
        std::fs::read(server.data_dir.join("tuf/metadata/root.json")).unwrap()
    );
    let hosts = server.admin("GET", "hosts", None).unwrap();
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 1, "{hosts}");
}

#[test]
#[ignore = "builds the release server"]
fn serve_refuses_to_start_without_a_certificate_and_insecure_http_works_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::init(
        &patchbay_e2e::server_binary().unwrap(),
        &dir.path().join("server"),
    )
    .unwrap();
    let cert = server.data_dir.join("tls/server.crt");
    let moved = dir.path().join("server.crt");
    std::fs::rename(&cert, &moved).unwrap();
    let out = Command::new(&server.bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served without a certificate");
    assert!(
        stderr.contains("--insecure-http") && stderr.contains("--tls-cert"),
        "says what to do: {stderr}"
    );
    // Nor is a registration key made that cannot name the certificate hosts must pin; none is
    // stored either (checked below: init's key stays the only one).
    let out = Command::new(&server.bin)
        .args(["registration-key", "create", "--data"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a key without the certificate's fingerprint: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Asked for plain HTTP: it serves, and the API answers.
    server.serve_insecure_http().unwrap();
    assert!(server.url.starts_with("http://"), "{}", server.url);
    let hosts = server.admin("GET", "hosts", None).unwrap();
    assert!(hosts["hosts"].as_array().unwrap().is_empty(), "{hosts}");
    let keys = server.admin("GET", "registration-keys", None).unwrap();
    assert_eq!(
        keys["registration_keys"].as_array().unwrap().len(),
        1,
        "{keys}"
    );
    server.stop();
    std::fs::rename(&moved, &cert).unwrap();
    server.insecure_http = false;
    server.serve().unwrap();
    assert!(server.url.starts_with("https://"), "{}", server.url);
    server.admin("GET", "hosts", None).unwrap();
}

/// Runs `openssl` with `args` in `dir`; fails the test unless it succeeds.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A private CA of its own in `dir`: `<name>.pem` (the certificate hosts are given) and
/// `<name>.key`.
fn private_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    dir.join(format!("{name}.pem"))
}

#[test]
#[ignore = "builds the release server and the static agent"]
fn a_server_certificate_from_a_private_ca_registers_with_the_configs_server_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let ca = private_ca(work, "site-ca");
    let other_ca = private_ca(work, "other-ca");
    // The server's certificate for 127.0.0.1, signed by the site's CA.
    let tls = work.join("data/tls");
    std::fs::create_dir_all(&tls).unwrap();
    openssl(
        work,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=patchbay",
            "-keyout",
            "data/tls/server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(work.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        work,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "site-ca.pem",
            "-CAkey",
            "site-ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "san.ext",
            "-out",
            "data/tls/server.crt",
        ],
    );
    let bin = patchbay_e2e::server_binary().unwrap();
    let init = Command::new(&bin)
        .args(["init", "--data"])
        .arg(work.join("data"))
        .arg("--tls-cert")
        .arg(tls.join("server.crt"))
        .arg("--tls-key")
        .arg(tls.join("server.key"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&init.stdout).into_owned();
    assert!(init.status.success(), "{init:?}");
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .trim()
            .to_owned()
    };
    let key = field("registration-key:");
    assert!(
        !key.contains("cert-sha256"),
        "a CA-checked server's key pins no certificate"
    );
    let mut server =
        ServerProcess::attach(&bin, &work.join("data"), field("admin-token:"), key.clone())
            .unwrap();
    server.serve().unwrap();

    // `patchbay register` with agent.toml saying server_ca_file = <ca> (or not at all).
    let register_with = |host: &str, ca_file: Option<&Path>| {
        let config = work.join(format!("{host}.toml"));
        let line = ca_file.map_or(String::new(), |ca| {
            format!("server_ca_file = \"{}\"\n", ca.display())
        });
        std::fs::write(&config, line).unwrap();
        Command::new(agent_binary().unwrap())
            .arg("--state-dir")
            .arg(private_dir(work, host))
            .arg("--config")
            .arg(&config)
            .args(["register", "--server", &server.url, "--key", &key])
            .output()
            .unwrap()
    };
    for (host, ca_file) in [("no-ca", None), ("other-ca", Some(other_ca.as_path()))] {
        let out = register_with(host, ca_file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{host}: {stderr}");
        assert!(
            stderr.contains("certificate was refused"),
            "{host}: {stderr}"
        );
    }
    let hosts = server.admin("GET", "hosts", None).unwrap();
    assert!(hosts["hosts"].as_array().unwrap().is_empty(), "{hosts}");
    let out = register_with("site-ca", Some(&ca));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts = server.admin("GET", "hosts", None).unwrap();
    assert_eq!(hosts["hosts"].as_array().unwrap().len(), 1, "{hosts}");
}

//! The server test harness: a real `patchbay-server` process (init, then serve on loopback),
//! requests that fail the test on any 5xx, and bundles with small real ELF modules.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use patchbay_core::manifest::{BuilderInfo, KernelTarget, ModuleInfo};
use patchbay_core::{Manifest, ObjectName, ReplacedFunction, Sha256, MANIFEST_FORMAT};
use serde_json::Value;

pub const BUILD_ID: &str = "0123456789abcdef0123456789abcdef01234567";
pub const RELEASE: &str = "6.1.0-56-amd64";

pub struct Server {
    pub child: Child,
    pub url: String,
    pub admin: String,
    pub registration_key: String,
    pub _dir: tempfile::TempDir,
    pub data: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_patchbay-server")
}

pub fn serve(data: &Path) -> (Child, String) {
    serve_with_env(data, &[])
}

/// `serve` with extra environment variables (e.g. libfaketime's, to move its clock).
pub fn serve_with_env(data: &Path, env: &[(&str, &std::ffi::OsStr)]) -> (Child, String) {
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

pub fn start(edit_config: impl FnOnce(&str) -> String) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let init = Command::new(bin())
        .args(["init", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let stdout = String::from_utf8(init.stdout).unwrap();
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let config = data.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, edit_config(&text)).unwrap();
    let (child, url) = serve(&data);
    Server {
        child,
        url,
        admin: field("admin-token:"),
        registration_key: field("registration-key:"),
        _dir: dir,
        data,
    }
}

impl Server {
    /// Stops the server process and starts it again on the same data (new port).
    pub fn restart_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, url) = serve_with_env(&self.data, env);
        self.child = child;
        self.url = url;
    }
}

/// One request; returns (status, JSON body). Fails the test on a 5xx or a non-JSON error.
pub fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Body>,
) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut request = client.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", server.url),
        );
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request = match body {
            Some(Body::Json(v)) => request.json(&v),
            Some(Body::Raw(bytes, kind)) => request.header("content-type", kind).body(bytes),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(status < 500, "{method} {path} -> {status}: {text}");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if status >= 400 {
            assert!(
                value.get("error").and_then(Value::as_str).is_some(),
                "{method} {path} -> {status} without a JSON error: {text}"
            );
        }
        (status, value)
    })
}

pub enum Body {
    Json(Value),
    Raw(Vec<u8>, &'static str),
}

pub fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_owned()
}

/// A small ELF object with a livepatch's `.modinfo`, like the builder's modules.
pub fn module(name: &str, release: &str, livepatch: bool) -> Vec<u8> {
    use object::write::Object;
    use object::{Architecture, BinaryFormat, Endianness, SectionKind};
    let mut elf = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let this = elf.add_section(
        Vec::new(),
        b".gnu.linkonce.this_module".to_vec(),
        SectionKind::Data,
    );
    elf.append_section_data(this, &[0u8; 64], 8);
    let info = elf.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::ReadOnlyData);
    let lp = if livepatch { "livepatch=Y\0" } else { "" };
    let text = format!(
        "{lp}license=GPL\0vermagic={release} SMP preempt mod_unload modversions \0name={name}\0"
    );
    elf.append_section_data(info, text.as_bytes(), 1);
    elf.write().unwrap()
}

pub fn bundle_bytes(level: u32, release_in_module: &str, livepatch: bool) -> Vec<u8> {
    let name = format!("pb_{}_l{level}", &BUILD_ID[..12]);
    let module = module(&name, release_in_module, livepatch);
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        kernel: KernelTarget {
            release: RELEASE.parse().unwrap(),
            build_id: BUILD_ID.parse().unwrap(),
            upstream_version: "6.1.192".into(),
            package_version: None,
        },
        level: level.try_into().unwrap(),
        module: ModuleInfo {
            name: name.parse().unwrap(),
            sha256: Sha256::of(&module),
            size: module.len() as u64,
        },
        replaced_functions: vec![ReplacedFunction {
            object: ObjectName::vmlinux(),
            function: "cmdline_proc_show".into(),
            sympos: 0,
            replacement: "pb_cmdline_proc_show".into(),
        }],
        fixes: vec!["CVE-2024-1086".parse().unwrap()],
        builder: BuilderInfo {
            name: "test".into(),
            version: "0".into(),
        },
        created: "2026-11-22T00:00:00Z".into(),
    };
    let mut out = Vec::new();
    {
        let mut tar = tar::Builder::new(&mut out);
        for (entry, data) in [
            ("manifest.json", manifest.to_json().unwrap()),
            ("module.ko", module),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, entry, data.as_slice()).unwrap();
        }
        tar.finish().unwrap();
    }
    out
}

pub fn raw(bytes: Vec<u8>) -> Option<Body> {
    Some(Body::Raw(bytes, "application/octet-stream"))
}

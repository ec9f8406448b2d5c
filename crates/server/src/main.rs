//! `patchbay-server`: init, serve, tokens, air-gapped export/import, offline targets signing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use patchbay_server::auth::Role;
use patchbay_server::config::{HostsCheckCertificate, ServedProtocol, ServerConfig};
use patchbay_server::tls::CertificateFiles;
use patchbay_server::Service;

const DEFAULT_DATA: &str = "/var/lib/patchbay-server";

#[derive(Debug, Parser)]
#[command(name = "patchbay-server", version, about = "Patchbay patch server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory: config, database, TUF keys, production channel, admin token.
    Init {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        /// Write the root keys here instead of the data dir, to move them offline.
        #[arg(long, value_name = "DIR")]
        offline_root: Option<PathBuf>,
        /// Root keys to create and how many must sign a new root.
        #[arg(long, default_value_t = 1)]
        root_keys: u32,
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// The TLS certificate chain (PEM) to serve with, instead of a self-signed one made
        /// here (`<data>/tls/server.crt`).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Another DNS name or IP address for the self-signed certificate (repeat), beside
        /// localhost, 127.0.0.1, ::1 and this machine's host name.
        #[arg(long, value_name = "NAME", conflicts_with = "tls_cert")]
        tls_san: Vec<String>,
        /// How hosts check the certificate: pin (registration keys carry its SHA-256; the
        /// default for a self-signed one) or ca (the default with --tls-cert).
        #[arg(long, value_name = "pin|ca")]
        hosts_check: Option<patchbay_server::config::HostsCheckCertificate>,
    },
    /// Serve the API and the TUF repository.
    Serve {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        /// Address to listen on (default: `listen` in config.toml).
        #[arg(long)]
        listen: Option<String>,
        /// The TLS certificate chain (PEM) instead of config.toml's `tls.certificate`.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP: admin tokens, host tokens and dashboard passwords cross the network
        /// in clear. Only for a test, or behind a TLS proxy on this machine.
        #[arg(long, conflicts_with = "tls_cert")]
        insecure_http: bool,
    },
    /// TLS certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Registration keys.
    RegistrationKey {
        #[command(subcommand)]
        command: RegistrationKeyCommand,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// CVE intelligence: ingest records, evaluate a kernel version.
    Cve {
        #[command(subcommand)]
        command: CveCommand,
    },
    /// Dashboard users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Write a signed archive (TUF metadata and targets) for an air-gapped site.
    Export {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Serve an archive made by `export` from this (inner) server; verified like an agent would.
    Import {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        archive: PathBuf,
        /// The outer server's root.json to trust (default: the one already trusted, or, on the
        /// first import, the archive's own, printed with its key ids).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Offline targets key, step 1 (on the server): write the next unsigned targets role.
    ExportUnsigned {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        /// The unsigned role; the channel documents it and the last signed role list are
        /// written beside it, into <output>.documents/ (sign-targets shows them).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Offline targets key, step 2 (on the offline machine): show every target the unsigned
    /// role adds, changes or removes since the last signed role (kernel, level, CVEs, size,
    /// hash) and what each changed channel document serves, kernel by kernel, ask, then sign.
    /// Removals (a kernel left out of a channel, a lower level too) are refused without
    /// --allow-removals; without a terminal nothing is signed without --yes.
    SignTargets {
        /// The targets key (Ed25519 PKCS#8).
        #[arg(long)]
        key: PathBuf,
        /// The repository's root.json (keep your own copy on the offline machine).
        #[arg(long)]
        root: PathBuf,
        /// The last signed targets role, the version just below the unsigned one: your
        /// previous sign-targets output, or the server's tuf/metadata/<N>.targets.json
        /// (verified against --root).
        #[arg(long, value_name = "FILE")]
        previous: PathBuf,
        /// Sign without asking (for scripts); the changes are still printed.
        #[arg(long)]
        yes: bool,
        /// Sign a role that removes targets the last signed role lists, or kernels from a
        /// channel, or lowers a channel's level.
        #[arg(long)]
        allow_removals: bool,
        /// The channel documents export-unsigned wrote beside the role (default:
        /// <unsigned>.documents): every channel the role adds or changes is shown from them.
        #[arg(long, value_name = "DIR")]
        documents: Option<PathBuf>,
        /// The unsigned targets role (export-unsigned's output).
        unsigned: PathBuf,
        /// Where to write the signed role (for import-signed, and as the next --previous).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Offline targets key, step 3 (on the server): install the signed targets role.
    ImportSigned {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        signed: PathBuf,
    },
    /// The root of trust: sign a new root version (fresh expiry) or rotate an online key.
    Root {
        #[command(subcommand)]
        command: RootCommand,
    },
    /// Checks the data directory: when each signed role expires and whether this server can
    /// renew it, and the CVE data (there is some, not older than cve.max_age_days, covering
    /// the series the hosts run); exits 1 when something needs the operator.
    Doctor {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Make a self-signed certificate where config.toml's `[tls]` names it (for a data dir
    /// from before TLS; never replaces one), and print its SHA-256.
    Generate {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        /// Another DNS name or IP address (repeat), beside localhost, 127.0.0.1, ::1 and this
        /// machine's host name.
        #[arg(long, value_name = "NAME")]
        tls_san: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum RegistrationKeyCommand {
    /// Make a registration key for a channel (printed once, whole: with the fingerprints
    /// hosts check before they send it).
    Create {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        #[arg(long, default_value = "production")]
        channel: String,
    },
}

#[derive(Debug, Subcommand)]
enum RootCommand {
    /// Sign root version N+1 with the same keys and a fresh expiry (hosts pick it up at their
    /// next update). Needs the threshold of root keys: those in the data dir plus --root-key.
    Resign {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        /// An offline root key file (repeat for a threshold above one).
        #[arg(long = "root-key", value_name = "FILE")]
        root_keys: Vec<PathBuf>,
    },
    /// Replace the key of an online role (targets, snapshot or timestamp) with a new one,
    /// announced in a new root version signed with the root keys. With --role root: new root
    /// keys, written to --new-root-key-out (take them offline), and root version N+1 signed by
    /// the old root keys and the new ones.
    Rotate {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        /// The role whose key is replaced.
        #[arg(long)]
        role: patchbay_server::tuf::RoleName,
        /// An offline (old) root key file (repeat for a threshold above one).
        #[arg(long = "root-key", value_name = "FILE")]
        root_keys: Vec<PathBuf>,
        /// --role root: where to write a new root key (repeat once per new key); never
        /// overwritten. Keep it off this machine: serving never needs it.
        #[arg(long, value_name = "FILE")]
        new_root_key_out: Vec<PathBuf>,
        /// --role root: how many new root keys (default: one per --new-root-key-out).
        #[arg(long = "root-keys", value_name = "N")]
        new_root_keys: Option<usize>,
        /// --role root: how many of the new root keys must sign a new root.
        #[arg(long, value_name = "M", default_value_t = 1)]
        root_threshold: u64,
    },
}

#[derive(Debug, Subcommand)]
enum CveCommand {
    /// Ingest a checkout of the kernel CNA's vulns repository (or, with --snapshot, a snapshot
    /// directory; with --bundled, the snapshot compiled into this binary, which `init`
    /// installs) into the server's CVE database: the ranges of every supported stable series
    /// (6.1, 6.12).
    Sync {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        /// The vulns checkout (git.kernel.org/pub/scm/linux/security/vulns.git).
        #[arg(required_unless_present_any = ["snapshot", "bundled"])]
        path: Option<PathBuf>,
        /// A CISA KEV feed (known_exploited_vulnerabilities.json) to mark exploited CVEs.
        #[arg(long)]
        kev: Option<PathBuf>,
        /// Load a snapshot directory in Patchbay's bundled format instead.
        #[arg(long, value_name = "DIR", conflicts_with = "path")]
        snapshot: Option<PathBuf>,
        /// Load the snapshot compiled into this binary (its date is the newest CVE in it).
        #[arg(long, conflicts_with_all = ["path", "snapshot"])]
        bundled: bool,
    },
    /// Exposure of an upstream kernel version (e.g. 6.1.192, 6.12.95); a series without CVE
    /// data is an error, a release newer than the data carries a notice.
    Exposure {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        version: String,
        /// Evaluate as of this day (YYYY-MM-DD); default today.
        #[arg(long)]
        at: Option<String>,
        /// The counts as JSON (keys version, cves, high, high_overdue, kev; series, data_state,
        /// data_through, notice: how far the CVE data reaches).
        #[arg(long)]
        json: bool,
        /// Days a CVE with CVSS >= 7 may stay open.
        #[arg(long, default_value_t = 30)]
        window_days: i64,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a dashboard user; the password is read from PATCHBAY_PASSWORD or one line of stdin.
    Add {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// List the dashboard users with their role and whether they may log in.
    List {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
    },
    /// Delete a dashboard user; their sessions end at once. The last enabled admin is kept.
    Delete {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Refuse a user's logins (kept for `enable`); their sessions end at once. The last
    /// enabled admin is kept.
    Disable {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Let a disabled user log in again.
    Enable {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Set a user's password (read from PATCHBAY_PASSWORD or one line of stdin); their
    /// sessions end at once.
    Passwd {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a new API token (printed once).
    Create {
        #[arg(long, default_value = DEFAULT_DATA, env = "PATCHBAY_SERVER_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
        /// viewer (read), operator (publish, channels) or admin (keys, tokens, users).
        #[arg(long, default_value = "admin")]
        role: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("patchbay-server: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("patchbay-server: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            data,
            offline_root,
            root_keys,
            root_threshold,
            tls_cert,
            tls_key,
            tls_san,
            hosts_check,
        } => {
            let given = CertificateFiles::given(tls_cert, tls_key);
            let tls = InitTls {
                given,
                names: tls_san,
                hosts_check,
            };
            init(
                &data,
                offline_root.as_deref(),
                root_keys,
                root_threshold,
                tls,
            )
            .await
        }
        Command::Serve {
            data,
            listen,
            tls_cert,
            tls_key,
            insecure_http,
        } => {
            let given = CertificateFiles::given(tls_cert, tls_key);
            serve(&data, listen, given, insecure_http).await
        }
        Command::Tls {
            command: TlsCommand::Generate { data, tls_san },
        } => {
            let config = ServerConfig::load(&data)?;
            let files = config.tls.files(&data);
            let sha = files.generate_self_signed(&patchbay_server::tls::default_names(&tls_san))?;
            println!("tls-certificate: {}", files.certificate.display());
            println!("tls-certificate-sha256: {sha}");
            Ok(())
        }
        Command::RegistrationKey {
            command: RegistrationKeyCommand::Create { data, channel },
        } => {
            let service = Service::open(&data).await?;
            let key = service.create_registration_key("cli", &channel).await?;
            println!("registration-key: {key}");
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Create { data, name, role },
        } => {
            let role: Role = role.parse()?;
            let service = Service::open(&data).await?;
            let token = service.create_token("cli", &name, role).await?;
            println!("token: {token}");
            Ok(())
        }
        Command::Cve {
            command:
                CveCommand::Sync {
                    data,
                    path,
                    kev,
                    snapshot,
                    bundled,
                },
        } => {
            let source = match (bundled, snapshot, path) {
                (true, _, _) => patchbay_server::cve::CveSource::Bundled,
                (false, Some(dir), _) => patchbay_server::cve::CveSource::Snapshot(dir),
                (false, None, Some(path)) => patchbay_server::cve::CveSource::Vulns { path, kev },
                (false, None, None) => {
                    anyhow::bail!("give the vulns checkout, --snapshot DIR or --bundled")
                }
            };
            let summary = patchbay_server::cve::sync(&data, &source)?;
            println!(
                "stored {summary} in {}",
                patchbay_server::cve::db_path(&data).display()
            );
            Ok(())
        }
        Command::Cve {
            command:
                CveCommand::Exposure {
                    data,
                    version,
                    at,
                    json,
                    window_days,
                },
        } => {
            let db = patchbay_server::cve::load(&data)?;
            if db.is_empty() {
                anyhow::bail!(
                    "the CVE database in {} is empty; run `patchbay-server cve sync` first",
                    data.display()
                );
            }
            let version = patchbay_server::cve::parse_version(&version)?;
            let at = match at {
                Some(day) => patchbay_exposure::parse_day(&day)?,
                None => patchbay_server::cve::today(),
            };
            let policy = patchbay_exposure::Policy {
                window_days,
                ..Default::default()
            };
            let e = patchbay_exposure::try_exposure(&db, version, at, policy, &Default::default())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e.summary_json())?);
            } else {
                print!("{}", e.render(20));
            }
            Ok(())
        }
        Command::User { command } => user_command(command).await,
        Command::Export { data, output } => {
            let service = Service::open(&data).await?;
            let summary = patchbay_server::service::archive::export(&service, &output).await?;
            println!(
                "exported {} metadata files and {} targets to {}",
                summary.metadata,
                summary.targets,
                output.display()
            );
            Ok(())
        }
        Command::Import {
            data,
            archive,
            root,
        } => {
            let service = Service::open(&data).await?;
            let summary =
                patchbay_server::service::archive::import(&service, &archive, root.as_deref())
                    .await?;
            println!(
                "imported targets version {} ({} targets, root version {}) from {}",
                summary.targets_version,
                summary.targets,
                summary.root_version,
                archive.display()
            );
            if summary.older_roots_left_out > 0 {
                println!(
                    "left out {} root(s) older than the trusted one: nothing verifies them",
                    summary.older_roots_left_out
                );
            }
            if !summary.metadata_left_out.is_empty() {
                println!(
                    "left out (not served; the verified chain does not name them): {}",
                    summary.metadata_left_out.join(", ")
                );
            }
            Ok(())
        }
        Command::ExportUnsigned { data, output } => {
            let service = Service::open(&data).await?;
            let role = service.unsigned_targets().await?;
            let dir = documents_dir(&output);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            for document in service.channel_documents(&role).await? {
                let sha256 = patchbay_core::Sha256::of(&document);
                let path = dir.join(format!("{}.json", sha256.as_str()));
                patchbay_core::fsutil::write_atomic(&path, &document)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            patchbay_core::fsutil::write_atomic(&output, &role)
                .with_context(|| format!("write {}", output.display()))?;
            println!(
                "wrote the unsigned targets role to {} and its channel documents to {}",
                output.display(),
                dir.display()
            );
            Ok(())
        }
        Command::SignTargets {
            key,
            root,
            previous,
            yes,
            allow_removals,
            documents,
            unsigned,
            output,
        } => {
            let documents = patchbay_server::channel_review::ChannelDocuments::read_dir(
                &documents.unwrap_or_else(|| documents_dir(&unsigned)),
            )?;
            let read = |path: &Path| {
                std::fs::read(path).with_context(|| format!("read {}", path.display()))
            };
            let (unsigned_bytes, root_bytes) = (read(&unsigned)?, read(&root)?);
            let review = patchbay_server::tuf::review_targets(
                &unsigned_bytes,
                &read(&previous)?,
                &root_bytes,
                &documents,
            )?;
            print!("{}", review.render());
            let removals = if allow_removals {
                patchbay_server::tuf::Removals::Allow
            } else {
                patchbay_server::tuf::Removals::Refuse
            };
            if let Some(refusal) = review.refusal(removals) {
                anyhow::bail!("not signed: {refusal}");
            }
            if !yes {
                confirm_signing(review.version)?;
            }
            let signed =
                patchbay_server::tuf::sign_targets_offline(&unsigned_bytes, &root_bytes, &key)
                    .await?;
            patchbay_core::fsutil::write_atomic(&output, &signed)
                .with_context(|| format!("write {}", output.display()))?;
            println!("wrote the signed targets role to {}", output.display());
            Ok(())
        }
        Command::ImportSigned { data, signed } => {
            let service = Service::open(&data).await?;
            let bytes =
                std::fs::read(&signed).with_context(|| format!("read {}", signed.display()))?;
            let version = service.install_signed_targets(&bytes).await?;
            println!("now serving targets version {version}");
            Ok(())
        }
        Command::Root {
            command: RootCommand::Resign { data, root_keys },
        } => {
            let service = Service::open(&data).await?;
            let version = service.resign_root(&root_keys, None).await?;
            println!("now serving root version {version}");
            Ok(())
        }
        Command::Root {
            command:
                RootCommand::Rotate {
                    data,
                    role: patchbay_server::tuf::RoleName::Root,
                    root_keys,
                    new_root_key_out,
                    new_root_keys,
                    root_threshold,
                },
        } => {
            rotate_root_keys(
                &data,
                &root_keys,
                new_root_key_out,
                new_root_keys,
                root_threshold,
            )
            .await
        }
        Command::Root {
            command:
                RootCommand::Rotate {
                    data,
                    role,
                    root_keys,
                    new_root_key_out,
                    new_root_keys,
                    ..
                },
        } => {
            if !new_root_key_out.is_empty() || new_root_keys.is_some() {
                anyhow::bail!(
                    "--new-root-key-out and --root-keys are for --role root; the new {role} key \
                     goes to the keys directory"
                );
            }
            let service = Service::open(&data).await?;
            let version = service.resign_root(&root_keys, Some(role)).await?;
            println!("new {role} key; now serving root version {version}");
            Ok(())
        }
        Command::Doctor { data } => doctor(&data).await,
    }
}

/// The TLS part of `init`: a certificate given, or one to make for these names.
#[derive(Debug)]
struct InitTls {
    given: Option<CertificateFiles>,
    names: Vec<String>,
    hosts_check: Option<HostsCheckCertificate>,
}

async fn init(
    data: &Path,
    offline_root: Option<&Path>,
    root_keys: u32,
    root_threshold: u32,
    tls: InitTls,
) -> Result<()> {
    let mut config = ServerConfig::default();
    config.tuf.root_keys = root_keys;
    config.tuf.root_threshold = root_threshold;
    if root_threshold == 0 || root_threshold > root_keys {
        anyhow::bail!("--root-threshold must be between 1 and --root-keys ({root_keys})");
    }
    // Checked before a certificate is made: an initialised server keeps its own.
    if data.join("config.toml").exists() {
        anyhow::bail!(
            "{} already holds an initialised server (a config.toml); use another --data",
            data.display()
        );
    }
    // Browsers reach the dashboard over TLS: the session cookie is sent over TLS only.
    config.ui.served_over = patchbay_server::config::Transport::Https;
    let (files, made_here) = match tls.given {
        Some(given) => {
            let absolute = |p: &Path| {
                std::path::absolute(p)
                    .with_context(|| format!("{}: not a usable path", p.display()))
            };
            let files = CertificateFiles {
                certificate: absolute(&given.certificate)?,
                private_key: absolute(&given.private_key)?,
            };
            files.server_config()?;
            config.tls.certificate = files.certificate.display().to_string();
            config.tls.private_key = files.private_key.display().to_string();
            config.tls.hosts_check = tls.hosts_check.unwrap_or(HostsCheckCertificate::Ca);
            (files, false)
        }
        None => {
            config.tls.hosts_check = tls.hosts_check.unwrap_or(HostsCheckCertificate::Pin);
            let files = config.tls.files(data);
            files.generate_self_signed(&patchbay_server::tls::default_names(&tls.names))?;
            (files, true)
        }
    };
    let max_age_days = config.cve.max_age_days;
    let report = Service::init(data, offline_root, config).await?;
    println!("initialised {}", data.display());
    let cve_data = patchbay_server::cve::data_status(
        &patchbay_server::cve::read_stored(data),
        max_age_days,
        jiff::Timestamp::now().as_second(),
    );
    println!("cve-data: {}", cve_data.describe());
    if let Some(warning) = &cve_data.warning {
        println!("  WARNING: {warning}");
    }
    println!("tls-certificate: {}", files.certificate.display());
    println!("tls-certificate-sha256: {}", files.sha256()?);
    if made_here {
        println!(
            "  (self-signed; registration keys carry its SHA-256, so hosts pin it; builder \
             commands take it as --server-cert-sha256)"
        );
    }
    println!(
        "root keys ({} of {} must sign a new root) in {}:",
        root_threshold,
        report.root_key_ids.len(),
        report.root_key_dir.display()
    );
    for id in &report.root_key_ids {
        println!("  {id}");
    }
    if offline_root.is_some() {
        println!("move the root keys to offline storage now; the server does not need them");
    }
    println!("save these now, they are not shown again:");
    println!("admin-token: {}", report.admin_token);
    println!("dashboard-user: admin");
    println!("dashboard-password: {}", report.admin_password);
    println!("registration-key: {}", report.registration_key);
    Ok(())
}

/// `root rotate --role root`: new root keys in the files given, root N+1 signed by the old
/// and the new keys.
async fn rotate_root_keys(
    data: &Path,
    old_root_keys: &[PathBuf],
    files: Vec<PathBuf>,
    count: Option<usize>,
    threshold: u64,
) -> Result<()> {
    if let Some(count) = count.filter(|n| *n != files.len()) {
        anyhow::bail!(
            "--root-keys {count} needs {count} --new-root-key-out files, {} given",
            files.len()
        );
    }
    let new = patchbay_server::tuf::NewRootKeys::new(files, threshold)?;
    let service = Service::open(data).await?;
    let rotation = service.rotate_root_keys(old_root_keys, &new).await?;
    println!(
        "new root keys ({} of {} must sign a new root); now serving root version {}, signed by \
         the old and the new root keys:",
        new.threshold(),
        rotation.key_ids.len(),
        rotation.version
    );
    for (id, file) in rotation.key_ids.iter().zip(&rotation.key_files) {
        println!("  {id}  {}", file.display());
    }
    for failure in &rotation.not_retired {
        println!(
            "WARNING: could not delete the old root key {failure}: delete it (it can forge a root \
             for hosts that have not fetched the new one)"
        );
    }
    for old in &rotation.retired_online_keys {
        println!(
            "deleted the old root key {} (it signs no root any more)",
            old.display()
        );
    }
    println!(
        "move the new root key file(s) to offline storage now; the server does not need them. \
         Destroy the old root keys: hosts check the new root with the signatures it carries, \
         and an old key could only forge a root for hosts that have not fetched it yet"
    );
    Ok(())
}

async fn doctor(data: &Path) -> Result<()> {
    use patchbay_server::doctor::{Finding, Verdict};
    let service = Service::open(data).await?;
    let now = jiff::Timestamp::now();
    let mut findings = Vec::new();
    for e in service.metadata_expiry().await? {
        let keys = match e.keys {
            patchbay_server::tuf::KeyPlace::Online => "renewed automatically by serve",
            patchbay_server::tuf::KeyPlace::Offline => "key offline: renewed by an administrator",
            patchbay_server::tuf::KeyPlace::Mirror => "mirror: renewed by the next import",
        };
        findings.push(match e.warning(now) {
            Some(warning) => Finding::new(Verdict::Warn, warning),
            None => Finding::new(
                Verdict::Ok,
                format!(
                    "{}.json version {} expires {} ({} days; {keys})",
                    e.role,
                    e.version,
                    e.expires,
                    e.seconds_left(now) / 86_400
                ),
            ),
        });
    }
    findings.extend(patchbay_server::doctor::key_findings(
        &service.keys_on_disk().await?,
        &service.config.tuf,
    ));
    findings.extend(service.cve_data_findings().await?);
    for finding in &findings {
        println!("{finding}");
    }
    if findings.iter().any(|f| f.verdict != Verdict::Ok) {
        std::process::exit(1);
    }
    Ok(())
}

/// A data dir without CVE data (initialised by an older version, or `cve/db.json` removed)
/// gets the snapshot bundled with this binary when `serve` starts, and the operator is told:
/// a server never shows "no exposure" for want of data. Existing data is never replaced.
fn install_missing_cve_data(data: &Path) {
    match patchbay_server::cve::install_bundled_if_missing(data) {
        Ok(Some(installed)) => eprintln!(
            "patchbay-server: WARNING: {} had no CVE data (a data dir from an older version, or \
             the file was removed); installed the snapshot bundled with this version \
             ({installed}). It ages: run `patchbay-server cve sync` with the kernel CNA's vulns \
             repository for current data (docs/exposure.md)",
            patchbay_server::cve::db_path(data).display()
        ),
        Ok(None) => {}
        Err(e) => eprintln!(
            "patchbay-server: WARNING: there is no CVE data and installing the bundled snapshot \
             failed ({e}): every host's exposure is unknown until `patchbay-server cve sync` runs"
        ),
    }
}

/// One refresh round: renew what is due, say loudly what an administrator must renew.
async fn refresh_metadata(service: &Service) {
    match service.refresh_metadata().await {
        Ok(report) => {
            for role in &report.resigned {
                eprintln!("patchbay-server: re-signed {role}.json before it expires");
            }
            for warning in &report.warnings {
                eprintln!("patchbay-server: WARNING: {warning}");
            }
        }
        Err(e) => eprintln!("patchbay-server: metadata refresh failed: {e}"),
    }
}

/// What `serve` answers with.
enum Served {
    Https(Arc<rustls::ServerConfig>),
    InsecureHttp,
}

/// The loud warning `serve --insecure-http` prints at every start.
const INSECURE_HTTP_WARNING: &str = "\
patchbay-server: WARNING: ************************************************************
patchbay-server: WARNING: serving PLAIN HTTP (--insecure-http / tls.protocol).
patchbay-server: WARNING: admin tokens, host tokens, registration keys and dashboard
patchbay-server: WARNING: passwords cross the network IN CLEAR: anyone on the path can
patchbay-server: WARNING: read them and register hosts or publish as you. Use it only
patchbay-server: WARNING: behind a TLS proxy on this machine, or for a test.
patchbay-server: WARNING: ************************************************************";

async fn serve(
    data: &Path,
    listen: Option<String>,
    given: Option<CertificateFiles>,
    insecure_http: bool,
) -> Result<()> {
    install_missing_cve_data(data);
    let service = Arc::new(Service::open(data).await?);
    match patchbay_server::blobs::remove_stale_uploads(data) {
        Ok(0) => {}
        Ok(n) => eprintln!("patchbay-server: removed {n} unfinished upload(s) from uploads/"),
        Err(e) => eprintln!("patchbay-server: WARNING: cannot clean uploads/: {e}"),
    }
    let root_keys = service.online_root_keys();
    if !root_keys.is_empty() {
        let names: Vec<String> = root_keys.iter().map(|k| k.display().to_string()).collect();
        eprintln!(
            "patchbay-server: WARNING: the root key(s) {} sit beside the data: whoever copies \
             this machine's disk can sign a new root and take over every host. Move them to \
             offline storage (docs/server.md, \"Offline keys\"); serving never needs them",
            names.join(", ")
        );
    }
    let tls = &service.config.tls;
    let served = if insecure_http || tls.protocol == ServedProtocol::InsecureHttp {
        eprintln!("{INSECURE_HTTP_WARNING}");
        service.set_served_certificate(None);
        Served::InsecureHttp
    } else {
        let files = given.unwrap_or_else(|| tls.files(data));
        let config = files.server_config()?;
        let sha = files.sha256()?;
        eprintln!(
            "patchbay-server: TLS certificate {} (SHA-256 {sha})",
            files.certificate.display()
        );
        service.set_served_certificate(match tls.hosts_check {
            HostsCheckCertificate::Pin => Some(sha),
            HostsCheckCertificate::Ca => None,
        });
        Served::Https(config)
    };
    let listen = listen.unwrap_or_else(|| service.config.listen.clone());
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?}: expected ADDRESS:PORT"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // Before the first request and the first refresh: sign what a crash left unsigned.
    match service.reconcile().await {
        Ok(Some(version)) => eprintln!(
            "patchbay-server: signed targets version {version}: the database held changes a \
             crash had left unsigned"
        ),
        Ok(None) => {}
        Err(e) => eprintln!(
            "patchbay-server: WARNING: the database holds changes the signed metadata does not, \
             and signing them failed: {e}"
        ),
    }
    let refresher = Arc::clone(&service);
    tokio::spawn(async move {
        let mut rounds: u64 = 0;
        loop {
            refresh_metadata(&refresher).await;
            if rounds.is_multiple_of(60) {
                match refresher.prune_history().await {
                    Ok(0) => {}
                    Ok(n) => eprintln!(
                        "patchbay-server: deleted {n} check-ins older than retention.checkin_days"
                    ),
                    Err(e) => eprintln!("patchbay-server: check-in history pruning failed: {e}"),
                }
            }
            if let Err(e) = refresher.reload_cve_if_changed() {
                eprintln!("patchbay-server: CVE database reload failed: {e}");
            }
            // The day's exposure snapshot (trend charts), refreshed every ten minutes.
            if rounds.is_multiple_of(10) {
                if let Err(e) = refresher.record_exposure_snapshot().await {
                    eprintln!("patchbay-server: exposure snapshot failed: {e}");
                }
            }
            rounds += 1;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
    // Connections must send their headers in time and read their responses; each request
    // knows its peer's address (failed logins are counted per address) and its connection.
    let connection_limits = patchbay_server::listener::ConnectionLimits::of(&service.config.limits)
        .exempting(service.config.trusted_proxies.clone());
    let max_handshakes =
        usize::try_from(service.config.limits.max_concurrent_requests).unwrap_or(usize::MAX);
    let app = patchbay_server::api::router(service)
        .into_make_service_with_connect_info::<patchbay_server::listener::Connection>();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match served {
        Served::Https(config) => {
            let listener = patchbay_server::listener::TlsListener::new(
                listener,
                connection_limits,
                config,
                max_handshakes,
            )?;
            println!("listening on https://{local}");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .context("serve")?;
        }
        Served::InsecureHttp => {
            let listener =
                patchbay_server::listener::GuardedListener::new(listener, connection_limits);
            println!("listening on http://{local}");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .context("serve")?;
        }
    }
    Ok(())
}

/// Where `export-unsigned` writes the channel documents beside its role `output`, and where
/// `sign-targets` looks for them by default: `<output>.documents`.
fn documents_dir(role: &Path) -> PathBuf {
    let mut name = role.as_os_str().to_owned();
    name.push(".documents");
    PathBuf::from(name)
}

/// Asks on the terminal whether to sign targets `version` (the changes are printed above); an
/// error unless the answer is yes. Without a terminal nothing is confirmed: `--yes` is the
/// script's way.
fn confirm_signing(version: u64) -> Result<()> {
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "not signed: nobody confirmed the changes above (no terminal); read them and pass \
             --yes to sign from a script"
        );
    }
    eprint!("sign targets version {version} with these changes? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => anyhow::bail!("not signed: not confirmed"),
    }
}

/// `patchbay-server user …`: every change goes through the service (audited as `cli`).
async fn user_command(command: UserCommand) -> Result<()> {
    use patchbay_server::service::users::UserChange;
    let (data, name, change, done) = match command {
        UserCommand::Add { data, name, role } => {
            let role: Role = role.parse()?;
            // Refused before the password is asked for; `add_user` checks it again.
            patchbay_server::auth::check_username(&name)?;
            let password = read_password()?;
            let service = Service::open(&data).await?;
            service.add_user("cli", &name, role, &password).await?;
            println!("added {role} user {name}");
            return Ok(());
        }
        UserCommand::List { data } => {
            let service = Service::open(&data).await?;
            for user in service.users().await? {
                println!("{} {} {}", user.name, user.role, user.state.as_str());
            }
            return Ok(());
        }
        UserCommand::Delete { data, name } => (data, name, UserChange::Delete, "deleted"),
        UserCommand::Disable { data, name } => (data, name, UserChange::Disable, "disabled"),
        UserCommand::Enable { data, name } => (data, name, UserChange::Enable, "enabled"),
        UserCommand::Passwd { data, name } => {
            let service = Service::open(&data).await?;
            // Refused before the password is asked for.
            service.user_by_name(&name).await?;
            let password = read_password()?;
            service
                .change_user("cli", &name, UserChange::NewPassword(password))
                .await?;
            println!("new password for user {name}; their sessions ended");
            return Ok(());
        }
    };
    let service = Service::open(&data).await?;
    service.change_user("cli", &name, change).await?;
    println!("{done} user {name}");
    Ok(())
}

/// A password for `user add` and `user passwd`: PATCHBAY_PASSWORD, else one line of stdin.
fn read_password() -> Result<String> {
    match std::env::var("PATCHBAY_PASSWORD") {
        Ok(password) => Ok(password),
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            Ok(line.trim_end().to_owned())
        }
    }
}

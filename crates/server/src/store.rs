//! Server state behind the [`Store`] trait. [`SqliteStore`] (sqlx) is the embedded default; the
//! queries are plain SQL with `$n` parameters and BIGINT/TEXT columns so a PostgreSQL store can
//! implement the same trait with the same statements (only the DDL's id columns differ).
//!
//! Rows are parsed into the core newtypes when read: a row that does not parse is reported as a
//! corrupt database, never passed on as a raw string.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use patchbay_core::protocol::{CheckInRequest, HostState};
use patchbay_core::{
    BuildId, ChannelName, HostSeed, KernelRelease, KernelRollout, Manifest, PatchLevel, Sha256,
    UpgradeReport, UpstreamVersion, Wave,
};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::auth::Role;
use crate::error::ServerError;

/// One published level of one kernel build.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelRecord {
    /// The kernel build the level is for (its GNU build id).
    pub build_id: BuildId,
    /// The level number, counting up from 1 per kernel build.
    pub level: PatchLevel,
    /// The kernel's `uname -r`, e.g. `6.1.0-18-amd64`.
    pub kernel_release: KernelRelease,
    /// The upstream release the kernel is built from, e.g. `6.1.76`.
    pub upstream_version: UpstreamVersion,
    /// The sha256 of the bundle (its blob key and TUF target hash).
    pub sha256: Sha256,
    /// The bundle's size in bytes.
    pub length: u64,
    /// The bundle's manifest, as signed into the TUF target's custom metadata.
    pub manifest: Manifest,
    /// When it was published (unix seconds).
    pub published_at: i64,
}

/// A channel and the serial of its current document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRecord {
    /// The channel's name, e.g. `production`.
    pub name: ChannelName,
    /// Bumped at every change; the signed channel document carries it.
    pub serial: u64,
    /// When it last changed (RFC 3339, UTC), as written into the channel document.
    pub updated: String,
}

/// A registered host with its last check-in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRecord {
    /// The host id the server gave at registration.
    pub id: String,
    /// The sha256 of the host's API token (never listed).
    #[serde(skip)]
    pub token_hash: String,
    /// The hostname the host reported at registration.
    pub hostname: String,
    /// The channel it follows.
    pub channel: ChannelName,
    /// Decides the host's place in rollout waves.
    pub seed: HostSeed,
    /// Its running kernel's `uname -r`, e.g. `6.1.0-18-amd64`.
    pub kernel_release: KernelRelease,
    /// The upstream release the host reported (`6.1.192`), if it did. Listed as
    /// `kernel_version`, the name the API has always used (and the database column's).
    #[serde(rename = "kernel_version")]
    pub upstream_version: Option<UpstreamVersion>,
    /// Its running kernel's build id.
    pub build_id: BuildId,
    /// The patch level it last reported loaded; `None`: no live patch.
    pub active_level: Option<PatchLevel>,
    /// The state it last reported.
    pub state: HostState,
    /// The error of its last check-in, if that reported one.
    pub last_error: Option<String>,
    /// The agent's version, e.g. `0.1.0`.
    pub agent_version: String,
    /// When it registered (unix seconds).
    pub registered_at: i64,
    /// When it last checked in (unix seconds).
    pub last_checkin: i64,
    /// Its last check-in's warning that its clock is behind, if that carried one.
    pub clock_warning: Option<HostClockWarning>,
}

/// A host's warning about its own clock, as its last check-in carried it
/// ([`patchbay_core::protocol::ClockWarning`]) with the server's time of receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostClockWarning {
    /// The host's clock when it reported (unix seconds).
    pub host_time: i64,
    /// The server's clock when the check-in arrived (unix seconds).
    pub reported_at: i64,
    /// What the agent found.
    pub detail: String,
}

impl HostClockWarning {
    /// How far the host's clock read behind the server's (negative: ahead), in seconds.
    pub fn behind_secs(&self) -> i64 {
        self.reported_at.saturating_sub(self.host_time)
    }
}

/// A check-in as recorded: what the host reported (an upstream version of `None` keeps the one
/// reported before) and when.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckIn {
    /// What the host sent.
    pub report: CheckInRequest,
    /// When the server received it (unix seconds).
    pub at: i64,
}

/// One line of the audit log: who changed what, and the TUF targets version it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Increasing with time; the newest entry has the highest id.
    pub id: i64,
    /// When (unix seconds).
    pub at: i64,
    /// Who: a user or token name, `cli`, or a host id.
    pub actor: String,
    /// What, as a short tag such as `token-create` or `report`.
    pub action: String,
    /// The change in words (channel, kernel, level...).
    pub detail: String,
    /// The targets version signed for the change; `None` when nothing was signed.
    pub targets_version: Option<u64>,
}

/// The fleet's exposure on one day, for trends: distinct open CVEs by severity and hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExposureSnapshot {
    /// The UTC day, `2025-03-27`.
    pub day: String,
    /// Distinct open critical CVEs across the fleet.
    pub critical: u64,
    /// Distinct open high CVEs.
    pub high: u64,
    /// Distinct open medium CVEs.
    pub medium: u64,
    /// Distinct open low CVEs.
    pub low: u64,
    /// Distinct open CVEs without a score.
    pub unscored: u64,
    /// Registered hosts counted.
    pub hosts: u64,
    /// Hosts with at least one high CVE open past the window.
    pub hosts_breached: u64,
}

/// A dashboard user; `password_hash` is Argon2id (PHC string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserRecord {
    /// The login name (see [`crate::auth::check_username`]).
    pub name: String,
    /// The Argon2id PHC string (never listed).
    #[serde(skip)]
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
    /// Whether the user may log in.
    pub state: UserState,
}

/// Whether a dashboard user may log in. A disabled user keeps their name and password hash
/// (so `user enable` gives the account back) but has no sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UserState {
    /// May log in.
    Enabled,
    /// May not log in; every session ended when it was disabled.
    Disabled,
}

impl UserState {
    /// `enabled` or `disabled`, as the CLI and the dashboard show it.
    pub fn as_str(self) -> &'static str {
        match self {
            UserState::Enabled => "enabled",
            UserState::Disabled => "disabled",
        }
    }
}

/// A dashboard session: stored by the SHA-256 of its cookie value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The sha256 of the cookie value (hex).
    pub id_hash: String,
    /// The user it belongs to.
    pub user: String,
    /// The user's role now: read from the user at each lookup, so a changed role counts at the
    /// next request.
    pub role: Role,
    /// The CSRF token the session's forms must carry.
    pub csrf: String,
    /// When it expires (unix seconds); the caller checks it, [`Store::session`] does not.
    pub expires_at: i64,
}

/// An API token as listed for revocation: the secret itself is never stored, its SHA-256
/// is the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    /// The sha256 of the token (hex).
    pub id: String,
    /// The name it was created with.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was created (unix seconds).
    pub created_at: i64,
}

/// A registration key as listed for revocation (id: the SHA-256 of the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistrationKeyRecord {
    /// The sha256 of the key (hex).
    pub id: String,
    /// The channel hosts registering with it join.
    pub channel: ChannelName,
    /// When it was created (unix seconds).
    pub created_at: i64,
}

/// Which hosts to list; every `None` matches all, the default lists every host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFilter {
    /// Only hosts on this channel.
    pub channel: Option<ChannelName>,
    /// Only hosts running this kernel build.
    pub build_id: Option<BuildId>,
    /// Only hosts in this state.
    pub state: Option<HostState>,
    /// Page size (all when `None`) and offset, ordered by hostname then id.
    pub limit: Option<u32>,
    /// How many matching hosts to skip first.
    pub offset: u32,
}

/// Everything the server keeps in its database. Times are unix seconds; `*_hash` arguments
/// are the hex sha256 of a secret, never the secret. Errors are [`ServerError::Database`]
/// (a row that does not parse included) unless a method says otherwise.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores a new API token by its hash.
    async fn add_token(
        &self,
        token_hash: &str,
        name: &str,
        role: Role,
        at: i64,
    ) -> Result<(), ServerError>;
    /// The name and role of an API token.
    async fn token(&self, token_hash: &str) -> Result<Option<(String, Role)>, ServerError>;
    /// Every API token, by name.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, ServerError>;
    /// Deletes an API token; whether it existed.
    async fn remove_token(&self, token_hash: &str) -> Result<bool, ServerError>;
    /// Every registration key, by channel then age.
    async fn registration_keys(&self) -> Result<Vec<RegistrationKeyRecord>, ServerError>;
    /// Deletes a registration key; whether it existed.
    async fn remove_registration_key(&self, key_hash: &str) -> Result<bool, ServerError>;
    /// Deletes a host and its check-in history (its token stops working); whether it existed.
    async fn remove_host(&self, id: &str) -> Result<bool, ServerError>;

    /// Adds a dashboard user; [`ServerError::Conflict`] when the name is taken.
    async fn add_user(&self, user: &UserRecord, at: i64) -> Result<(), ServerError>;
    /// The user of that name, if any.
    async fn user(&self, name: &str) -> Result<Option<UserRecord>, ServerError>;
    /// Every dashboard user, by name.
    async fn users(&self) -> Result<Vec<UserRecord>, ServerError>;
    /// Deletes a dashboard user and every session of theirs; whether the user existed.
    async fn remove_user(&self, name: &str) -> Result<bool, ServerError>;
    /// Enables or disables a user; disabling ends every session of theirs. Whether the user
    /// exists.
    async fn set_user_state(&self, name: &str, state: UserState) -> Result<bool, ServerError>;
    /// Replaces a user's password hash and ends every session of theirs; whether the user
    /// exists.
    async fn set_user_password(&self, name: &str, password_hash: &str)
        -> Result<bool, ServerError>;
    /// Stores a new session (and drops the sessions that have expired).
    async fn add_session(&self, session: &SessionRecord) -> Result<(), ServerError>;
    /// The session with this cookie hash, expired or not, with its user's current role;
    /// `None` when there is none or its user is disabled.
    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, ServerError>;
    /// Ends a session (logout); nothing happens if there is none.
    async fn delete_session(&self, id_hash: &str) -> Result<(), ServerError>;

    /// Creates a channel at serial 1 (`updated`: RFC 3339); [`ServerError::Conflict`] when it
    /// exists.
    async fn add_channel(
        &self,
        name: &ChannelName,
        updated: &str,
        at: i64,
    ) -> Result<(), ServerError>;
    /// Every channel, by name.
    async fn channels(&self) -> Result<Vec<ChannelRecord>, ServerError>;
    /// Removes a channel that nothing refers to yet (undoing a creation whose signing failed).
    async fn remove_channel(&self, name: &ChannelName) -> Result<(), ServerError>;
    /// Puts a channel's serial and time of change back (undoing a change whose signing failed).
    async fn restore_channel(&self, channel: &ChannelRecord) -> Result<(), ServerError>;
    /// Increments a channel's serial and sets its time of change; returns the new serial.
    /// [`ServerError::NotFound`] when there is no such channel.
    async fn bump_channel(&self, name: &ChannelName, updated: &str) -> Result<u64, ServerError>;
    /// A channel's rollouts, one per kernel build that was promoted on it.
    async fn rollouts(
        &self,
        channel: &ChannelName,
    ) -> Result<BTreeMap<BuildId, KernelRollout>, ServerError>;
    /// Sets (or replaces) one kernel's rollout on a channel.
    async fn set_rollout(
        &self,
        channel: &ChannelName,
        build_id: &BuildId,
        rollout: &KernelRollout,
    ) -> Result<(), ServerError>;
    /// Removes one kernel's rollout from a channel (undoing a first promotion).
    async fn remove_rollout(
        &self,
        channel: &ChannelName,
        build_id: &BuildId,
    ) -> Result<(), ServerError>;

    /// Stores a registration key by its hash, for `channel`.
    async fn add_registration_key(
        &self,
        key_hash: &str,
        channel: &ChannelName,
        at: i64,
    ) -> Result<(), ServerError>;
    /// The channel a registration key enrolls hosts in; `None`: no such key (or revoked).
    async fn registration_key_channel(
        &self,
        key_hash: &str,
    ) -> Result<Option<ChannelName>, ServerError>;

    /// Records a published level; [`ServerError::Conflict`] when that level exists.
    async fn add_level(&self, level: &LevelRecord) -> Result<(), ServerError>;
    /// Removes a level and its upgrade report (undoing a publication whose signing failed).
    async fn remove_level(&self, build_id: &BuildId, level: PatchLevel) -> Result<(), ServerError>;
    /// Every published level, by build id then level.
    async fn levels(&self) -> Result<Vec<LevelRecord>, ServerError>;
    /// The published levels of one kernel build.
    async fn levels_of(&self, build_id: &BuildId) -> Result<Vec<LevelRecord>, ServerError>;
    /// Stores the upgrade report of a published level, replacing an earlier one; whether
    /// there was one.
    async fn put_report(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
        report: &UpgradeReport,
        at: i64,
    ) -> Result<bool, ServerError>;
    /// The upgrade report attached to a level, if any.
    async fn report(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<Option<UpgradeReport>, ServerError>;
    /// The levels that carry an upgrade report.
    async fn reported_levels(&self) -> Result<Vec<(BuildId, PatchLevel)>, ServerError>;

    /// Registers a host.
    async fn add_host(&self, host: &HostRecord) -> Result<(), ServerError>;
    /// The host whose API token has this hash, if any.
    async fn host_by_token(&self, token_hash: &str) -> Result<Option<HostRecord>, ServerError>;
    /// Updates a host from a check-in and appends it to the history; returns once committed.
    async fn record_checkin(&self, host_id: &str, checkin: &CheckIn) -> Result<(), ServerError>;
    /// The hosts matching `filter`, by hostname then id, paged as it says.
    async fn hosts(&self, filter: &HostFilter) -> Result<Vec<HostRecord>, ServerError>;
    /// How many hosts match `filter` (its page is ignored).
    async fn count_hosts(&self, filter: &HostFilter) -> Result<u64, ServerError>;
    /// The host with this id, if any.
    async fn host(&self, id: &str) -> Result<Option<HostRecord>, ServerError>;
    /// Check-ins received since the database was made (history pruning does not lower it).
    async fn checkin_count(&self) -> Result<u64, ServerError>;
    /// Deletes the check-in history recorded before `before` (unix time); returns how many
    /// check-ins went.
    async fn prune_checkins(&self, before: i64) -> Result<u64, ServerError>;
    /// Keeps one exposure snapshot per day (the latest of the day wins).
    async fn record_snapshot(&self, snapshot: &ExposureSnapshot) -> Result<(), ServerError>;
    /// The newest `limit` daily snapshots, oldest first.
    async fn snapshots(&self, limit: u32) -> Result<Vec<ExposureSnapshot>, ServerError>;

    /// Appends an [`AuditEntry`].
    async fn audit(
        &self,
        at: i64,
        actor: &str,
        action: &str,
        detail: &str,
        targets_version: Option<u64>,
    ) -> Result<(), ServerError>;
    /// The newest `limit` audit entries, newest first.
    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, ServerError>;
}

const SQLITE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS api_tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name),
    role TEXT NOT NULL,
    csrf TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
-- Added with `user disable`, as a table of its own so that `IF NOT EXISTS` migrates an
-- existing database: the users who may not log in.
CREATE TABLE IF NOT EXISTS disabled_users (
    user_name TEXT PRIMARY KEY REFERENCES users(name),
    disabled_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    serial BIGINT NOT NULL,
    updated TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS registration_keys (
    key_hash TEXT PRIMARY KEY,
    channel TEXT NOT NULL REFERENCES channels(name),
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS levels (
    build_id TEXT NOT NULL,
    level BIGINT NOT NULL,
    kernel_release TEXT NOT NULL,
    upstream_version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    length BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    PRIMARY KEY (build_id, level)
);
-- Added with upgrade reports: created in an existing database at its next open, like every
-- table here (the schema is applied at each start; `IF NOT EXISTS` is the migration).
CREATE TABLE IF NOT EXISTS level_reports (
    build_id TEXT NOT NULL,
    level BIGINT NOT NULL,
    report TEXT NOT NULL,
    attached_at BIGINT NOT NULL,
    PRIMARY KEY (build_id, level),
    FOREIGN KEY (build_id, level) REFERENCES levels(build_id, level)
);
CREATE TABLE IF NOT EXISTS rollouts (
    channel TEXT NOT NULL REFERENCES channels(name),
    build_id TEXT NOT NULL,
    level BIGINT NOT NULL,
    previous BIGINT,
    effective_at BIGINT NOT NULL,
    waves TEXT NOT NULL,
    pinned BIGINT NOT NULL,
    PRIMARY KEY (channel, build_id)
);
CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    channel TEXT NOT NULL REFERENCES channels(name),
    seed TEXT NOT NULL,
    kernel_release TEXT NOT NULL,
    kernel_version TEXT,
    build_id TEXT NOT NULL,
    active_level BIGINT,
    state TEXT NOT NULL,
    last_error TEXT,
    agent_version TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_checkin BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS hosts_channel ON hosts(channel);
CREATE INDEX IF NOT EXISTS hosts_build_id ON hosts(build_id);
CREATE INDEX IF NOT EXISTS hosts_state ON hosts(state);
CREATE TABLE IF NOT EXISTS checkins (
    id INTEGER PRIMARY KEY,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    at BIGINT NOT NULL,
    build_id TEXT NOT NULL,
    active_level BIGINT,
    state TEXT NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS checkins_host_at ON checkins(host_id, at);
-- Added with clock warnings, as a table of its own so that `IF NOT EXISTS` migrates an
-- existing database: the last check-in's warning about the host's clock, if it carried one.
CREATE TABLE IF NOT EXISTS host_clock_warnings (
    host_id TEXT PRIMARY KEY REFERENCES hosts(id),
    host_time BIGINT NOT NULL,
    reported_at BIGINT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) SELECT 'checkins', COUNT(*) FROM checkins WHERE true
    ON CONFLICT (name) DO NOTHING;
CREATE TABLE IF NOT EXISTS exposure_snapshots (
    day TEXT PRIMARY KEY,
    critical BIGINT NOT NULL,
    high BIGINT NOT NULL,
    medium BIGINT NOT NULL,
    low BIGINT NOT NULL,
    unscored BIGINT NOT NULL,
    hosts BIGINT NOT NULL,
    hosts_breached BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    targets_version BIGINT
);
"#;

/// The embedded [`Store`]: one SQLite file (WAL), opened with [`SqliteStore::open`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Check-ins go to one writer task that commits whatever has queued up in one transaction
    /// (group commit): SQLite has one writer at a time, and a commit per check-in would make
    /// hosts wait in SQLite's busy handler. Each caller still gets its reply after the commit.
    checkins: tokio::sync::mpsc::Sender<PendingCheckIn>,
}

type PendingCheckIn = (
    String,
    CheckIn,
    tokio::sync::oneshot::Sender<Result<(), String>>,
);

/// Most check-ins committed in one transaction.
const CHECKIN_BATCH: usize = 256;

async fn checkin_writer(pool: SqlitePool, mut queue: tokio::sync::mpsc::Receiver<PendingCheckIn>) {
    let mut batch = Vec::with_capacity(CHECKIN_BATCH);
    while queue.recv_many(&mut batch, CHECKIN_BATCH).await > 0 {
        let result = write_checkins(&pool, &batch)
            .await
            .map_err(|e| e.to_string());
        for (_, _, reply) in batch.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
}

async fn write_checkins(pool: &SqlitePool, batch: &[PendingCheckIn]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for (host_id, CheckIn { report: c, at }, _) in batch {
        let level = c.active_level.map(|l| i64::from(l.get()));
        sqlx::query(
            "UPDATE hosts SET kernel_release = $2, build_id = $3, active_level = $4, state = $5, \
             last_error = $6, agent_version = $7, last_checkin = $8, \
             kernel_version = COALESCE($9, kernel_version) WHERE id = $1",
        )
        .bind(host_id)
        .bind(c.kernel_release.as_str())
        .bind(c.build_id.as_str())
        .bind(level)
        .bind(c.state.as_str())
        .bind(&c.last_error)
        .bind(&c.agent_version)
        .bind(at)
        .bind(c.upstream_version.map(|v| v.to_string()))
        .execute(&mut *tx)
        .await?;
        // The warning lasts as long as the host keeps sending it.
        match &c.clock_warning {
            Some(w) => sqlx::query(
                "INSERT INTO host_clock_warnings (host_id, host_time, reported_at, detail) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (host_id) DO UPDATE SET \
                 host_time = excluded.host_time, reported_at = excluded.reported_at, \
                 detail = excluded.detail",
            )
            .bind(host_id)
            .bind(w.host_time)
            .bind(at)
            .bind(&w.detail),
            None => sqlx::query("DELETE FROM host_clock_warnings WHERE host_id = $1").bind(host_id),
        }
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO checkins (host_id, at, build_id, active_level, state, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(host_id)
        .bind(at)
        .bind(c.build_id.as_str())
        .bind(level)
        .bind(c.state.as_str())
        .bind(&c.last_error)
        .execute(&mut *tx)
        .await?;
    }
    // A counter beside the history: `patchbay_checkins_total` must never go down when
    // old history is pruned.
    sqlx::query(
        "INSERT INTO counters (name, value) VALUES ('checkins', $1) \
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
    )
    .bind(i64::try_from(batch.len()).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Database(sqlx::Error::Decode(
        format!("corrupt {what} in the database: {e}").into(),
    ))
}

fn parse<T: FromStr>(what: &str, s: &str) -> Result<T, ServerError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| corrupt(what, e))
}

fn level_from(what: &str, n: i64) -> Result<PatchLevel, ServerError> {
    u32::try_from(n)
        .map_err(|e| corrupt(what, e))?
        .try_into()
        .map_err(|e| corrupt(what, e))
}

fn parse_role(s: &str) -> Result<Role, ServerError> {
    s.parse().map_err(|e| corrupt("role", e))
}

fn user_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<UserRecord, ServerError> {
    Ok(UserRecord {
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role: parse_role(row.try_get::<&str, _>("role")?)?,
        state: if row.try_get::<bool, _>("disabled")? {
            UserState::Disabled
        } else {
            UserState::Enabled
        },
    })
}

/// Deletes every session of user `name` within the transaction that changes the user.
async fn end_sessions(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    name: &str,
) -> Result<(), ServerError> {
    sqlx::query("DELETE FROM sessions WHERE user_name = $1")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Every user query: the user's row and whether a `disabled_users` row names them
/// (`user_from_row` reads both).
macro_rules! select_users {
    ($rest:literal) => {
        concat!(
            "SELECT name, password_hash, role, \
             EXISTS (SELECT 1 FROM disabled_users d WHERE d.user_name = users.name) AS disabled \
             FROM users ",
            $rest
        )
    };
}

fn host_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<HostRecord, ServerError> {
    let active: Option<i64> = row.try_get("active_level")?;
    Ok(HostRecord {
        id: row.try_get("id")?,
        token_hash: row.try_get("token_hash")?,
        hostname: row.try_get("hostname")?,
        channel: parse("host channel", row.try_get::<&str, _>("channel")?)?,
        seed: parse("host seed", row.try_get::<&str, _>("seed")?)?,
        kernel_release: parse(
            "host kernel release",
            row.try_get::<&str, _>("kernel_release")?,
        )?,
        upstream_version: row
            .try_get::<Option<&str>, _>("kernel_version")?
            .map(|v| parse("host upstream version", v))
            .transpose()?,
        build_id: parse("host build-id", row.try_get::<&str, _>("build_id")?)?,
        active_level: active.map(|n| level_from("host level", n)).transpose()?,
        state: parse("host state", row.try_get::<&str, _>("state")?)?,
        last_error: row.try_get("last_error")?,
        agent_version: row.try_get("agent_version")?,
        registered_at: row.try_get("registered_at")?,
        last_checkin: row.try_get("last_checkin")?,
        clock_warning: match (
            row.try_get::<Option<i64>, _>("clock_host_time")?,
            row.try_get::<Option<i64>, _>("clock_reported_at")?,
            row.try_get::<Option<String>, _>("clock_detail")?,
        ) {
            (Some(host_time), Some(reported_at), Some(detail)) => Some(HostClockWarning {
                host_time,
                reported_at,
                detail,
            }),
            _ => None,
        },
    })
}

/// Every host query: the host's row with its clock warning (`host_from_row` reads both).
macro_rules! select_hosts {
    ($($rest:literal),*) => {
        concat!(
            "SELECT hosts.*, w.host_time AS clock_host_time, w.reported_at AS clock_reported_at, \
             w.detail AS clock_detail FROM hosts \
             LEFT JOIN host_clock_warnings w ON w.host_id = hosts.id ",
            $($rest),*
        )
    };
}

impl SqliteStore {
    async fn select_levels(
        &self,
        build_id: Option<&BuildId>,
    ) -> Result<Vec<LevelRecord>, ServerError> {
        let rows = sqlx::query(
            "SELECT build_id, level, kernel_release, upstream_version, sha256, length, manifest, \
             published_at FROM levels WHERE ($1 IS NULL OR build_id = $1) \
             ORDER BY build_id, level",
        )
        .bind(build_id.map(|b| b.as_str().to_owned()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let build_id: BuildId =
                    parse("level build-id", row.try_get::<&str, _>("build_id")?)?;
                let level = level_from("level", row.try_get("level")?)?;
                // Which row is unreadable, so an operator can find it.
                let of_this = |what: &str| format!("{what} of level {level} of {build_id}");
                Ok(LevelRecord {
                    kernel_release: parse(
                        "level kernel release",
                        row.try_get::<&str, _>("kernel_release")?,
                    )?,
                    upstream_version: parse(
                        &of_this("upstream version"),
                        row.try_get::<&str, _>("upstream_version")?,
                    )?,
                    sha256: parse("level sha256", row.try_get::<&str, _>("sha256")?)?,
                    length: u64::try_from(row.try_get::<i64, _>("length")?)
                        .map_err(|e| corrupt("level length", e))?,
                    manifest: Manifest::parse(row.try_get::<&str, _>("manifest")?.as_bytes())
                        .map_err(|e| corrupt(&of_this("manifest"), e))?,
                    published_at: row.try_get("published_at")?,
                    build_id,
                    level,
                })
            })
            .collect()
    }

    /// Opens (creating if needed) the SQLite database at `path` and brings the schema up.
    pub async fn open(path: &Path) -> Result<SqliteStore, ServerError> {
        private_database_files(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SQLITE_SCHEMA).execute(&pool).await?;
        let (checkins, queue) = tokio::sync::mpsc::channel(4 * CHECKIN_BATCH);
        tokio::spawn(checkin_writer(pool.clone(), queue));
        Ok(SqliteStore { pool, checkins })
    }
}

/// The database holds password hashes, session and token hashes: only the server's user may
/// read it. The file is created 0600 before SQLite opens it (SQLite gives its `-wal` and
/// `-shm` files the database's mode), and a database made by an older version is narrowed.
fn private_database_files(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |path: &Path, source| ServerError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = std::path::PathBuf::from(name);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&file, e)),
        }
    }
    Ok(())
}

/// A manifest as the `levels.manifest` column holds it (JSON text).
fn manifest_text(manifest: &Manifest) -> Result<String, ServerError> {
    let json = manifest
        .to_json()
        .map_err(|e| ServerError::Unprocessable(e.to_string()))?;
    String::from_utf8(json).map_err(|e| ServerError::Unprocessable(e.to_string()))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for SqliteStore {
    async fn add_token(
        &self,
        token_hash: &str,
        name: &str,
        role: Role,
        at: i64,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO api_tokens (token_hash, name, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(name)
        .bind(role.as_str())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn token(&self, token_hash: &str) -> Result<Option<(String, Role)>, ServerError> {
        let row = sqlx::query("SELECT name, role FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok((
                row.try_get("name")?,
                parse_role(row.try_get::<&str, _>("role")?)?,
            ))
        })
        .transpose()
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, ServerError> {
        let rows =
            sqlx::query("SELECT token_hash, name, role, created_at FROM api_tokens ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(TokenRecord {
                    id: row.try_get("token_hash")?,
                    name: row.try_get("name")?,
                    role: parse_role(row.try_get::<&str, _>("role")?)?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn remove_token(&self, token_hash: &str) -> Result<bool, ServerError> {
        let result = sqlx::query("DELETE FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn registration_keys(&self) -> Result<Vec<RegistrationKeyRecord>, ServerError> {
        let rows = sqlx::query(
            "SELECT key_hash, channel, created_at FROM registration_keys \
             ORDER BY channel, created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RegistrationKeyRecord {
                    id: row.try_get("key_hash")?,
                    channel: parse("registration channel", row.try_get::<&str, _>("channel")?)?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn remove_registration_key(&self, key_hash: &str) -> Result<bool, ServerError> {
        let result = sqlx::query("DELETE FROM registration_keys WHERE key_hash = $1")
            .bind(key_hash)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn remove_host(&self, id: &str) -> Result<bool, ServerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM checkins WHERE host_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM host_clock_warnings WHERE host_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let result = sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    async fn add_user(&self, user: &UserRecord, at: i64) -> Result<(), ServerError> {
        let result = sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(at)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(ServerError::Conflict(format!(
                "user {} already exists",
                user.name
            )));
        }
        Ok(())
    }

    async fn user(&self, name: &str) -> Result<Option<UserRecord>, ServerError> {
        let row = sqlx::query(select_users!("WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn users(&self) -> Result<Vec<UserRecord>, ServerError> {
        let rows = sqlx::query(select_users!("ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn remove_user(&self, name: &str) -> Result<bool, ServerError> {
        let mut tx = self.pool.begin().await?;
        end_sessions(&mut tx, name).await?;
        sqlx::query("DELETE FROM disabled_users WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let result = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    async fn set_user_state(&self, name: &str, state: UserState) -> Result<bool, ServerError> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        match state {
            _ if !exists => {}
            UserState::Enabled => {
                sqlx::query("DELETE FROM disabled_users WHERE user_name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            UserState::Disabled => {
                sqlx::query(
                    "INSERT INTO disabled_users (user_name, disabled_at) VALUES ($1, $2) \
                     ON CONFLICT (user_name) DO NOTHING",
                )
                .bind(name)
                .bind(patchbay_core::clock::unix_seconds())
                .execute(&mut *tx)
                .await?;
                end_sessions(&mut tx, name).await?;
            }
        }
        tx.commit().await?;
        Ok(exists)
    }

    async fn set_user_password(
        &self,
        name: &str,
        password_hash: &str,
    ) -> Result<bool, ServerError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
            .bind(password_hash)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        end_sessions(&mut tx, name).await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    async fn add_session(&self, session: &SessionRecord) -> Result<(), ServerError> {
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(patchbay_core::clock::unix_seconds())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_name, role, csrf, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.id_hash)
        .bind(&session.user)
        .bind(session.role.as_str())
        .bind(&session.csrf)
        .bind(session.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn session(&self, id_hash: &str) -> Result<Option<SessionRecord>, ServerError> {
        // The role is the user's, not the one stored when the session opened; a session of a
        // disabled user is not found (disabling deletes them too: this is the second lock).
        let row = sqlx::query(
            "SELECT s.id_hash, s.user_name, u.role, s.csrf, s.expires_at \
             FROM sessions s JOIN users u ON u.name = s.user_name \
             WHERE s.id_hash = $1 \
             AND NOT EXISTS (SELECT 1 FROM disabled_users d WHERE d.user_name = s.user_name)",
        )
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(SessionRecord {
                id_hash: row.try_get("id_hash")?,
                user: row.try_get("user_name")?,
                role: parse_role(row.try_get::<&str, _>("role")?)?,
                csrf: row.try_get("csrf")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    async fn delete_session(&self, id_hash: &str) -> Result<(), ServerError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn add_channel(
        &self,
        name: &ChannelName,
        updated: &str,
        at: i64,
    ) -> Result<(), ServerError> {
        let result = sqlx::query(
            "INSERT INTO channels (name, serial, updated, created_at) VALUES ($1, 1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name.as_str())
        .bind(updated)
        .bind(at)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(ServerError::Conflict(format!(
                "channel {name} already exists"
            )));
        }
        Ok(())
    }

    async fn channels(&self) -> Result<Vec<ChannelRecord>, ServerError> {
        let rows = sqlx::query("SELECT name, serial, updated FROM channels ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ChannelRecord {
                    name: parse("channel name", row.try_get::<&str, _>("name")?)?,
                    serial: u64::try_from(row.try_get::<i64, _>("serial")?)
                        .map_err(|e| corrupt("channel serial", e))?,
                    updated: row.try_get("updated")?,
                })
            })
            .collect()
    }

    async fn remove_channel(&self, name: &ChannelName) -> Result<(), ServerError> {
        sqlx::query("DELETE FROM channels WHERE name = $1")
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn restore_channel(&self, channel: &ChannelRecord) -> Result<(), ServerError> {
        sqlx::query("UPDATE channels SET serial = $2, updated = $3 WHERE name = $1")
            .bind(channel.name.as_str())
            .bind(to_i64(channel.serial))
            .bind(&channel.updated)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn remove_rollout(
        &self,
        channel: &ChannelName,
        build_id: &BuildId,
    ) -> Result<(), ServerError> {
        sqlx::query("DELETE FROM rollouts WHERE channel = $1 AND build_id = $2")
            .bind(channel.as_str())
            .bind(build_id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn bump_channel(&self, name: &ChannelName, updated: &str) -> Result<u64, ServerError> {
        let serial: Option<i64> = sqlx::query_scalar(
            "UPDATE channels SET serial = serial + 1, updated = $2 WHERE name = $1 RETURNING serial",
        )
        .bind(name.as_str())
        .bind(updated)
        .fetch_optional(&self.pool)
        .await?;
        let serial = serial.ok_or_else(|| {
            ServerError::NotFound(format!(
                "no channel {name}; create it with POST /api/v1/channels"
            ))
        })?;
        u64::try_from(serial).map_err(|e| corrupt("channel serial", e))
    }

    async fn rollouts(
        &self,
        channel: &ChannelName,
    ) -> Result<BTreeMap<BuildId, KernelRollout>, ServerError> {
        let rows = sqlx::query(
            "SELECT build_id, level, previous, effective_at, waves, pinned FROM rollouts \
             WHERE channel = $1",
        )
        .bind(channel.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut map = BTreeMap::new();
        for row in &rows {
            let previous: Option<i64> = row.try_get("previous")?;
            let waves: Vec<Wave> = serde_json::from_str(row.try_get::<&str, _>("waves")?)
                .map_err(|e| corrupt("rollout waves", e))?;
            map.insert(
                parse("rollout build-id", row.try_get::<&str, _>("build_id")?)?,
                KernelRollout {
                    level: level_from("rollout level", row.try_get("level")?)?,
                    previous: previous
                        .map(|n| level_from("rollout previous", n))
                        .transpose()?,
                    effective_at: row.try_get("effective_at")?,
                    waves,
                    pinned: row.try_get::<i64, _>("pinned")? != 0,
                },
            );
        }
        Ok(map)
    }

    async fn set_rollout(
        &self,
        channel: &ChannelName,
        build_id: &BuildId,
        rollout: &KernelRollout,
    ) -> Result<(), ServerError> {
        let waves = serde_json::to_string(&rollout.waves).map_err(|e| corrupt("waves", e))?;
        sqlx::query(
            "INSERT INTO rollouts (channel, build_id, level, previous, effective_at, waves, pinned) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (channel, build_id) DO UPDATE SET level = excluded.level, \
             previous = excluded.previous, effective_at = excluded.effective_at, \
             waves = excluded.waves, pinned = excluded.pinned",
        )
        .bind(channel.as_str())
        .bind(build_id.as_str())
        .bind(i64::from(rollout.level.get()))
        .bind(rollout.previous.map(|l| i64::from(l.get())))
        .bind(rollout.effective_at)
        .bind(waves)
        .bind(i64::from(rollout.pinned))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn add_registration_key(
        &self,
        key_hash: &str,
        channel: &ChannelName,
        at: i64,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO registration_keys (key_hash, channel, created_at) VALUES ($1, $2, $3)",
        )
        .bind(key_hash)
        .bind(channel.as_str())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn registration_key_channel(
        &self,
        key_hash: &str,
    ) -> Result<Option<ChannelName>, ServerError> {
        let channel: Option<String> =
            sqlx::query_scalar("SELECT channel FROM registration_keys WHERE key_hash = $1")
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await?;
        channel
            .map(|c| parse("registration channel", &c))
            .transpose()
    }

    async fn add_level(&self, level: &LevelRecord) -> Result<(), ServerError> {
        let result = sqlx::query(
            "INSERT INTO levels (build_id, level, kernel_release, upstream_version, sha256, \
             length, manifest, published_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (build_id, level) DO NOTHING",
        )
        .bind(level.build_id.as_str())
        .bind(i64::from(level.level.get()))
        .bind(level.kernel_release.as_str())
        .bind(level.upstream_version.to_string())
        .bind(level.sha256.as_str())
        .bind(to_i64(level.length))
        .bind(manifest_text(&level.manifest)?)
        .bind(level.published_at)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(ServerError::Conflict(format!(
                "level {} of kernel {} is already published",
                level.level, level.build_id
            )));
        }
        Ok(())
    }

    async fn remove_level(&self, build_id: &BuildId, level: PatchLevel) -> Result<(), ServerError> {
        let mut tx = self.pool.begin().await?;
        for statement in [
            "DELETE FROM level_reports WHERE build_id = $1 AND level = $2",
            "DELETE FROM levels WHERE build_id = $1 AND level = $2",
        ] {
            sqlx::query(statement)
                .bind(build_id.as_str())
                .bind(i64::from(level.get()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn put_report(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
        report: &UpgradeReport,
        at: i64,
    ) -> Result<bool, ServerError> {
        let json = serde_json::to_string(report).map_err(|e| corrupt("upgrade report", e))?;
        let mut tx = self.pool.begin().await?;
        let replaced = sqlx::query("DELETE FROM level_reports WHERE build_id = $1 AND level = $2")
            .bind(build_id.as_str())
            .bind(i64::from(level.get()))
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        sqlx::query(
            "INSERT INTO level_reports (build_id, level, report, attached_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(build_id.as_str())
        .bind(i64::from(level.get()))
        .bind(json)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(replaced)
    }

    async fn report(
        &self,
        build_id: &BuildId,
        level: PatchLevel,
    ) -> Result<Option<UpgradeReport>, ServerError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT report FROM level_reports WHERE build_id = $1 AND level = $2",
        )
        .bind(build_id.as_str())
        .bind(i64::from(level.get()))
        .fetch_optional(&self.pool)
        .await?;
        text.map(|t| UpgradeReport::parse(t.as_bytes()).map_err(|e| corrupt("upgrade report", e)))
            .transpose()
    }

    async fn reported_levels(&self) -> Result<Vec<(BuildId, PatchLevel)>, ServerError> {
        let rows =
            sqlx::query("SELECT build_id, level FROM level_reports ORDER BY build_id, level")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    parse("report build-id", row.try_get::<&str, _>("build_id")?)?,
                    level_from("report level", row.try_get("level")?)?,
                ))
            })
            .collect()
    }

    async fn levels(&self) -> Result<Vec<LevelRecord>, ServerError> {
        self.select_levels(None).await
    }

    async fn levels_of(&self, build_id: &BuildId) -> Result<Vec<LevelRecord>, ServerError> {
        self.select_levels(Some(build_id)).await
    }

    async fn add_host(&self, host: &HostRecord) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO hosts (id, token_hash, hostname, channel, seed, kernel_release, \
             build_id, active_level, state, last_error, agent_version, registered_at, \
             last_checkin, kernel_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&host.id)
        .bind(&host.token_hash)
        .bind(&host.hostname)
        .bind(host.channel.as_str())
        .bind(host.seed.as_str())
        .bind(host.kernel_release.as_str())
        .bind(host.build_id.as_str())
        .bind(host.active_level.map(|l| i64::from(l.get())))
        .bind(host.state.as_str())
        .bind(&host.last_error)
        .bind(&host.agent_version)
        .bind(host.registered_at)
        .bind(host.last_checkin)
        .bind(host.upstream_version.map(|v| v.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn host_by_token(&self, token_hash: &str) -> Result<Option<HostRecord>, ServerError> {
        let row = sqlx::query(select_hosts!("WHERE token_hash = $1"))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(host_from_row).transpose()
    }

    async fn record_checkin(&self, host_id: &str, c: &CheckIn) -> Result<(), ServerError> {
        let (reply, done) = tokio::sync::oneshot::channel();
        let gone = || ServerError::Database(sqlx::Error::PoolClosed);
        self.checkins
            .send((host_id.to_owned(), c.clone(), reply))
            .await
            .map_err(|_| gone())?;
        done.await
            .map_err(|_| gone())?
            .map_err(|e| ServerError::Database(sqlx::Error::Protocol(format!("check-in: {e}"))))
    }

    async fn hosts(&self, filter: &HostFilter) -> Result<Vec<HostRecord>, ServerError> {
        let rows = sqlx::query(select_hosts!(
            "WHERE ($1 IS NULL OR channel = $1) \
             AND ($2 IS NULL OR build_id = $2) AND ($3 IS NULL OR state = $3) \
             ORDER BY hostname, hosts.id LIMIT $4 OFFSET $5"
        ))
        .bind(filter.channel.as_ref().map(|c| c.as_str().to_owned()))
        .bind(filter.build_id.as_ref().map(|b| b.as_str().to_owned()))
        .bind(filter.state.map(HostState::as_str))
        .bind(filter.limit.map_or(-1, i64::from))
        .bind(i64::from(filter.offset))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(host_from_row).collect()
    }

    async fn count_hosts(&self, filter: &HostFilter) -> Result<u64, ServerError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM hosts WHERE ($1 IS NULL OR channel = $1) \
             AND ($2 IS NULL OR build_id = $2) AND ($3 IS NULL OR state = $3)",
        )
        .bind(filter.channel.as_ref().map(|c| c.as_str().to_owned()))
        .bind(filter.build_id.as_ref().map(|b| b.as_str().to_owned()))
        .bind(filter.state.map(HostState::as_str))
        .fetch_one(&self.pool)
        .await?;
        u64::try_from(n).map_err(|e| corrupt("host count", e))
    }

    async fn record_snapshot(&self, x: &ExposureSnapshot) -> Result<(), ServerError> {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO exposure_snapshots (day, critical, high, medium, low, unscored, hosts, \
             hosts_breached) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (day) DO UPDATE \
             SET critical = excluded.critical, high = excluded.high, medium = excluded.medium, \
             low = excluded.low, unscored = excluded.unscored, hosts = excluded.hosts, \
             hosts_breached = excluded.hosts_breached",
        )
        .bind(&x.day)
        .bind(n(x.critical))
        .bind(n(x.high))
        .bind(n(x.medium))
        .bind(n(x.low))
        .bind(n(x.unscored))
        .bind(n(x.hosts))
        .bind(n(x.hosts_breached))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn snapshots(&self, limit: u32) -> Result<Vec<ExposureSnapshot>, ServerError> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM exposure_snapshots ORDER BY day DESC LIMIT $1) \
             ORDER BY day",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let n = |row: &sqlx::sqlite::SqliteRow, c: &str| -> Result<u64, ServerError> {
            u64::try_from(row.try_get::<i64, _>(c)?).map_err(|e| corrupt("snapshot", e))
        };
        rows.iter()
            .map(|row| {
                Ok(ExposureSnapshot {
                    day: row.try_get("day")?,
                    critical: n(row, "critical")?,
                    high: n(row, "high")?,
                    medium: n(row, "medium")?,
                    low: n(row, "low")?,
                    unscored: n(row, "unscored")?,
                    hosts: n(row, "hosts")?,
                    hosts_breached: n(row, "hosts_breached")?,
                })
            })
            .collect()
    }

    async fn checkin_count(&self) -> Result<u64, ServerError> {
        let n: i64 = sqlx::query_scalar("SELECT value FROM counters WHERE name = 'checkins'")
            .fetch_optional(&self.pool)
            .await?
            .unwrap_or(0);
        u64::try_from(n).map_err(|e| corrupt("check-in count", e))
    }

    async fn prune_checkins(&self, before: i64) -> Result<u64, ServerError> {
        let result = sqlx::query("DELETE FROM checkins WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn host(&self, id: &str) -> Result<Option<HostRecord>, ServerError> {
        let row = sqlx::query(select_hosts!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(host_from_row).transpose()
    }

    async fn audit(
        &self,
        at: i64,
        actor: &str,
        action: &str,
        detail: &str,
        targets_version: Option<u64>,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, detail, targets_version) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(at)
        .bind(actor)
        .bind(action)
        .bind(detail)
        .bind(targets_version.map(to_i64))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, ServerError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, detail, targets_version FROM audit \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let version: Option<i64> = row.try_get("targets_version")?;
                Ok(AuditEntry {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    detail: row.try_get("detail")?,
                    targets_version: version.and_then(|v| u64::try_from(v).ok()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn store_with_session(role: Role) -> (tempfile::TempDir, SqliteStore, SessionRecord) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("patchbay.db"))
            .await
            .unwrap();
        let user = UserRecord {
            name: "otto".into(),
            password_hash: "not a hash".into(),
            role,
            state: UserState::Enabled,
        };
        store.add_user(&user, 0).await.unwrap();
        let session = SessionRecord {
            id_hash: "ab".repeat(32),
            user: user.name,
            // What the login stored; never read back.
            role: Role::Admin,
            csrf: "c_1".into(),
            expires_at: i64::MAX,
        };
        store.add_session(&session).await.unwrap();
        (dir, store, session)
    }

    #[tokio::test]
    async fn a_sessions_role_is_its_users_role_now() {
        let (_dir, store, session) = store_with_session(Role::Operator).await;
        let found = store.session(&session.id_hash).await.unwrap().unwrap();
        assert_eq!(found.role, Role::Operator);
        // A role changed behind the session counts at the next lookup.
        sqlx::query("UPDATE users SET role = 'viewer' WHERE name = 'otto'")
            .execute(&store.pool)
            .await
            .unwrap();
        let found = store.session(&session.id_hash).await.unwrap().unwrap();
        assert_eq!(found.role, Role::Viewer);
    }

    #[tokio::test]
    async fn a_disabled_users_session_is_not_found_even_if_its_row_stayed() {
        let (_dir, store, session) = store_with_session(Role::Viewer).await;
        // The lookup's own check, without the deletion `set_user_state` does too.
        sqlx::query("INSERT INTO disabled_users (user_name, disabled_at) VALUES ('otto', 0)")
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(store.session(&session.id_hash).await.unwrap(), None);
        assert!(store
            .set_user_state("otto", UserState::Enabled)
            .await
            .unwrap());
        assert!(store.session(&session.id_hash).await.unwrap().is_some());
        // Disabling through the store deletes the sessions: enabling gives none back.
        assert!(store
            .set_user_state("otto", UserState::Disabled)
            .await
            .unwrap());
        assert!(store
            .set_user_state("otto", UserState::Enabled)
            .await
            .unwrap());
        assert_eq!(store.session(&session.id_hash).await.unwrap(), None);
        assert!(!store
            .set_user_state("nobody", UserState::Disabled)
            .await
            .unwrap());
    }
}

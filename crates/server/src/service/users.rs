//! Dashboard users after `user add`: delete, disable, enable, new password. One function for
//! the CLI and the dashboard, with one audit entry per change.
//!
//! A change ends the user's sessions in the same database transaction (`Store::remove_user`,
//! `set_user_state`, `set_user_password`), and a session's role is read from its user at each
//! request: nothing an administrator changes waits for a session to expire.
//!
//! A child of [`crate::service`] because it checks and changes the users under the service's
//! mutation lock, so that two changes (the CLI beside `serve`, or two administrators) cannot
//! both take away the last enabled admin.

use std::fmt;

use patchbay_core::clock::unix_seconds;

use crate::auth::Role;
use crate::error::ServerError;
use crate::store::{UserRecord, UserState};
use crate::Service;

/// What an administrator does to an existing dashboard user.
#[derive(Clone, PartialEq, Eq)]
pub enum UserChange {
    /// Deletes the user and their sessions.
    Delete,
    /// Keeps the user but refuses their logins; ends their sessions.
    Disable,
    /// Lets a disabled user log in again.
    Enable,
    /// Sets a new password (at least 8 characters); ends their sessions.
    NewPassword(String),
}

impl UserChange {
    /// The audit action: `user-delete`, `user-disable`, `user-enable`, `user-password`.
    pub fn audit_action(&self) -> &'static str {
        match self {
            UserChange::Delete => "user-delete",
            UserChange::Disable => "user-disable",
            UserChange::Enable => "user-enable",
            UserChange::NewPassword(_) => "user-password",
        }
    }

    /// Whether the change leaves the user unable to log in.
    fn locks_out(&self) -> bool {
        matches!(self, UserChange::Delete | UserChange::Disable)
    }
}

/// The password is never printed.
impl fmt::Debug for UserChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.audit_action())
    }
}

/// A [`UserChange`] as the store applies it: the password hashed.
enum StoredChange {
    Delete,
    State(UserState),
    PasswordHash(String),
}

impl Service {
    /// Every dashboard user, by name (password hashes are never serialised).
    pub async fn users(&self) -> Result<Vec<UserRecord>, ServerError> {
        self.store.users().await
    }

    /// The dashboard user of that name; 404 naming where they are listed.
    pub async fn user_by_name(&self, name: &str) -> Result<UserRecord, ServerError> {
        self.store.user(name).await?.ok_or_else(|| {
            ServerError::NotFound(format!(
                "no dashboard user {name:?}; `patchbay-server user list` or the dashboard's \
                 Access page lists them"
            ))
        })
    }

    /// Applies `change` to user `name`, audited as `actor`'s `user-delete`, `user-disable`,
    /// `user-enable` or `user-password`. The user's sessions end with the change. Deleting or
    /// disabling the last enabled admin is refused (409) and changes nothing: nobody could
    /// manage users, tokens or keys from the dashboard any more.
    pub async fn change_user(
        &self,
        actor: &str,
        name: &str,
        change: UserChange,
    ) -> Result<(), ServerError> {
        // Hashed before the lock is taken: Argon2 takes a while and holds nothing.
        let stored = match &change {
            UserChange::Delete => StoredChange::Delete,
            UserChange::Disable => StoredChange::State(UserState::Disabled),
            UserChange::Enable => StoredChange::State(UserState::Enabled),
            UserChange::NewPassword(password) => {
                StoredChange::PasswordHash(crate::auth::hash_password(password)?)
            }
        };
        let _guard = self.lock_mutations().await?;
        let user = self.user_by_name(name).await?;
        if change.locks_out() && user.role == Role::Admin && user.state == UserState::Enabled {
            let other_admins = self
                .store
                .users()
                .await?
                .into_iter()
                .filter(|u| u.name != user.name)
                .filter(|u| u.role == Role::Admin && u.state == UserState::Enabled)
                .count();
            if other_admins == 0 {
                return Err(ServerError::Conflict(format!(
                    "{name} is the last enabled admin: without one nobody can manage users, \
                     tokens or registration keys from the dashboard; add or enable another \
                     admin first (patchbay-server user add --role admin)"
                )));
            }
        }
        let found = match &stored {
            StoredChange::Delete => self.store.remove_user(name).await?,
            StoredChange::State(state) => self.store.set_user_state(name, *state).await?,
            StoredChange::PasswordHash(hash) => self.store.set_user_password(name, hash).await?,
        };
        if !found {
            // Every change takes the lock, so only a change from outside Patchbay gets here.
            return Err(ServerError::NotFound(format!(
                "user {name} was deleted meanwhile; nothing changed"
            )));
        }
        let detail = match &change {
            UserChange::Delete => format!("deleted {} user {name}; sessions ended", user.role),
            UserChange::Disable => format!("disabled {} user {name}; sessions ended", user.role),
            UserChange::Enable => format!("enabled {} user {name}", user.role),
            UserChange::NewPassword(_) => {
                format!("new password for {} user {name}; sessions ended", user.role)
            }
        };
        self.store
            .audit(unix_seconds(), actor, change.audit_action(), &detail, None)
            .await
    }
}

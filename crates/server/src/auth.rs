//! Who may do what: roles for API tokens and dashboard users, password hashing, sessions.
//!
//! Roles are ordered: a viewer reads; an operator also publishes and changes channels; an
//! admin also manages registration keys, tokens and users.

use std::fmt;
use std::str::FromStr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// What a token or user may do; ordered, each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: hosts, kernels, channels, exposure, the dashboard.
    Viewer,
    /// Also publishes bundles and changes channels (promote, pin, rollback).
    Operator,
    /// Also manages registration keys, API tokens and users.
    Admin,
}

impl Role {
    /// The lowercase name used in the API, the CLI and the database: `viewer`, `operator`,
    /// `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, ServerError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(ServerError::BadRequest(format!(
                "role {other:?} is not one of viewer, operator, admin"
            ))),
        }
    }
}

/// An authenticated caller: a token's or a user's name (the audit actor) and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's or user's name, as written to the audit log.
    pub actor: String,
    /// What the caller may do.
    pub role: Role,
}

impl Caller {
    /// Refuses (403) unless the caller has at least `role`; `what` names the action.
    pub fn require(&self, role: Role, what: &str) -> Result<(), ServerError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ServerError::Forbidden(format!(
                "{} has role {}; {what} needs role {role} or higher",
                self.actor, self.role
            )))
        }
    }
}

/// The longest user name the login form takes (stored names have at most 64 bytes; a bit of
/// room so a mistyped name is answered as unknown, not as malformed).
pub const MAX_LOGIN_NAME_BYTES: usize = 256;
/// The longest password the login form takes (and `user add` sets).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The largest login form body: both fields at their limit, every byte percent-encoded (3
/// bytes each), plus the CSRF token and the field names. A larger body is refused (413)
/// before it is read.
pub const LOGIN_FORM_MAX_BYTES: usize = 3 * (MAX_LOGIN_NAME_BYTES + MAX_PASSWORD_BYTES) + 1024;

/// Refuses (400) a login whose user name or password is longer than the form takes, before
/// anything is hashed or counted.
pub fn check_login_fields(name: &str, password: &str) -> Result<(), ServerError> {
    if name.len() > MAX_LOGIN_NAME_BYTES {
        return Err(ServerError::BadRequest(format!(
            "the user name has {} bytes; at most {MAX_LOGIN_NAME_BYTES} are taken",
            name.len()
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ServerError::BadRequest(format!(
            "the password has {} bytes; at most {MAX_PASSWORD_BYTES} are taken",
            password.len()
        )));
    }
    Ok(())
}

/// An Argon2id hash in PHC format.
pub fn hash_password(password: &str) -> Result<String, ServerError> {
    if password.chars().count() < 8 {
        return Err(ServerError::BadRequest(
            "passwords need at least 8 characters".into(),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ServerError::BadRequest(format!(
            "passwords may have at most {MAX_PASSWORD_BYTES} bytes (the login form takes no more)"
        )));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| ServerError::Tuf(format!("random: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| ServerError::Tuf(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServerError::Tuf(format!("hash password: {e}")))
}

/// Whether `password` matches the PHC string `phc`; a malformed `phc` matches nothing.
pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Whether two secrets (CSRF tokens) are equal, in a time that depends on their length only:
/// an early exit at the first differing byte would let a caller find a token byte by byte.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(difference) == 0
}

/// A user name: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_username(name: &str) -> Result<(), ServerError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ServerError::BadRequest(format!(
            "user name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roles_are_ordered_and_checked() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        let viewer = Caller {
            actor: "v".into(),
            role: Role::Viewer,
        };
        assert!(viewer.require(Role::Viewer, "read").is_ok());
        let err = viewer.require(Role::Operator, "promote").unwrap_err();
        assert!(
            err.to_string().contains("needs role operator"),
            "{:?} does not contain {:?}",
            err.to_string(),
            "needs role operator"
        );
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("x", "not a hash"));
        assert!(hash_password("short").is_err());
        assert!(hash_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(secrets_equal("c_0123", "c_0123"));
        assert!(!secrets_equal("c_0123", "c_0124"));
        assert!(!secrets_equal("c_0123", "c_012"));
        assert!(!secrets_equal("", "x"));
    }
}

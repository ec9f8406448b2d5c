//! Newtypes for security-relevant identifiers. Each is parsed once, with an error that says what
//! was wrong; holding one means the value is well-formed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value could not be parsed into one of the identifier newtypes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct IdError {
    what: &'static str,
    value: String,
    reason: &'static str,
}

impl IdError {
    pub(crate) fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        // Keep error messages bounded even for hostile input.
        let value: String = value.chars().take(80).collect();
        IdError {
            what,
            value,
            reason,
        }
    }
}

macro_rules! string_newtype_serde {
    ($t:ident) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl $t {
            /// The canonical text form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

/// The GNU build-id of a kernel image: lowercase hex, as the kernel exposes it in
/// `/sys/kernel/notes`. It identifies one exact build, unlike the release string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildId(String);

impl BuildId {
    /// Builds an id from the raw note descriptor bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        hex::encode(bytes).parse()
    }
}

impl FromStr for BuildId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "kernel build-id";
        // GNU build-ids are 20 bytes (sha1) by default; other styles range from 8 to 32 bytes.
        if s.len() < 16 || s.len() > 64 || !s.len().is_multiple_of(2) {
            return Err(IdError::new(WHAT, s, "expected 16 to 64 hex digits"));
        }
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::new(WHAT, s, "expected only hex digits"));
        }
        Ok(BuildId(s.to_ascii_lowercase()))
    }
}
string_newtype_serde!(BuildId);

/// A kernel release as `uname -r` prints it, e.g. `6.1.0-56-amd64`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRelease(String);

impl FromStr for KernelRelease {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "kernel release";
        if s.is_empty() || s.len() > 64 {
            return Err(IdError::new(WHAT, s, "expected 1 to 64 characters"));
        }
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '~');
        if !s.chars().all(allowed) {
            return Err(IdError::new(
                WHAT,
                s,
                "only letters, digits and . - _ + ~ are allowed",
            ));
        }
        Ok(KernelRelease(s.to_owned()))
    }
}
string_newtype_serde!(KernelRelease);

/// A cumulative patch level of one kernel build. Level 1 is the first patch; 0 means "no patch"
/// and is therefore not a `PatchLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct PatchLevel(u32);

impl PatchLevel {
    /// The largest level we accept; far beyond any real patch history, small enough for names.
    pub const MAX: u32 = 99_999;

    /// The numeric level.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for PatchLevel {
    type Error = IdError;
    fn try_from(n: u32) -> Result<Self, IdError> {
        if n == 0 || n > Self::MAX {
            return Err(IdError::new(
                "patch level",
                &n.to_string(),
                "expected 1 to 99999",
            ));
        }
        Ok(PatchLevel(n))
    }
}

impl From<PatchLevel> for u32 {
    fn from(l: PatchLevel) -> u32 {
        l.0
    }
}

impl FromStr for PatchLevel {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let n: u32 = s
            .parse()
            .map_err(|_| IdError::new("patch level", s, "expected a positive integer"))?;
        n.try_into()
    }
}

impl fmt::Display for PatchLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A kernel module name as the kernel knows it (`/sys/module/<name>`,
/// `/sys/kernel/livepatch/<name>`): lowercase letters, digits and `_`, at most 55 bytes
/// (`MODULE_NAME_LEN` - 1).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleName(String);

impl FromStr for ModuleName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "module name";
        if s.is_empty() || s.len() > 55 {
            return Err(IdError::new(WHAT, s, "expected 1 to 55 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(IdError::new(
                WHAT,
                s,
                "only lowercase letters, digits and _ are allowed",
            ));
        }
        Ok(ModuleName(s.to_owned()))
    }
}
string_newtype_serde!(ModuleName);

impl ModuleName {
    /// The livepatch module of a kernel build's patch level, `pb_<build-id's first 12 hex
    /// digits>_l<level>`: unique per (build, level), stable, and well within the 55 bytes (a
    /// build-id is lowercase hex, a level a number, so the name is always valid).
    pub fn of_level(build_id: &BuildId, level: PatchLevel) -> ModuleName {
        let prefix = build_id.as_str().get(..12).unwrap_or(build_id.as_str());
        ModuleName(format!("pb_{prefix}_l{level}"))
    }
}

/// The object a patched function lives in: `vmlinux` or a loadable module's name. The kernel
/// normalises `-` to `_` in module names, so we do too.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName(String);

impl ObjectName {
    /// The core kernel image.
    pub fn vmlinux() -> Self {
        ObjectName("vmlinux".to_owned())
    }

    /// Whether this is the core kernel rather than a module.
    pub fn is_vmlinux(&self) -> bool {
        self.0 == "vmlinux"
    }
}

impl FromStr for ObjectName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let normalised = s.replace('-', "_");
        let module: ModuleName = normalised
            .parse()
            .map_err(|_| IdError::new("object name", s, "expected vmlinux or a module name"))?;
        Ok(ObjectName(module.0))
    }
}
string_newtype_serde!(ObjectName);

/// A CVE identifier, `CVE-<year>-<sequence>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CveId(String);

impl FromStr for CveId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        const WHAT: &str = "CVE id";
        let upper = s.to_ascii_uppercase();
        let mut parts = upper.splitn(3, '-');
        let ok = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some("CVE"), Some(year), Some(seq))
                if year.len() == 4
                    && year.bytes().all(|b| b.is_ascii_digit())
                    && (4..=19).contains(&seq.len())
                    && seq.bytes().all(|b| b.is_ascii_digit())
        );
        if !ok {
            return Err(IdError::new(WHAT, s, "expected CVE-YYYY-NNNN"));
        }
        Ok(CveId(upper))
    }
}
string_newtype_serde!(CveId);

/// A SHA-256 digest in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sha256(String);

impl Sha256 {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest;
        Sha256(hex::encode(sha2::Sha256::digest(data)))
    }

    /// Digest of everything `reader` yields.
    pub fn of_reader(mut reader: impl std::io::Read) -> std::io::Result<Self> {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(buf.get(..n).unwrap_or_default());
        }
        Ok(Sha256(hex::encode(hasher.finalize())))
    }
}

impl FromStr for Sha256 {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdError::new("sha256", s, "expected 64 hex digits"));
        }
        Ok(Sha256(s.to_ascii_lowercase()))
    }
}
string_newtype_serde!(Sha256);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn build_id_is_lowercased_and_checked() {
        let id: BuildId = "ABCDEF0123456789abcdef0123456789ABCDEF01".parse().unwrap();
        assert_eq!(id.as_str(), "abcdef0123456789abcdef0123456789abcdef01");
        assert!("xyz".parse::<BuildId>().is_err());
        assert!("abc".parse::<BuildId>().is_err());
        assert!("zz23456789abcdef0123456789abcdef01234567"
            .parse::<BuildId>()
            .is_err());
        assert_eq!(
            BuildId::from_bytes(&[0xab; 20]).unwrap().as_str(),
            "ab".repeat(20)
        );
    }

    #[test]
    fn levels_start_at_one() {
        assert!("0".parse::<PatchLevel>().is_err());
        assert!("-1".parse::<PatchLevel>().is_err());
        assert!("100000".parse::<PatchLevel>().is_err());
        assert_eq!("7".parse::<PatchLevel>().unwrap().get(), 7);
        let json = serde_json::to_string(&PatchLevel::try_from(3).unwrap()).unwrap();
        assert_eq!(json, "3");
        assert!(serde_json::from_str::<PatchLevel>("0").is_err());
    }

    #[test]
    fn module_and_object_names() {
        assert!("patchbay_l1".parse::<ModuleName>().is_ok());
        let build: BuildId = "6A2B4AC77585B8CF102CBA771300E573C8489B69".parse().unwrap();
        let level: PatchLevel = 12.try_into().unwrap();
        let name = ModuleName::of_level(&build, level);
        assert_eq!(name.as_str(), "pb_6a2b4ac77585_l12");
        assert_eq!(name.as_str().parse::<ModuleName>().unwrap(), name);
        assert!("Patchbay".parse::<ModuleName>().is_err());
        assert!("a/b".parse::<ModuleName>().is_err());
        assert!("x".repeat(56).parse::<ModuleName>().is_err());
        let obj: ObjectName = "nf-tables".parse().unwrap();
        assert_eq!(obj.as_str(), "nf_tables");
        assert!(ObjectName::vmlinux().is_vmlinux());
        assert!("../etc".parse::<ObjectName>().is_err());
    }

    #[test]
    fn cve_ids() {
        assert_eq!(
            "cve-2024-1086".parse::<CveId>().unwrap().as_str(),
            "CVE-2024-1086"
        );
        for bad in [
            "CVE-24-1086",
            "CVE-2024-1",
            "CVE-2024-12a4",
            "2024-1086",
            "",
        ] {
            assert!(bad.parse::<CveId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn releases() {
        assert!("6.1.0-56-amd64".parse::<KernelRelease>().is_ok());
        assert!("6.1.0 56".parse::<KernelRelease>().is_err());
        assert!("../../x".parse::<KernelRelease>().is_err());
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            Sha256::of(b"abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Sha256::of_reader(&b"abc"[..]).unwrap(), Sha256::of(b"abc"));
    }
}

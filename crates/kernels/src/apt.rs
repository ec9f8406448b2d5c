//! What apt offers: kernel ABIs, package versions, the kbuild version to pair with headers,
//! and downloads. Nothing is hard-coded; ABIs come and go with Debian's security updates.

use std::cmp::Ordering;
use std::path::Path;
use std::process::Command;

use patchbay_core::DebianRelease;

use crate::release::{upstream_version_of, validate_package_version, Packages};
use crate::{archive, debversion, AvailableKernel, KernelError, KernelLine};

/// apt-cache regex for the unsigned images of every Debian kernel (the unsigned one carries
/// the same kernel as the signed one, without the EFI signature wrapper); the names are then
/// parsed and kept only when they belong to a supported line.
const IMAGE_SEARCH_PATTERN: &str = r"^linux-image-[0-9].*-unsigned$";

const UPDATE_HINT: &str = "check the network and the Debian mirror (PATCHBAY_DEBIAN_MIRROR)";

pub(crate) fn apt_cache() -> Command {
    archive::command("apt-cache")
}

pub(crate) fn apt_get() -> Command {
    archive::command("apt-get")
}

/// The kernels of every supported line Debian's archive offers, in [`DebianRelease`] order
/// (series, Debian release, flavour, then older before newer); per release the highest
/// package version.
pub(crate) fn available_kernels() -> Result<Vec<AvailableKernel>, KernelError> {
    archive::ensure_fresh()?;
    let output = crate::process::run(
        apt_cache().args(["search", "--names-only", IMAGE_SEARCH_PATTERN]),
        UPDATE_HINT,
    )?;
    let search = String::from_utf8_lossy(&output.stdout);
    let mut releases: Vec<DebianRelease> = search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|package| {
            package
                .strip_prefix("linux-image-")?
                .strip_suffix("-unsigned")
        })
        .filter_map(|name| name.parse().ok())
        .filter(|release| KernelLine::of(release).is_ok())
        .collect();
    releases.sort();
    releases.dedup();
    if releases.is_empty() {
        return Ok(Vec::new());
    }
    let packages: Vec<String> = releases.iter().map(Packages::image_package).collect();
    let stanzas = show(&packages)?;
    let mut kernels = Vec::with_capacity(releases.len());
    for release in releases {
        let package = release.image_package();
        let newest = stanzas
            .iter()
            .filter(|s| s.package == package)
            .map(|s| s.version.as_str())
            .filter(|v| upstream_version_of(v).is_ok())
            .max_by(|a, b| debversion::compare(a, b));
        // A search hit without a usable version (e.g. a virtual package) is not a kernel.
        if let Some(version) = newest {
            kernels.push(AvailableKernel {
                upstream_version: upstream_version_of(version)?,
                package_version: version.to_string(),
                release,
            });
        }
    }
    Ok(kernels)
}

/// Where the private apt state lives, for error messages.
pub(crate) fn lists_dir() -> String {
    crate::cache_root().join("apt").display().to_string()
}

/// One package stanza of `apt-cache show`, reduced to the fields used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stanza {
    pub(crate) package: String,
    pub(crate) version: String,
    pub(crate) depends: String,
}

pub(crate) fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut stanzas = Vec::new();
    for block in text.split("\n\n") {
        let mut stanza = Stanza {
            package: String::new(),
            version: String::new(),
            depends: String::new(),
        };
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("Package:") {
                stanza.package = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("Version:") {
                stanza.version = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("Depends:") {
                stanza.depends = value.trim().to_string();
            }
        }
        if !stanza.package.is_empty() && validate_package_version(&stanza.version).is_ok() {
            stanzas.push(stanza);
        }
    }
    stanzas
}

/// `apt-cache show` for package names or `name=version` specs (all versions apt knows).
fn show(specs: &[String]) -> Result<Vec<Stanza>, KernelError> {
    let output = crate::process::run(apt_cache().arg("show").args(specs), UPDATE_HINT)?;
    Ok(parse_stanzas(&String::from_utf8_lossy(&output.stdout)))
}

/// The Depends field of one exact package version, or `PackageNotInApt`.
fn depends_of(
    package: &str,
    version: &str,
    release: &DebianRelease,
) -> Result<String, KernelError> {
    let spec = format!("{package}={version}");
    let not_in_apt = || KernelError::PackageNotInApt {
        package: spec.clone(),
        release: release.to_string(),
    };
    let stanzas = show(std::slice::from_ref(&spec)).map_err(|e| match e {
        KernelError::CommandFailed { .. } => not_in_apt(),
        other => other,
    })?;
    stanzas
        .into_iter()
        .find(|s| s.package == package && s.version == version)
        .map(|s| s.depends)
        .ok_or_else(not_in_apt)
}

/// A dependency on the kbuild package, as written in the headers package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KbuildRequirement {
    pub(crate) package: String,
    /// `(relation, version)`, e.g. `(">=", "6.1.192-2")`; `None` when unversioned.
    pub(crate) constraint: Option<(String, String)>,
}

impl KbuildRequirement {
    fn describe(&self) -> String {
        match &self.constraint {
            Some((relation, version)) => format!("{} ({relation} {version})", self.package),
            None => self.package.clone(),
        }
    }

    fn accepts(&self, version: &str) -> bool {
        let Some((relation, required)) = &self.constraint else {
            return true;
        };
        let ordering = debversion::compare(version, required);
        match relation.as_str() {
            ">=" => ordering != Ordering::Less,
            "=" => ordering == Ordering::Equal,
            ">>" => ordering == Ordering::Greater,
            "<=" => ordering != Ordering::Greater,
            "<<" => ordering == Ordering::Less,
            _ => false,
        }
    }

    /// The exact required version if apt has it, else the newest acceptable one: apt itself
    /// would install the newest, and kbuild keeps compatibility within a series.
    pub(crate) fn choose<'a>(&self, available: &'a [String]) -> Option<&'a str> {
        if let Some((_, required)) = &self.constraint {
            if let Some(exact) = available
                .iter()
                .find(|v| debversion::compare(v, required) == Ordering::Equal)
            {
                return Some(exact);
            }
        }
        available
            .iter()
            .filter(|v| self.accepts(v))
            .max_by(|a, b| debversion::compare(a, b))
            .map(String::as_str)
    }
}

/// Finds `linux-kbuild-* (op version)` in a Depends field.
pub(crate) fn parse_kbuild_requirement(depends: &str) -> Option<KbuildRequirement> {
    depends
        .split([',', '|'])
        .map(str::trim)
        .filter(|d| d.starts_with("linux-kbuild-"))
        .find_map(|dependency| {
            let (name, rest) = match dependency.split_once('(') {
                Some((name, rest)) => (name.trim(), Some(rest)),
                None => (dependency, None),
            };
            // Drop an architecture qualifier such as ":any".
            let name = name.split(':').next().unwrap_or(name).to_string();
            let constraint = match rest {
                None => None,
                Some(rest) => {
                    let inner = rest.trim_end().strip_suffix(')')?.trim();
                    let (relation, version) = inner.split_once(char::is_whitespace)?;
                    Some((relation.trim().to_string(), version.trim().to_string()))
                }
            };
            Some(KbuildRequirement {
                package: name,
                constraint,
            })
        })
}

/// The four packages that make up one cached kernel, as `name=version` download specs, plus
/// the chosen kbuild version.
#[derive(Debug, Clone)]
pub(crate) struct KernelPackages {
    pub(crate) specs: Vec<String>,
    pub(crate) kbuild_package: String,
    pub(crate) kbuild_version: String,
}

pub(crate) fn kernel_packages(kernel: &AvailableKernel) -> Result<KernelPackages, KernelError> {
    let release = &kernel.release;
    let version = &kernel.package_version;
    let headers = release.headers_package();
    let depends = depends_of(&headers, version, release)?;
    let requirement =
        parse_kbuild_requirement(&depends).ok_or_else(|| KernelError::CommandFailed {
            command: format!("apt-cache show {headers}={version}"),
            status: "no linux-kbuild-* dependency".into(),
            stderr: format!("Depends: {depends}"),
            hint: "; the headers package changed layout, report this".into(),
        })?;
    let mut kbuild_versions: Vec<String> = show(std::slice::from_ref(&requirement.package))
        .map_err(|e| match e {
            KernelError::CommandFailed { .. } => KernelError::PackageNotInApt {
                package: requirement.package.clone(),
                release: release.to_string(),
            },
            other => other,
        })?
        .into_iter()
        .filter(|s| s.package == requirement.package)
        .map(|s| s.version)
        .collect();
    kbuild_versions.sort_by(|a, b| debversion::compare(a, b));
    kbuild_versions.dedup();
    let chosen = requirement
        .choose(&kbuild_versions)
        .ok_or_else(|| KernelError::KbuildUnavailable {
            package: requirement.package.clone(),
            release: release.to_string(),
            requirement: requirement.describe(),
            available: kbuild_versions.join(", "),
        })?
        .to_string();
    Ok(KernelPackages {
        specs: vec![
            format!("{}={version}", release.image_package()),
            format!("{headers}={version}"),
            format!("{}={version}", release.common_headers_package()),
            format!("{}={chosen}", requirement.package),
        ],
        kbuild_package: requirement.package,
        kbuild_version: chosen,
    })
}

/// `apt-get download` into `dir` (the .debs land there).
pub(crate) fn download(
    dir: &Path,
    specs: &[String],
    release: &DebianRelease,
) -> Result<(), KernelError> {
    archive::ensure_fresh()?;
    let mut command = apt_get();
    command.current_dir(dir).arg("download").args(specs);
    crate::process::run(&mut command, "").map(drop).map_err(|error| match error {
        KernelError::CommandFailed {
            command,
            status,
            stderr,
            ..
        } => KernelError::CommandFailed {
            command,
            status,
            stderr,
            hint: format!(
                "; if a version is gone from apt, resolve kernel {release} again \
                 (Debian may have dropped that build: pick one that `patchbay-build kernel list` lists)"
            ),
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn stanzas_parse() {
        let text = "Package: linux-kbuild-6.1\nVersion: 6.1.192-2\nDepends: libc6 (>= 2.34)\nDescription: x\n y\n\n\
                    Package: linux-kbuild-6.1\nVersion: 6.1.176-1\n\nPackage: broken\nVersion: ../x\n";
        let stanzas = parse_stanzas(text);
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0].version, "6.1.192-2");
        assert_eq!(stanzas[0].depends, "libc6 (>= 2.34)");
        assert_eq!(stanzas[1].version, "6.1.176-1");
    }

    #[test]
    fn kbuild_requirement_parses_and_chooses() {
        let depends = "linux-headers-6.1.0-47-common (= 6.1.170-3), linux-kbuild-6.1 (>= 6.1.170-3), linux-compiler-gcc-12-x86";
        let requirement = parse_kbuild_requirement(depends).unwrap();
        assert_eq!(requirement.package, "linux-kbuild-6.1");
        assert_eq!(
            requirement.constraint,
            Some((">=".to_string(), "6.1.170-3".to_string()))
        );
        let available = vec!["6.1.176-1".to_string(), "6.1.192-2".to_string()];
        // Not available exactly: newest acceptable.
        assert_eq!(requirement.choose(&available), Some("6.1.192-2"));

        let exact = parse_kbuild_requirement("linux-kbuild-6.1 (>= 6.1.176-1)").unwrap();
        assert_eq!(exact.choose(&available), Some("6.1.176-1"));

        let too_new = parse_kbuild_requirement("linux-kbuild-6.1 (>= 6.1.200-1)").unwrap();
        assert_eq!(too_new.choose(&available), None);

        let unversioned = parse_kbuild_requirement("foo, linux-kbuild-6.1").unwrap();
        assert_eq!(unversioned.constraint, None);
        assert_eq!(unversioned.choose(&available), Some("6.1.192-2"));

        assert!(parse_kbuild_requirement("libc6, gcc-12").is_none());
    }
}

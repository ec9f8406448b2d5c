//! The air-gapped archive: a gzipped tar with `metadata/<file>.json` (the TUF chain as served)
//! and `targets/<sha256>.<target name>` (consistent-snapshot names). Unpacking accepts only
//! regular files under those two directories with plain path components, within size limits;
//! what it unpacks is then verified by [`crate::SignedRepo::load`] like a server's answers.

use std::io::{Read, Write};
use std::path::{Component, Path};

use crate::UpdateError;

/// An archive larger than this, or holding more entries, is refused.
pub const MAX_ARCHIVE_BYTES: u64 = 4 << 30;
/// The most entries (files and directories) an archive may hold.
pub(crate) const MAX_ENTRIES: usize = 100_000;

fn archive_err(path: &Path, reason: impl Into<String>) -> UpdateError {
    UpdateError::Archive {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Writes an archive atomically to `output`. `metadata`: (file name, bytes); `targets`:
/// (consistent name `<sha256>.<target name>`, bytes).
pub fn write(
    output: &Path,
    metadata: &[(String, Vec<u8>)],
    targets: &[(String, Vec<u8>)],
) -> Result<(), UpdateError> {
    let io = |source| UpdateError::Io {
        path: output.display().to_string(),
        source,
    };
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile_in(dir, output)?;
    {
        let encoder = flate2::write::GzEncoder::new(&mut temp.1, flate2::Compression::default());
        let mut builder = tar::Builder::new(encoder);
        let entries = metadata
            .iter()
            .map(|(n, b)| (format!("metadata/{n}"), b))
            .chain(targets.iter().map(|(n, b)| (format!("targets/{n}"), b)));
        for (name, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            // A fixed mtime: the same metadata and targets give the same archive bytes.
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, &name, bytes.as_slice())
                .map_err(io)?;
        }
        let encoder = builder.into_inner().map_err(io)?;
        encoder.finish().map_err(io)?.flush().map_err(io)?;
    }
    temp.1.sync_all().map_err(io)?;
    std::fs::rename(&temp.0, output).map_err(io)?;
    Ok(())
}

fn tempfile_in(
    dir: &Path,
    output: &Path,
) -> Result<(std::path::PathBuf, std::fs::File), UpdateError> {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    let path = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let file = std::fs::File::create(&path).map_err(|source| UpdateError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok((path, file))
}

/// Unpacks `archive` into the empty directory `dest` (`dest/metadata`, `dest/targets`), with
/// the default [`crate::Limits`].
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), UpdateError> {
    unpack_with_limits(archive, dest, &crate::Limits::default())
}

/// Unpacks `archive` into `dest`, counting bytes as they are written: a metadata file above
/// `limits.max_metadata_bytes`, a target above `limits.max_bundle_bytes` (whatever its tar
/// header claims) or more than [`MAX_ARCHIVE_BYTES`] in all is refused at that point, so a
/// hostile archive (a gzip bomb) cannot fill the disk. The caller removes `dest` on error.
pub fn unpack_with_limits(
    archive: &Path,
    dest: &Path,
    limits: &crate::Limits,
) -> Result<(), UpdateError> {
    let file = std::fs::File::open(archive).map_err(|source| UpdateError::Io {
        path: archive.display().to_string(),
        source,
    })?;
    let decoder = flate2::read::GzDecoder::new(file).take(MAX_ARCHIVE_BYTES);
    let mut tar = tar::Archive::new(decoder);
    let entries = tar
        .entries()
        .map_err(|e| archive_err(archive, format!("not a gzipped tar: {e}")))?;
    let mut count = 0usize;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| archive_err(archive, format!("unreadable entry: {e}")))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(archive_err(
                archive,
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(archive_err(
                archive,
                "it holds an entry that is not a regular file (links are refused)",
            ));
        }
        let path = entry
            .path()
            .map_err(|e| archive_err(archive, format!("bad entry name: {e}")))?
            .into_owned();
        let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
        let top = path.components().next().and_then(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        });
        if !plain || !matches!(top, Some("metadata" | "targets")) || path.components().count() < 2 {
            return Err(archive_err(
                archive,
                format!(
                    "entry {} is outside metadata/ and targets/; not a Patchbay archive",
                    path.display()
                ),
            ));
        }
        let limit = if top == Some("metadata") {
            limits.max_metadata_bytes
        } else {
            limits.max_bundle_bytes
        };
        let declared = entry.header().size().unwrap_or(u64::MAX);
        if declared > limit {
            return Err(archive_err(
                archive,
                format!(
                    "entry {} is {declared} bytes, above the limit of {limit}",
                    path.display()
                ),
            ));
        }
        let target = dest.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|source| UpdateError::Io {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let mut out = std::fs::File::create(&target).map_err(|source| UpdateError::Io {
            path: target.display().to_string(),
            source,
        })?;
        // Belt and braces: never copy more than the limit, whatever the reader yields.
        let written = std::io::copy(&mut (&mut entry).take(limit.saturating_add(1)), &mut out)
            .map_err(|source| UpdateError::Io {
                path: target.display().to_string(),
                source,
            })?;
        if written > limit {
            return Err(archive_err(
                archive,
                format!(
                    "entry {} is larger than the limit of {limit}",
                    path.display()
                ),
            ));
        }
    }
    if !dest.join("metadata/timestamp.json").exists() {
        return Err(archive_err(
            archive,
            "it has no metadata/timestamp.json; make it with `patchbay-server export`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roundtrip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.gz");
        write(
            &archive,
            &[("timestamp.json".into(), b"{}".to_vec())],
            &[("ab.bundles/x/1.pbb".into(), b"data".to_vec())],
        )
        .unwrap();
        let out = dir.path().join("out");
        unpack(&archive, &out).unwrap();
        assert_eq!(
            std::fs::read(out.join("targets/ab.bundles/x/1.pbb")).unwrap(),
            b"data"
        );

        // An entry escaping the two directories is refused.
        let bad = dir.path().join("bad.tar.gz");
        {
            let f = std::fs::File::create(&bad).unwrap();
            let enc = flate2::write::GzEncoder::new(f, flate2::Compression::default());
            let mut b = tar::Builder::new(enc);
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "etc/passwd", &b"x"[..]).unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        let err = unpack(&bad, &dir.path().join("out2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside metadata/"), "{err}");
        let err = unpack(&dir.path().join("missing"), &dir.path().join("o3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }

    /// A gzip bomb: a metadata entry of 64 MiB of zeros compresses to ~64 KiB.
    #[test]
    fn oversized_entries_are_refused_while_unpacking() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 64 << 20];
        let bomb = dir.path().join("bomb.tar.gz");
        write(&bomb, &[("timestamp.json".into(), zeros.clone())], &[]).unwrap();
        assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
        let out = dir.path().join("out");
        let err = unpack(&bomb, &out).unwrap_err().to_string();
        assert!(err.contains("above the limit of 8388608"), "{err}");
        assert!(
            !out.join("metadata/timestamp.json").exists(),
            "nothing of it written"
        );

        // With smaller limits, a target's declared size is checked before it is written.
        let liar = dir.path().join("liar.tar.gz");
        {
            let f = std::fs::File::create(&liar).unwrap();
            let enc = flate2::write::GzEncoder::new(f, flate2::Compression::default());
            let mut b = tar::Builder::new(enc);
            let mut h = tar::Header::new_gnu();
            h.set_size(16);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "targets/x.pbb", &[1u8; 16][..])
                .unwrap();
            b.into_inner().unwrap().finish().unwrap();
        }
        let small = crate::Limits {
            max_bundle_bytes: 8,
            max_metadata_bytes: 8,
        };
        let err = unpack_with_limits(&liar, &dir.path().join("o4"), &small)
            .unwrap_err()
            .to_string();
        assert!(err.contains("above the limit of 8"), "{err}");
    }
}

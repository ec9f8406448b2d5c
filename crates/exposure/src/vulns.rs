//! The kernel CNA's own repository (`git.kernel.org/pub/scm/linux/security/vulns.git`):
//! `cve/published/<year>/CVE-*.json` (CVE 5 records), `.dyad` (vulnerable:fixed pairs), `.cvss`
//! (`<org-id> <vector>` on the first line), `.sha1`. The records carry no publication date; it
//! is the time of the commit that added the `.json` (`git log --diff-filter=A`), or, for a
//! directory that is not a git checkout, a `published.tsv` (`cve<TAB>published_utc`) beside
//! the records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{dyad, parse_day, CveDatabase, CveError, CveRecord, Day, KernelSeries, Score};

fn io(path: &Path, source: std::io::Error) -> CveError {
    CveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Every `CVE-*.json` under `dir` (recursively), sorted.
fn records(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CveError> {
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let path = entry.map_err(|e| io(dir, e))?.path();
        if path.is_dir() {
            records(&path, out)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("CVE-") && n.ends_with(".json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Publication days from git history: the commit that added each `CVE-*.json`.
fn dates_from_git(root: &Path) -> Result<BTreeMap<String, Day>, CveError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "log",
            "--diff-filter=A",
            "--format=@%cI",
            "--name-only",
            "--",
            "cve/published",
        ])
        .output()
        .map_err(|e| io(root, e))?;
    if !output.status.success() {
        return Err(CveError::malformed(
            format!("git log in {}", root.display()),
            String::from_utf8_lossy(&output.stderr),
        ));
    }
    let mut dates = BTreeMap::new();
    let mut current: Option<Day> = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if let Some(when) = line.strip_prefix('@') {
            current = Some(parse_day(when)?);
        } else if let (Some(day), Some(name)) = (current, Path::new(line).file_name()) {
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".json").filter(|n| n.starts_with("CVE-")) {
                // git log is newest first: keep the oldest add.
                dates.insert(id.to_owned(), day);
            }
        }
    }
    Ok(dates)
}

fn dates_from_tsv(path: &Path) -> Result<BTreeMap<String, Day>, CveError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let mut dates = BTreeMap::new();
    for line in text.lines().skip(1) {
        if let Some((id, when)) = line.split_once('\t') {
            dates.insert(id.trim().to_owned(), parse_day(when.trim())?);
        }
    }
    Ok(dates)
}

fn title(json: &serde_json::Value) -> String {
    json.pointer("/containers/cna/title")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .or_else(|| {
            json.pointer("/containers/cna/descriptions/0/value")
                .and_then(|d| d.as_str())
                .and_then(|d| {
                    d.lines()
                        .find(|l| l.contains(':') && !l.starts_with("In the"))
                })
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// The source files a CVE record names (`containers.cna.affected[].programFiles`), sorted.
fn program_files(json: &serde_json::Value) -> Vec<String> {
    let mut files: Vec<String> = json
        .pointer("/containers/cna/affected")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("programFiles").and_then(serde_json::Value::as_array))
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Reads a vulns checkout (or a directory of records) into a database of the CVEs that affect
/// the stable series `series` (e.g. `(6, 1)`).
pub fn sync(root: &Path, series: (u32, u32)) -> Result<CveDatabase, CveError> {
    sync_series(root, &[KernelSeries::from(series)])
}

/// Reads a vulns checkout (or a directory of records) into a database covering every series
/// in `series` (e.g. 6.1 and 6.12): each CVE that affects one of them, with its ranges in each
/// ([`dyad::ranges_for_series`]).
pub fn sync_series(root: &Path, series: &[KernelSeries]) -> Result<CveDatabase, CveError> {
    let published_dir = root.join("cve/published");
    let search = if published_dir.is_dir() {
        published_dir
    } else {
        root.to_path_buf()
    };
    let mut files = Vec::new();
    records(&search, &mut files)?;
    if files.is_empty() {
        return Err(CveError::malformed(
            root.display().to_string(),
            "no CVE-*.json records; give a checkout of the kernel CNA's vulns repository",
        ));
    }
    let dates = if root.join(".git").exists() {
        dates_from_git(root)?
    } else if root.join("published.tsv").exists() {
        dates_from_tsv(&root.join("published.tsv"))?
    } else {
        BTreeMap::new()
    };
    let mut db = CveDatabase::default();
    db.series.extend(series.iter().copied());
    for json_path in files {
        let id = json_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        crate::check_cve_id(&id)?;
        let dyad_path = json_path.with_extension("dyad");
        let Ok(dyad_text) = std::fs::read_to_string(&dyad_path) else {
            continue; // no version information: cannot place it on any series
        };
        let pairs = dyad::parse(&dyad_text, &dyad_path.display().to_string())?;
        let ranges: Vec<_> = series
            .iter()
            .flat_map(|s| dyad::ranges_for_series(&pairs, s.as_pair()))
            .collect();
        if ranges.is_empty() {
            continue;
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json_path).map_err(|e| io(&json_path, e))?)
                .map_err(|e| CveError::malformed(json_path.display().to_string(), e))?;
        let cvss_path = json_path.with_extension("cvss");
        let score = match std::fs::read_to_string(&cvss_path) {
            Ok(text) => {
                let vector = text
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .ok_or_else(|| {
                        CveError::malformed(cvss_path.display().to_string(), "no vector")
                    })?;
                Score::from_v3_vector(vector, "kernel.org CNA (vulns repo)")?
            }
            Err(_) => Score::Unscored,
        };
        db.records.insert(
            id.clone(),
            CveRecord {
                title: title(&json),
                published: dates.get(&id).copied(),
                score,
                ranges,
                kev: None,
                files: program_files(&json),
                id,
            },
        );
    }
    Ok(db)
}

//! The bundled 6.1 snapshot (`crates/exposure/data/`, from `../shared/data/cve`, with MITRE's
//! terms of use beside it): the kernel CNA's CVEs with their 6.1.y ranges, older CVEs from
//! other CNAs, and CISA KEV.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::version::UpstreamVersion;
use crate::{parse_day, CveDatabase, CveError, CveRecord, Kev, Range, Score};

/// The data directory of this crate (tests, the demo, `cve sync --snapshot`).
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

#[derive(Debug, Deserialize)]
struct File<T> {
    cves: Vec<T>,
}

#[derive(Debug, Deserialize)]
struct Cvss {
    vector: Option<String>,
    score: Option<f64>,
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SnapshotRange {
    introduced: String,
    fixed: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KevRef {
    #[serde(rename = "dateAdded")]
    date_added: String,
}

#[derive(Debug, Deserialize)]
struct CnaCve {
    cve: String,
    title: String,
    published: Option<String>,
    cvss3: Option<Cvss>,
    cvss2: Option<Cvss>,
    ranges_6_1: Vec<SnapshotRange>,
    kev: Option<KevRef>,
    #[serde(default)]
    files: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Fixed {
    /// None: a fix commit is known but not the 6.1.y release that has it; counted unfixed.
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LegacyCve {
    cve: String,
    title: Option<String>,
    published: Option<String>,
    cvss3: Option<Cvss>,
    cvss2: Option<Cvss>,
    fixed_6_1: Option<Fixed>,
    kev: Option<KevRef>,
}

fn score(cve: &str, v3: Option<&Cvss>, v2: Option<&Cvss>) -> Result<Score, CveError> {
    let source = |c: &Cvss| c.source.clone().unwrap_or_else(|| "unknown".into());
    if let Some(c) = v3 {
        if let Some(vector) = &c.vector {
            return Score::from_v3_vector(vector, &source(c))
                .map_err(|e| CveError::malformed(cve.to_owned(), e));
        }
    }
    if let Some(c) = v2 {
        if let Some(vector) = &c.vector {
            return Score::from_v2_vector(vector, &source(c))
                .map_err(|e| CveError::malformed(cve.to_owned(), e));
        }
    }
    // A published score without its vector (older NVD data): kept as published.
    if let Some((c, score)) = v3
        .or(v2)
        .and_then(|c| c.score.map(|s| (c, s)))
        .filter(|(_, s)| (0.0..=10.0).contains(s))
    {
        return Ok(Score::scored(score, None, &source(c)));
    }
    Ok(Score::Unscored)
}

fn kev(entry: Option<&KevRef>) -> Result<Option<Kev>, CveError> {
    entry
        .map(|k| parse_day(&k.date_added).map(|date_added| Kev { date_added }))
        .transpose()
}

fn day(text: &Option<String>) -> Result<Option<crate::Day>, CveError> {
    text.as_deref().map(parse_day).transpose()
}

fn version(text: &str, cve: &str) -> Result<UpstreamVersion, CveError> {
    text.parse()
        .map_err(|e| CveError::malformed(cve.to_owned(), e))
}

/// Parses `linux-6.1-kernel-cna-cves.json` (uncompressed bytes).
pub fn parse_cna(bytes: &[u8]) -> Result<CveDatabase, CveError> {
    let file: File<CnaCve> =
        serde_json::from_slice(bytes).map_err(|e| CveError::malformed("kernel CNA snapshot", e))?;
    let mut db = CveDatabase::default();
    for c in file.cves {
        crate::check_cve_id(&c.cve)?;
        let ranges = c
            .ranges_6_1
            .iter()
            .map(|r| {
                Ok(Range {
                    introduced: version(&r.introduced, &c.cve)?,
                    fixed: r.fixed.as_deref().map(|f| version(f, &c.cve)).transpose()?,
                })
            })
            .collect::<Result<Vec<_>, CveError>>()?;
        let record = CveRecord {
            score: score(&c.cve, c.cvss3.as_ref(), c.cvss2.as_ref())?,
            published: day(&c.published)?,
            kev: kev(c.kev.as_ref())?,
            id: c.cve.clone(),
            title: c.title,
            ranges,
            files: c.files,
        };
        db.records.insert(c.cve, record);
    }
    Ok(db)
}

/// Parses `linux-6.1-legacy-cves.json`: no fix recorded in 6.1.y means every 6.1.y release.
pub fn parse_legacy(bytes: &[u8]) -> Result<CveDatabase, CveError> {
    let file: File<LegacyCve> =
        serde_json::from_slice(bytes).map_err(|e| CveError::malformed("legacy CVE snapshot", e))?;
    let mut db = CveDatabase::default();
    for c in file.cves {
        crate::check_cve_id(&c.cve)?;
        let fixed = c
            .fixed_6_1
            .as_ref()
            .and_then(|f| f.version.as_deref())
            .map(|f| version(f, &c.cve))
            .transpose()?;
        let record = CveRecord {
            score: score(&c.cve, c.cvss3.as_ref(), c.cvss2.as_ref())?,
            published: day(&c.published)?,
            kev: kev(c.kev.as_ref())?,
            id: c.cve.clone(),
            title: c.title.unwrap_or_default(),
            ranges: vec![Range {
                introduced: UpstreamVersion::new(6, 1, 0),
                fixed,
            }],
            files: Vec::new(),
        };
        db.records.insert(c.cve, record);
    }
    Ok(db)
}

#[derive(Debug, Deserialize)]
struct KevFile {
    vulnerabilities: Vec<KevEntry>,
}

#[derive(Debug, Deserialize)]
struct KevEntry {
    #[serde(rename = "cveID")]
    cve_id: String,
    #[serde(rename = "dateAdded")]
    date_added: String,
}

/// Marks the CVEs listed in a CISA KEV feed (`known_exploited_vulnerabilities.json` format).
pub fn apply_kev(db: &mut CveDatabase, bytes: &[u8]) -> Result<usize, CveError> {
    let file: KevFile =
        serde_json::from_slice(bytes).map_err(|e| CveError::malformed("CISA KEV feed", e))?;
    let mut marked = 0;
    for entry in file.vulnerabilities {
        if let Some(record) = db.records.get_mut(&entry.cve_id) {
            record.kev = Some(Kev {
                date_added: parse_day(&entry.date_added)?,
            });
            marked += 1;
        }
    }
    Ok(marked)
}

fn read(path: &Path) -> Result<Vec<u8>, CveError> {
    let io = |source| CveError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(io)?;
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    }
    Ok(bytes)
}

/// The bundled snapshot compiled into the binary, for tools installed without this crate's
/// source (`patchbay-build upgrade` with no `--cve-db`).
pub fn embedded() -> Result<CveDatabase, CveError> {
    let mut db = parse_legacy(include_bytes!("../data/linux-6.1-legacy-cves.json"))?;
    let mut cna = Vec::new();
    flate2::read::GzDecoder::new(&include_bytes!("../data/linux-6.1-kernel-cna-cves.json.gz")[..])
        .read_to_end(&mut cna)
        .map_err(|e| CveError::malformed("embedded kernel CNA snapshot", e))?;
    db.merge(parse_cna(&cna)?);
    apply_kev(&mut db, include_bytes!("../data/kev-linux-kernel.json"))?;
    Ok(db)
}

/// Loads a snapshot directory: legacy CVEs, then the kernel CNA's (which win), then KEV.
/// All three files must be there (`linux-6.1-legacy-cves.json`,
/// `linux-6.1-kernel-cna-cves.json.gz`, `kev-linux-kernel.json`); one missing is a
/// [`CveError::Io`].
pub fn load(dir: &Path) -> Result<CveDatabase, CveError> {
    let mut db = parse_legacy(&read(&dir.join("linux-6.1-legacy-cves.json"))?)?;
    db.merge(parse_cna(&read(
        &dir.join("linux-6.1-kernel-cna-cves.json.gz"),
    )?)?);
    apply_kev(&mut db, &read(&dir.join("kev-linux-kernel.json"))?)?;
    Ok(db)
}

//! The bundled snapshot (`crates/exposure/data/`, with MITRE's terms of use beside it): per
//! stable series ([`SERIES`]) the kernel CNA's CVEs with their ranges in that series, older CVEs
//! from other CNAs where there is such a file, and CISA KEV.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{parse_day, CveDatabase, CveError, CveRecord, KernelSeries, Kev, Range, Score};
use patchbay_core::UpstreamVersion;

/// One stable series of the snapshot: which files hold its data and which field its ranges.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotSeries {
    /// The series, e.g. `6.12`.
    pub series: KernelSeries,
    /// The kernel CNA's CVEs affecting the series (gzipped JSON), e.g.
    /// `linux-6.12-kernel-cna-cves.json.gz`.
    pub cna_file: &'static str,
    /// The field of each CNA record with the series' ranges, e.g. `ranges_6_12`.
    pub ranges_field: &'static str,
    /// Older CVEs from other CNAs (`linux-6.1-legacy-cves.json`) and the field naming their
    /// fix in the series (`fixed_6_1`); `None`: the series has no such file.
    pub legacy: Option<(&'static str, &'static str)>,
    /// `cna_file`'s bytes, compiled in ([`embedded`]).
    embedded_cna: &'static [u8],
    /// The legacy file's bytes, compiled in.
    embedded_legacy: Option<&'static [u8]>,
}

/// The one table of series: everything series-specific about the snapshot is here. The first
/// entry is the series the crate started with, which [`load`], [`parse_cna`] and
/// [`parse_legacy`] keep meaning.
pub const SERIES: [SnapshotSeries; 2] = [
    SnapshotSeries {
        series: KernelSeries::new(6, 1),
        cna_file: "linux-6.1-kernel-cna-cves.json.gz",
        ranges_field: "ranges_6_1",
        legacy: Some(("linux-6.1-legacy-cves.json", "fixed_6_1")),
        embedded_cna: include_bytes!("../data/linux-6.1-kernel-cna-cves.json.gz"),
        embedded_legacy: Some(include_bytes!("../data/linux-6.1-legacy-cves.json")),
    },
    SnapshotSeries {
        series: KernelSeries::new(6, 12),
        cna_file: "linux-6.12-kernel-cna-cves.json.gz",
        ranges_field: "ranges_6_12",
        legacy: None,
        embedded_cna: include_bytes!("../data/linux-6.12-kernel-cna-cves.json.gz"),
        embedded_legacy: None,
    },
];

/// The CISA KEV file of the snapshot (all series).
pub const KEV_FILE: &str = "kev-linux-kernel.json";

/// The series the snapshot (and so Patchbay) has data for, oldest first.
pub fn series() -> impl Iterator<Item = KernelSeries> {
    SERIES.iter().map(|s| s.series)
}

/// The table entry of `series`, if the snapshot has data for it.
pub fn entry(series: KernelSeries) -> Option<&'static SnapshotSeries> {
    SERIES.iter().find(|s| s.series == series)
}

/// The first entry of [`SERIES`] (the series [`load`] and [`parse_cna`] read).
fn original() -> &'static SnapshotSeries {
    let [first, ..] = &SERIES;
    first
}

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
    kev: Option<KevRef>,
    #[serde(default)]
    files: Vec<String>,
    /// Every other field; the series' ranges (`ranges_6_1`, …) are taken from here.
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
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
    kev: Option<KevRef>,
    /// Every other field; the series' fix (`fixed_6_1`) is taken from here.
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

/// The value of `field` in a record's other fields, `None` when absent or null.
fn field<T: serde::de::DeserializeOwned>(
    rest: &mut BTreeMap<String, serde_json::Value>,
    field: &str,
    cve: &str,
) -> Result<Option<T>, CveError> {
    match rest.remove(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|e| CveError::malformed(format!("{cve} {field}"), e)),
    }
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

/// Parses the kernel CNA file of the first series of [`SERIES`] (uncompressed bytes).
pub fn parse_cna(bytes: &[u8]) -> Result<CveDatabase, CveError> {
    parse_cna_series(bytes, original())
}

/// Parses the kernel CNA file of one series (uncompressed bytes): each record's ranges are its
/// `series.ranges_field`, which every record must have. The database covers that series.
pub fn parse_cna_series(bytes: &[u8], series: &SnapshotSeries) -> Result<CveDatabase, CveError> {
    let file: File<CnaCve> = serde_json::from_slice(bytes).map_err(|e| {
        CveError::malformed(format!("kernel CNA snapshot ({}.y)", series.series), e)
    })?;
    let mut db = CveDatabase::default();
    db.series.insert(series.series);
    for mut c in file.cves {
        crate::check_cve_id(&c.cve)?;
        let raw: Vec<SnapshotRange> =
            field(&mut c.rest, series.ranges_field, &c.cve)?.ok_or_else(|| {
                CveError::malformed(
                    format!("kernel CNA snapshot, {}", c.cve),
                    format!(
                        "no {} field: is this the {}.y file ({})?",
                        series.ranges_field, series.series, series.cna_file
                    ),
                )
            })?;
        let ranges = raw
            .iter()
            .map(|r| {
                let range = Range {
                    introduced: version(&r.introduced, &c.cve)?,
                    fixed: r.fixed.as_deref().map(|f| version(f, &c.cve)).transpose()?,
                };
                if range.series() != series.series {
                    return Err(CveError::malformed(
                        c.cve.clone(),
                        format!(
                            "{} range starts at {}, outside {}.y",
                            series.ranges_field, range.introduced, series.series
                        ),
                    ));
                }
                Ok(range)
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

/// Parses the legacy file of the first series of [`SERIES`]
/// (`linux-6.1-legacy-cves.json`): no fix recorded in the series means every release of it.
pub fn parse_legacy(bytes: &[u8]) -> Result<CveDatabase, CveError> {
    let (_, fixed_field) = original().legacy.unwrap_or(("", ""));
    parse_legacy_series(bytes, original().series, fixed_field)
}

/// Parses a legacy file of `series` whose records name their fix in `fixed_field`.
fn parse_legacy_series(
    bytes: &[u8],
    series: KernelSeries,
    fixed_field: &str,
) -> Result<CveDatabase, CveError> {
    let file: File<LegacyCve> =
        serde_json::from_slice(bytes).map_err(|e| CveError::malformed("legacy CVE snapshot", e))?;
    let mut db = CveDatabase::default();
    db.series.insert(series);
    for mut c in file.cves {
        crate::check_cve_id(&c.cve)?;
        let fixed_entry: Option<Fixed> = field(&mut c.rest, fixed_field, &c.cve)?;
        let fixed = fixed_entry
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
                introduced: series.base(),
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

fn gunzip(gz: &[u8], what: &str) -> Result<Vec<u8>, CveError> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .map_err(|e| CveError::malformed(what.to_owned(), e))?;
    Ok(bytes)
}

/// One series' legacy records (if it has a file) with its kernel CNA records (which win).
fn series_db(
    s: &SnapshotSeries,
    legacy: Option<Vec<u8>>,
    cna: &[u8],
) -> Result<CveDatabase, CveError> {
    let mut db = CveDatabase::default();
    if let (Some((_, fixed_field)), Some(bytes)) = (s.legacy, legacy) {
        db.merge(parse_legacy_series(&bytes, s.series, fixed_field)?);
    }
    db.merge(parse_cna_series(cna, s)?);
    Ok(db)
}

/// The bundled snapshot of every series in [`SERIES`], compiled into the binary, for tools
/// installed without this crate's source (`patchbay-build upgrade` with no `--cve-db`).
pub fn embedded() -> Result<CveDatabase, CveError> {
    let mut db = CveDatabase::default();
    for s in &SERIES {
        let cna = gunzip(
            s.embedded_cna,
            &format!("embedded kernel CNA snapshot ({}.y)", s.series),
        )?;
        db.merge(series_db(s, s.embedded_legacy.map(<[u8]>::to_vec), &cna)?);
    }
    apply_kev(&mut db, include_bytes!("../data/kev-linux-kernel.json"))?;
    Ok(db)
}

/// Loads one series from a snapshot directory: its legacy CVEs (where the table names a
/// file), then the kernel CNA's (which win), then KEV. Each named file must be there; one
/// missing is a [`CveError::Io`].
pub fn load_series(dir: &Path, series: KernelSeries) -> Result<CveDatabase, CveError> {
    let s = entry(series).ok_or_else(|| {
        CveError::malformed(
            format!("snapshot series {series}"),
            format!(
                "the snapshot has no data for it (series: {})",
                SERIES
                    .iter()
                    .map(|s| s.series.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let legacy = s
        .legacy
        .map(|(file, _)| read(&dir.join(file)))
        .transpose()?;
    let mut db = series_db(s, legacy, &read(&dir.join(s.cna_file))?)?;
    apply_kev(&mut db, &read(&dir.join(KEV_FILE))?)?;
    Ok(db)
}

/// Loads the first series of [`SERIES`] (6.1) from a snapshot directory, as this function did
/// before there were series: `linux-6.1-legacy-cves.json`, `linux-6.1-kernel-cna-cves.json.gz`
/// and `kev-linux-kernel.json` must be there; one missing is a [`CveError::Io`].
/// [`load_all`] loads every series.
pub fn load(dir: &Path) -> Result<CveDatabase, CveError> {
    load_series(dir, original().series)
}

/// Loads every series of [`SERIES`] whose kernel CNA file the directory holds (an older
/// snapshot directory may hold only the first), then KEV. No series at all, or a series' other
/// files missing, is an error.
pub fn load_all(dir: &Path) -> Result<CveDatabase, CveError> {
    let mut db = CveDatabase::default();
    let mut found = false;
    for s in SERIES.iter().filter(|s| dir.join(s.cna_file).is_file()) {
        found = true;
        let legacy = s
            .legacy
            .map(|(file, _)| read(&dir.join(file)))
            .transpose()?;
        db.merge(series_db(s, legacy, &read(&dir.join(s.cna_file))?)?);
    }
    if !found {
        return Err(CveError::malformed(
            dir.display().to_string(),
            format!(
                "no snapshot file ({}); give the snapshot directory (crates/exposure/data)",
                SERIES
                    .iter()
                    .map(|s| s.cna_file)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    apply_kev(&mut db, &read(&dir.join(KEV_FILE))?)?;
    Ok(db)
}

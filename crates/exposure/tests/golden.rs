//! Golden tests on the bundled real data: the library's exposure counts against an independent
//! computation straight from the raw JSON, CVSS against published scores, the vulns-repository
//! ingester against the snapshot's ranges, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use patchbay_core::UpstreamVersion;
use patchbay_exposure::{exposure, snapshot, vulns, Policy, Score};
use serde_json::Value;

fn data(name: &str) -> Vec<u8> {
    let path = snapshot::bundled_dir().join(name);
    let file = std::fs::read(&path).unwrap();
    if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2_read(&file, &mut out);
        out
    } else {
        file
    }
}

fn flate2_read(gz: &[u8], out: &mut Vec<u8>) {
    // The test reads gzip with a tiny independent path: the `gzip` tool.
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let gz = gz.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &gz).unwrap());
    child.stdout.take().unwrap().read_to_end(out).unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
}

fn tuple(v: &str) -> (u32, u32, u32) {
    let p: Vec<u32> = v.split('.').map(|x| x.parse().unwrap()).collect();
    (p[0], p[1], *p.get(2).unwrap_or(&0))
}

/// Days since 1970 of `YYYY-MM-DD…`, by the civil-from-days algorithm (not jiff).
fn days(date: &str) -> i64 {
    let y: i64 = date[0..4].parse().unwrap();
    let m: i64 = date[5..7].parse().unwrap();
    let d: i64 = date[8..10].parse().unwrap();
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[derive(Debug, PartialEq, Eq)]
struct Counts {
    cves: usize,
    high: usize,
    high_overdue: usize,
    kev: usize,
}

/// Affected, published score, publication day, KEV day — straight from the raw JSON.
type RawCve = (bool, Option<f64>, Option<String>, Option<String>);

/// The independent path: raw JSON, integer tuples, published scores.
fn expected(version: &str, at: &str) -> Counts {
    let v = tuple(version);
    let kev_added: BTreeMap<String, String> =
        serde_json::from_slice::<Value>(&data("kev-linux-kernel.json")).unwrap()["vulnerabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["cveID"].as_str().unwrap().to_owned(),
                    k["dateAdded"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
    let mut by_id: BTreeMap<String, RawCve> = BTreeMap::new();
    let score_of = |c: &Value| -> Option<f64> {
        for key in ["cvss3", "cvss2"] {
            if let Some(s) = c[key]["score"].as_f64() {
                return Some(s);
            }
        }
        None
    };
    let legacy: Value = serde_json::from_slice(&data("linux-6.1-legacy-cves.json")).unwrap();
    for c in legacy["cves"].as_array().unwrap() {
        let fixed = c["fixed_6_1"]["version"].as_str().map(tuple);
        let affected = fixed.is_none_or(|f| v < f);
        by_id.insert(
            c["cve"].as_str().unwrap().to_owned(),
            (
                affected,
                score_of(c),
                c["published"].as_str().map(str::to_owned),
                c["kev"]["dateAdded"].as_str().map(str::to_owned),
            ),
        );
    }
    let cna: Value = serde_json::from_slice(&data("linux-6.1-kernel-cna-cves.json.gz")).unwrap();
    for c in cna["cves"].as_array().unwrap() {
        let affected = c["ranges_6_1"].as_array().unwrap().iter().any(|r| {
            let intro = tuple(r["introduced"].as_str().unwrap());
            let fixed = r["fixed"].as_str().map(tuple);
            intro <= v && fixed.is_none_or(|f| v < f)
        });
        by_id.insert(
            c["cve"].as_str().unwrap().to_owned(),
            (
                affected,
                score_of(c),
                c["published"].as_str().map(str::to_owned),
                c["kev"]["dateAdded"].as_str().map(str::to_owned),
            ),
        );
    }
    let today = days(at);
    let mut counts = Counts {
        cves: 0,
        high: 0,
        high_overdue: 0,
        kev: 0,
    };
    for (id, (affected, score, published, kev_in_record)) in by_id {
        if !affected || published.as_deref().is_some_and(|p| days(p) > today) {
            continue;
        }
        counts.cves += 1;
        let high = score.is_some_and(|s| s >= 7.0);
        if high {
            counts.high += 1;
            // Unknown publication day: counted past the window.
            if published.as_deref().is_none_or(|p| today - days(p) > 30) {
                counts.high_overdue += 1;
            }
        }
        let added = kev_added.get(&id).cloned().or(kev_in_record);
        if added.is_some_and(|d| days(&d) <= today) {
            counts.kev += 1;
        }
    }
    counts
}

#[test]
fn exposure_counts_agree_with_an_independent_computation() {
    let db = snapshot::load(&snapshot::bundled_dir()).unwrap();
    assert!(db.len() > 8_000, "{}", db.len());
    for (version, at) in [
        ("6.1.0", "2026-08-21"),
        ("6.1.50", "2025-01-15"),
        ("6.1.100", "2026-08-21"),
        ("6.1.150", "2026-08-21"),
        ("6.1.192", "2026-11-22"),
        ("6.1.192", "2024-06-01"),
    ] {
        let got = exposure(
            &db,
            version.parse().unwrap(),
            at.parse().unwrap(),
            Policy::default(),
            &BTreeSet::new(),
        );
        let want = expected(version, at);
        assert_eq!(
            Counts {
                cves: got.cves,
                high: got.high,
                high_overdue: got.high_overdue,
                kev: got.kev
            },
            want,
            "{version} at {at}"
        );
        eprintln!("{version} at {at}: {want:?}");
    }
    // Older releases are more exposed; the newest still has unfixed CVEs.
    let at = "2026-11-22".parse().unwrap();
    let old = exposure(
        &db,
        "6.1.10".parse().unwrap(),
        at,
        Policy::default(),
        &BTreeSet::new(),
    );
    let new = exposure(
        &db,
        "6.1.192".parse().unwrap(),
        at,
        Policy::default(),
        &BTreeSet::new(),
    );
    assert!(old.cves > new.cves && new.cves > 0);
}

#[test]
fn a_live_patch_removes_its_fixes_from_the_exposure() {
    let db = snapshot::load(&snapshot::bundled_dir()).unwrap();
    let at = "2026-11-22".parse().unwrap();
    let v: UpstreamVersion = "6.1.100".parse().unwrap();
    let base = exposure(&db, v, at, Policy::default(), &BTreeSet::new());
    let fixes: BTreeSet<String> = base
        .list
        .iter()
        .filter(|c| c.high)
        .take(3)
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(fixes.len(), 3);
    let live = exposure(&db, v, at, Policy::default(), &fixes);
    assert_eq!(live.cves, base.cves - 3);
    assert_eq!(live.high, base.high - 3);
    assert_eq!(live.fixed_by_patch, 3);
    let json = live.summary_json();
    for key in ["version", "cves", "high", "high_overdue", "kev"] {
        assert!(json.get(key).is_some(), "{key}");
    }
}

#[test]
fn an_exposure_reads_back_as_the_server_sent_it() {
    // Clients (the demo) read `GET /hosts/{id}/exposure` as core's `HostExposure<Exposure>`.
    let db = snapshot::load(&snapshot::bundled_dir()).unwrap();
    let at = "2026-11-22".parse().unwrap();
    let v: UpstreamVersion = "6.1.100".parse().unwrap();
    let sent = exposure(&db, v, at, Policy::default(), &BTreeSet::new());
    assert!(!sent.list.is_empty());
    let json = serde_json::to_vec(&sent).unwrap();
    let read: patchbay_exposure::Exposure = serde_json::from_slice(&json).unwrap();
    assert_eq!(read, sent);
}

#[test]
fn cvss_scores_match_the_published_test_vectors() {
    let vectors: Value = serde_json::from_slice(&data("cvss-test-vectors.json")).unwrap();
    let mut checked = 0;
    for (key, scorer) in [
        (
            "v3",
            Score::from_v3_vector as fn(&str, &str) -> Result<Score, patchbay_exposure::CveError>,
        ),
        (
            "v2",
            Score::from_v2_vector as fn(&str, &str) -> Result<Score, patchbay_exposure::CveError>,
        ),
    ] {
        for v in vectors[key].as_array().unwrap() {
            let vector = v["vector"].as_str().unwrap();
            let score = scorer(vector, "test").unwrap();
            assert_eq!(score.value(), v["score"].as_f64(), "{vector}");
            checked += 1;
        }
    }
    assert!(checked > 140, "{checked}");
    assert!(Score::from_v3_vector("CVSS:3.1/AV:X", "t").is_err());
}

#[test]
fn unscored_is_a_state_not_zero() {
    let db = snapshot::load(&snapshot::bundled_dir()).unwrap();
    let unscored = db
        .records
        .values()
        .filter(|r| r.score == Score::Unscored)
        .count();
    assert!(unscored > 3_000, "{unscored}");
    let e = exposure(
        &db,
        "6.1.0".parse().unwrap(),
        "2026-08-21".parse().unwrap(),
        Policy::default(),
        &BTreeSet::new(),
    );
    assert!(e.unscored > 0);
    assert!(e
        .list
        .iter()
        .filter(|c| c.score.is_none())
        .all(|c| c.severity.is_none() && !c.high));
}

#[test]
fn kev_entries_are_marked() {
    let db = snapshot::load(&snapshot::bundled_dir()).unwrap();
    let r = &db.records["CVE-2024-36971"];
    assert_eq!(r.kev.as_ref().unwrap().date_added.to_string(), "2024-08-07");
    // 26 KEV kernel entries, 8 of them affect some 6.1.y release.
    assert_eq!(db.records.values().filter(|r| r.kev.is_some()).count(), 8);
}

#[test]
fn vulns_repository_records_give_the_snapshot_ranges() {
    let sample = snapshot::bundled_dir().join("upstream-sample");
    let synced = vulns::sync(&sample, (6, 1)).unwrap();
    let db = snapshot::load(&snapshot::bundled_dir()).unwrap();
    assert!(synced.len() >= 10, "{}", synced.len());
    for (id, record) in &synced.records {
        let reference = &db.records[id];
        assert_eq!(record.ranges, reference.ranges, "{id}");
        assert!(record.published.is_some(), "{id}: date from published.tsv");
        assert_eq!(
            record.published.map(|d| d.to_string()),
            reference
                .published
                .map(|d| d.to_string())
                .or(record.published.map(|d| d.to_string())),
            "{id}"
        );
    }
    // The backport-introduced example from the data's README.
    let r = &synced.records["CVE-2024-26581"];
    assert_eq!(r.ranges[0].introduced.to_string(), "6.1.43");
    assert_eq!(r.ranges[0].fixed.unwrap().to_string(), "6.1.78");
}

#[test]
fn bad_input_is_a_clear_error() {
    assert!(
        snapshot::parse_cna(b"{not json")
            .unwrap_err()
            .to_string()
            .contains("kernel CNA snapshot"),
        "{:?} does not contain {:?}",
        snapshot::parse_cna(b"{not json").unwrap_err().to_string(),
        "kernel CNA snapshot"
    );
    let bad_version = br#"{"cves":[{"cve":"CVE-2024-1000","title":"t","published":null,"cvss3":null,"cvss2":null,"ranges_6_1":[{"introduced":"six","fixed":null}],"kev":null}]}"#;
    assert!(
        snapshot::parse_cna(bad_version)
            .unwrap_err()
            .to_string()
            .contains("six"),
        "{:?} does not contain {:?}",
        snapshot::parse_cna(bad_version).unwrap_err().to_string(),
        "six"
    );
    let bad_id = br#"{"cves":[{"cve":"CVE-x","title":"t","published":null,"cvss3":null,"cvss2":null,"ranges_6_1":[],"kev":null}]}"#;
    assert!(snapshot::parse_cna(bad_id).is_err());
    let dir = tempfile::tempdir().unwrap();
    assert!(
        vulns::sync(dir.path(), (6, 1))
            .unwrap_err()
            .to_string()
            .contains("no CVE-*.json"),
        "{:?} does not contain {:?}",
        vulns::sync(dir.path(), (6, 1)).unwrap_err().to_string(),
        "no CVE-*.json"
    );
    std::fs::write(dir.path().join("CVE-2024-0001.json"), "{}").unwrap();
    std::fs::write(dir.path().join("CVE-2024-0001.dyad"), "garbage line\n").unwrap();
    assert!(
        vulns::sync(dir.path(), (6, 1))
            .unwrap_err()
            .to_string()
            .contains("CVE-2024-0001.dyad"),
        "{:?} does not contain {:?}",
        vulns::sync(dir.path(), (6, 1)).unwrap_err().to_string(),
        "CVE-2024-0001.dyad"
    );
    assert!(snapshot::load(&dir.path().join("missing")).is_err());
}

#[test]
fn effective_version_is_the_newest_release_whose_fixes_the_patch_carries() {
    let db = snapshot::load(&snapshot::bundled_dir()).unwrap();
    let from: UpstreamVersion = "6.1.100".parse().unwrap();
    // The CVEs fixed in the next releases after 6.1.100, from the raw ranges.
    let fixed_in = |release: &str| -> BTreeSet<String> {
        let r: UpstreamVersion = release.parse().unwrap();
        db.records
            .values()
            .filter(|c| {
                c.ranges
                    .iter()
                    .any(|x| x.contains(&from) && x.fixed == Some(r))
            })
            .map(|c| c.id.clone())
            .collect()
    };
    let mut releases: Vec<UpstreamVersion> = db
        .records
        .values()
        .flat_map(|c| {
            c.ranges
                .iter()
                .filter(|x| x.contains(&from))
                .filter_map(|x| x.fixed)
        })
        .collect();
    releases.sort();
    releases.dedup();
    let (first, second) = (releases[0], releases[1]);
    let mut patch = fixed_in(&first.to_string());
    assert_eq!(db.effective_version(from, &patch), first);
    patch.extend(fixed_in(&second.to_string()));
    assert_eq!(db.effective_version(from, &patch), second);
    assert_eq!(db.effective_version(from, &BTreeSet::new()), from);
    // Round trip of the stored form.
    let back = patchbay_exposure::CveDatabase::from_json(&db.to_json().unwrap()).unwrap();
    assert_eq!(back, db);
}

#[test]
fn publication_dates_come_from_the_commit_that_added_each_record() {
    let repo = tempfile::tempdir().unwrap();
    let root = repo.path();
    let git = |args: &[&str], date: &str| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(root)
            .env("GIT_COMMITTER_DATE", date)
            .env("GIT_AUTHOR_DATE", date)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"], "2024-01-01T00:00:00Z");
    let sample = snapshot::bundled_dir().join("upstream-sample");
    let published = root.join("cve/published/2024");
    std::fs::create_dir_all(&published).unwrap();
    let add = |id: &str, date: &str| {
        for ext in ["json", "dyad", "cvss", "sha1"] {
            let from = sample.join(format!("{id}.{ext}"));
            if from.exists() {
                std::fs::copy(&from, published.join(format!("{id}.{ext}"))).unwrap();
            }
        }
        git(&["add", "."], date);
        git(&["commit", "-q", "-m", id], date);
    };
    add("CVE-2024-26581", "2024-02-20T12:00:00Z");
    add("CVE-2024-36971", "2024-06-10T09:05:01Z");
    // A later edit of the first record must not move its publication date.
    std::fs::write(published.join("CVE-2024-26581.sha1"), "edited\n").unwrap();
    git(&["commit", "-q", "-am", "edit"], "2025-01-01T00:00:00Z");
    let db = vulns::sync(root, (6, 1)).unwrap();
    assert_eq!(
        db.records["CVE-2024-26581"].published.unwrap().to_string(),
        "2024-02-20"
    );
    assert_eq!(
        db.records["CVE-2024-36971"].published.unwrap().to_string(),
        "2024-06-10"
    );
    assert!(matches!(
        db.records["CVE-2024-36971"].score,
        Score::Scored { .. }
    ));
}

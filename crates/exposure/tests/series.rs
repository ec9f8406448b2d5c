//! Several stable series on the bundled real data: the 6.12 snapshot's ranges, a 6.12
//! release's exposure, the notice for releases newer than the data, no data for a series the
//! database does not cover, the vulns-repository ingester's 6.12 ranges, and 6.1 unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::io::Read;

use patchbay_core::{KernelSeries, UpstreamVersion};
use patchbay_exposure::{
    exposure, snapshot, try_exposure, vulns, CveError, DataState, Policy, Range,
};
use serde_json::Value;

fn v(s: &str) -> UpstreamVersion {
    s.parse().unwrap()
}

const S6_1: KernelSeries = KernelSeries::new(6, 1);
const S6_12: KernelSeries = KernelSeries::new(6, 12);

fn raw_6_12() -> Value {
    let path = snapshot::bundled_dir().join("linux-6.12-kernel-cna-cves.json.gz");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn all() -> patchbay_exposure::CveDatabase {
    snapshot::load_all(&snapshot::bundled_dir()).unwrap()
}

#[test]
fn the_snapshot_holds_both_series_with_their_ranges() {
    let db = all();
    assert_eq!(
        db.covered_series(),
        BTreeSet::from([S6_1, S6_12]),
        "{:?}",
        db.series
    );
    let raw = raw_6_12();
    let cves = raw["cves"].as_array().unwrap();
    assert_eq!(cves.len(), 6_336);
    // Every 6.12 record is there, with exactly the file's 6.12 ranges.
    for c in cves {
        let id = c["cve"].as_str().unwrap();
        let want: Vec<(String, Option<String>)> = c["ranges_6_12"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    v(r["introduced"].as_str().unwrap()).to_string(),
                    r["fixed"].as_str().map(|f| v(f).to_string()),
                )
            })
            .collect();
        let got: Vec<(String, Option<String>)> = db.records[id]
            .ranges_in(S6_12)
            .map(|r| (r.introduced.to_string(), r.fixed.map(|f| f.to_string())))
            .collect();
        assert_eq!(got, want, "{id}");
    }
    // A CVE of both series keeps its 6.1 ranges beside the 6.12 ones (a 6.12.34 backport).
    let r = &db.records["CVE-2026-52945"];
    assert_eq!(
        r.ranges_in(S6_12).cloned().collect::<Vec<_>>(),
        vec![Range {
            introduced: v("6.12.34"),
            fixed: Some(v("6.12.74"))
        }]
    );
    assert_eq!(
        r.ranges_in(S6_1).cloned().collect::<Vec<_>>(),
        vec![Range {
            introduced: v("6.1.142"),
            fixed: Some(v("6.1.164"))
        }]
    );
    assert!(r.affects(&v("6.12.34")) && r.affects(&v("6.12.73")));
    assert!(!r.affects(&v("6.12.33")) && !r.affects(&v("6.12.74")));
    // An unfixed 6.1 range says nothing about 6.12 releases (and the other way round).
    let unfixed_6_1 = Range {
        introduced: v("6.1"),
        fixed: None,
    };
    assert!(unfixed_6_1.contains(&v("6.1.999")) && !unfixed_6_1.contains(&v("6.12.1")));
}

#[test]
fn data_through_is_the_newest_fix_the_data_names() {
    let db = all();
    // Independently: the highest `fixed` of the raw 6.12 file.
    let raw = raw_6_12();
    let newest = raw["cves"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["ranges_6_12"].as_array().unwrap().iter())
        .filter_map(|r| r["fixed"].as_str().map(v))
        .max()
        .unwrap();
    assert_eq!(db.data_through(S6_12), Some(newest));
    assert_eq!(newest.to_string(), "6.12.104", "the README's statement");
    assert!(db.data_through(S6_1).is_some_and(|f| S6_1.contains(&f)));
    assert_eq!(db.data_through(KernelSeries::new(5, 10)), None);
}

#[test]
fn a_6_12_release_is_exposed_to_its_ranges_and_marked_when_newer_than_the_data() {
    let db = all();
    let at = "2026-08-21".parse().unwrap();
    let none = BTreeSet::new();
    let old = exposure(&db, v("6.12.95"), at, Policy::default(), &none);
    let last = exposure(&db, v("6.12.104"), at, Policy::default(), &none);
    let newer = exposure(&db, v("6.12.117"), at, Policy::default(), &none);
    assert_eq!(old.data.state, DataState::Complete);
    assert_eq!(old.data.notice, None);
    assert_eq!(last.data.state, DataState::Complete);
    assert_eq!(newer.data.state, DataState::Stale);
    assert_eq!(newer.data.data_through, Some(v("6.12.104")));
    let notice = newer.data.notice.clone().unwrap();
    assert_eq!(
        notice,
        "CVE data covers 6.12 releases up to 6.12.104; fixes released after it are not known"
    );
    // The notice is in the JSON summary and the text report.
    let json = newer.summary_json();
    assert_eq!(json["data_state"], "stale");
    assert_eq!(json["series"], "6.12");
    assert_eq!(json["data_through"], "6.12.104");
    assert_eq!(json["notice"], notice.as_str());
    assert_eq!(last.summary_json()["notice"], Value::Null);
    let text = newer.render(5);
    assert!(text.contains(&notice), "{text}");
    assert!(
        newer.list.iter().any(|c| c.fixed_in.is_none())
            && text.contains("no 6.12.y fix up to 6.12.104"),
        "{text}"
    );
    // Every exposed CVE of 6.12.95 has a 6.12 range containing it; more than 6.12.104.
    assert!(
        old.cves > last.cves && last.cves > 0,
        "{} {}",
        old.cves,
        last.cves
    );
    for c in &old.list {
        assert!(db.records[&c.id]
            .ranges_in(S6_12)
            .any(|r| r.contains(&v("6.12.95"))));
        assert!(c.fixed_in.is_none_or(|f| S6_12.contains(&f)), "{c:?}");
    }
    // The window 6.12.96 ..= 6.12.104: high CVEs of 6.12.95 that those releases fix
    // (606 in this snapshot).
    let high_fixed: Vec<_> = old
        .list
        .iter()
        .filter(|c| {
            c.high
                && c.fixed_in
                    .is_some_and(|f| f >= v("6.12.96") && f <= v("6.12.104"))
        })
        .collect();
    assert!(
        (400..=800).contains(&high_fixed.len()),
        "{} high CVEs fixed in 6.12.96..=6.12.104",
        high_fixed.len()
    );
    // An effective release inside the series.
    let ids: BTreeSet<String> = old
        .list
        .iter()
        .filter(|c| c.fixed_in == Some(v("6.12.96")))
        .map(|c| c.id.clone())
        .collect();
    assert!(!ids.is_empty());
    assert_eq!(db.effective_version(v("6.12.95"), &ids), v("6.12.96"));
}

#[test]
fn a_series_without_data_is_no_data_never_no_exposure() {
    let db = all();
    let at = "2026-08-21".parse().unwrap();
    let e = exposure(&db, v("5.10.200"), at, Policy::default(), &BTreeSet::new());
    assert_eq!(e.data.state, DataState::NoData);
    assert!(e.render(5).contains("no CVE data for the 5.10 series"));
    assert_eq!(e.summary_json()["data_state"], "no_data");
    let err =
        try_exposure(&db, v("5.10.200"), at, Policy::default(), &BTreeSet::new()).unwrap_err();
    assert!(matches!(err, CveError::NoSeriesData { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("5.10") && text.contains("6.1, 6.12"),
        "{text}"
    );
    // The 6.1-only database has no 6.12 data.
    let only_6_1 = snapshot::load(&snapshot::bundled_dir()).unwrap();
    assert!(try_exposure(
        &only_6_1,
        v("6.12.95"),
        at,
        Policy::default(),
        &BTreeSet::new()
    )
    .is_err());
    assert!(try_exposure(
        &only_6_1,
        v("6.1.100"),
        at,
        Policy::default(),
        &BTreeSet::new()
    )
    .is_ok());
    assert!("6.12.1".parse::<KernelSeries>().is_err() && "x".parse::<KernelSeries>().is_err());
    assert_eq!("6.12".parse::<KernelSeries>().unwrap(), S6_12);
}

#[test]
fn the_6_1_exposure_is_the_same_with_6_12_data_beside_it() {
    let only_6_1 = snapshot::load(&snapshot::bundled_dir()).unwrap();
    let db = all();
    let embedded = snapshot::embedded().unwrap();
    assert_eq!(embedded, db, "the compiled-in snapshot is the directory's");
    for (version, at) in [("6.1.50", "2025-01-15"), ("6.1.192", "2026-11-22")] {
        let at = at.parse().unwrap();
        let a = exposure(
            &only_6_1,
            v(version),
            at,
            Policy::default(),
            &BTreeSet::new(),
        );
        let b = exposure(&db, v(version), at, Policy::default(), &BTreeSet::new());
        assert_eq!(a, b, "{version}");
    }
    // 6.1.192 is newer than the newest 6.1 fix the data names: marked too.
    let e = exposure(
        &db,
        v("6.1.192"),
        "2026-11-22".parse().unwrap(),
        Policy::default(),
        &BTreeSet::new(),
    );
    assert_eq!(e.data.state, DataState::Stale);
    // The stored form keeps the series.
    let back = patchbay_exposure::CveDatabase::from_json(&db.to_json().unwrap()).unwrap();
    assert_eq!(back, db);
    // A database written before series existed (no `series` key) reads as 6.1.
    let old: Value = serde_json::from_slice(&only_6_1.to_json().unwrap()).unwrap();
    assert!(old.get("series").is_some());
    let mut legacy = old.clone();
    legacy.as_object_mut().unwrap().remove("series");
    let read =
        patchbay_exposure::CveDatabase::from_json(&serde_json::to_vec(&legacy).unwrap()).unwrap();
    assert_eq!(read.covered_series(), BTreeSet::from([S6_1]));
}

#[test]
fn the_vulns_ingester_reads_the_6_12_pairs() {
    let sample = snapshot::bundled_dir().join("upstream-sample");
    let synced = vulns::sync_series(&sample, &[S6_1, S6_12]).unwrap();
    let db = all();
    let with_6_12: BTreeSet<&str> = synced
        .records
        .values()
        .filter(|r| r.ranges_in(S6_12).next().is_some())
        .map(|r| r.id.as_str())
        .collect();
    // The sample's CVEs with a 6.12 pair (CVE-2024-50302 was fixed in mainline 6.12 itself;
    // CVE-2024-26581's never-fixed 6.4.8 backport is no 6.12 exposure).
    assert_eq!(
        with_6_12,
        BTreeSet::from([
            "CVE-2024-53104",
            "CVE-2024-53150",
            "CVE-2024-53197",
            "CVE-2026-22980",
            "CVE-2026-52945",
        ])
    );
    for (id, record) in &synced.records {
        let reference = &db.records[id];
        for series in [S6_1, S6_12] {
            assert_eq!(
                record.ranges_in(series).collect::<Vec<_>>(),
                reference.ranges_in(series).collect::<Vec<_>>(),
                "{id} {series}"
            );
        }
    }
    let r = &synced.records["CVE-2026-52945"];
    assert_eq!(
        r.ranges_in(S6_12).cloned().collect::<Vec<_>>(),
        vec![Range {
            introduced: v("6.12.34"),
            fixed: Some(v("6.12.74"))
        }]
    );
    assert_eq!(synced.covered_series(), BTreeSet::from([S6_1, S6_12]));
    // 6.12 alone: only the CVEs with 6.12 ranges.
    let only = vulns::sync_series(&sample, &[S6_12]).unwrap();
    assert_eq!(
        only.records
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        with_6_12
    );
}

#[test]
fn the_data_date_is_the_newest_publication_day_per_series() {
    let db = all();
    // The 6.12 file's own newest `published`, read without the crate's parser.
    let newest_raw = raw_6_12()["cves"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["published"].as_str())
        .map(|p| p[..10].to_owned())
        .max()
        .unwrap();
    let newest_6_12 = db.newest_published_in(S6_12).unwrap();
    assert_eq!(newest_6_12.to_string(), newest_raw);
    let newest = db.newest_published().unwrap();
    assert!(newest >= newest_6_12 && newest >= db.newest_published_in(S6_1).unwrap());
    // A series without data has no date; nor does an empty database.
    assert_eq!(db.newest_published_in(KernelSeries::new(5, 10)), None);
    assert_eq!(
        patchbay_exposure::CveDatabase::default().newest_published(),
        None
    );
    // Provenance is kept by the stored form; databases written before it read as `None`.
    let mut stored = db.clone();
    stored.provenance = Some(patchbay_exposure::Provenance {
        source: "test".into(),
        synced_at: "2026-12-07T16:10:00Z".into(),
    });
    let back = patchbay_exposure::CveDatabase::from_json(&stored.to_json().unwrap()).unwrap();
    assert_eq!(back.provenance, stored.provenance);
    assert_eq!(
        patchbay_exposure::CveDatabase::from_json(&db.to_json().unwrap())
            .unwrap()
            .provenance,
        None
    );
}

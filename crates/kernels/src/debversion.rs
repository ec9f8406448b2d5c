//! Debian version ordering, as `dpkg --compare-versions` does it (deb-version(7)).
//! Done in-process because version lists are compared often and the rules are small.

use std::cmp::Ordering;

/// Compares two Debian package versions (`[epoch:]upstream[-revision]`).
pub(crate) fn compare(a: &str, b: &str) -> Ordering {
    let (epoch_a, upstream_a, revision_a) = split(a);
    let (epoch_b, upstream_b, revision_b) = split(b);
    epoch_a
        .cmp(&epoch_b)
        .then_with(|| compare_part(upstream_a.as_bytes(), upstream_b.as_bytes()))
        .then_with(|| compare_part(revision_a.as_bytes(), revision_b.as_bytes()))
}

fn split(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) => (epoch.parse().unwrap_or(0), rest),
        None => (0, version),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// Sort weight of a non-digit character: `~` before everything (even the end), letters
/// before other characters.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0usize, 0usize);
    let is_digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    let is_other = |s: &[u8], k: usize| s.get(k).is_some_and(|c| !c.is_ascii_digit());
    while i < a.len() || j < b.len() {
        while is_other(a, i) || is_other(b, j) {
            let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_difference = Ordering::Equal;
        while is_digit(a, i) && is_digit(b, j) {
            if first_difference == Ordering::Equal {
                first_difference = a.get(i).cmp(&b.get(j));
            }
            i += 1;
            j += 1;
        }
        if is_digit(a, i) {
            return Ordering::Greater;
        }
        if is_digit(b, j) {
            return Ordering::Less;
        }
        if first_difference != Ordering::Equal {
            return first_difference;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use std::process::Command;

    const PAIRS: &[(&str, &str)] = &[
        ("6.1.192-2", "6.1.192-1"),
        ("6.1.192-2", "6.1.176-1"),
        ("6.1.170-3", "6.1.176-1"),
        ("6.1.9-1", "6.1.10-1"),
        ("6.1.192-2", "6.1.192-2"),
        ("6.1.192-2~bpo11+1", "6.1.192-2"),
        ("6.1.192-2+deb12u1", "6.1.192-2"),
        ("1:1.0", "2.0"),
        ("1.0~rc1", "1.0"),
        ("1.0a", "1.0"),
        ("1.0.a", "1.0+"),
        ("1.00", "1.0"),
        ("1.0-1", "1.0"),
        ("2.30-0", "2.30"),
        ("0:6.1-1", "6.1-1"),
    ];

    #[test]
    fn known_orderings() {
        assert_eq!(compare("6.1.192-2", "6.1.176-1"), Ordering::Greater);
        assert_eq!(compare("6.1.9-1", "6.1.10-1"), Ordering::Less);
        assert_eq!(compare("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(compare("1:1.0", "2.0"), Ordering::Greater);
        assert_eq!(compare("6.1.192-2", "6.1.192-2"), Ordering::Equal);
    }

    /// The reference is dpkg itself (always present on Debian, which this crate targets).
    #[test]
    fn agrees_with_dpkg() {
        for (a, b) in PAIRS {
            for (x, y) in [(a, b), (b, a)] {
                let dpkg_says_less = Command::new("dpkg")
                    .args(["--compare-versions", x, "lt", y])
                    .status()
                    .expect("run dpkg")
                    .success();
                let dpkg_says_equal = Command::new("dpkg")
                    .args(["--compare-versions", x, "eq", y])
                    .status()
                    .expect("run dpkg")
                    .success();
                let expected = if dpkg_says_less {
                    Ordering::Less
                } else if dpkg_says_equal {
                    Ordering::Equal
                } else {
                    Ordering::Greater
                };
                assert_eq!(compare(x, y), expected, "{x} vs {y}");
            }
        }
    }
}

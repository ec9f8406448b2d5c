//! Stage 4, GCC's clones and split parts: `foo.isra.0`, `foo.constprop.1`, `foo.part.0` (copies
//! of `foo` with a changed calling convention, constants propagated, or the rarely-run half of an
//! inlined function) and `foo.cold` (the cold blocks of `foo`, reached only by jumps from it).
//!
//! Clones are correlated with the running kernel by their base name without GCC's numbers (see
//! [`correlation_name`]). A changed clone is replaced itself when it has an ftrace entry and its
//! calling convention is provably the same: every function that calls it is unchanged, so each
//! call passes the same registers as before. Otherwise it is carried as new code and its callers
//! are replaced instead ([`engine::route_around`]). A `.cold` part is never replaced on its own:
//! it belongs to its parent, which is replaced (and carries its own copy of the part).

use std::collections::BTreeSet;

use super::elf::{correlation_name, ElfView};
use super::engine::{self, DiffReport};

/// `foo.cold` → `foo`; `foo.isra.0.cold` → `foo.isra.0`.
pub fn cold_parent(name: &str) -> Option<&str> {
    let index = name.find(".cold")?;
    let rest = name.get(index + ".cold".len()..)?;
    // `.cold` at the end, or followed only by GCC's number (`.cold.12`).
    let numbered = rest.is_empty()
        || rest
            .strip_prefix('.')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    numbered.then(|| name.get(..index)).flatten()
}

/// Whether `name` is a GCC clone with its own calling convention (`.isra.N`, `.constprop.N`,
/// `.part.N`).
pub fn is_clone(name: &str) -> bool {
    let base = correlation_name(name);
    base.split('.')
        .skip(1)
        .any(|part| matches!(part, "isra" | "constprop" | "part"))
}

/// What [`plan`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClonePlan {
    /// Changed clones replaced as themselves (ftrace entry, unchanged callers).
    pub replaced: Vec<String>,
    /// Changed clones to carry as new code with their callers replaced.
    pub via_callers: BTreeSet<String>,
}

/// Moves changed `.cold` parts to their parents and decides, for each changed clone, whether it
/// is replaced itself or through its callers. Run before [`engine::route_around`] with the
/// returned `via_callers`, then [`carry_cold_parts`].
pub fn plan(original: &ElfView, report: &mut DiffReport) -> ClonePlan {
    let mut plan = ClonePlan::default();
    let cold: Vec<String> = report
        .changed_functions
        .iter()
        .filter(|n| cold_parent(n).is_some())
        .cloned()
        .collect();
    for part in cold {
        report.changed_functions.retain(|n| n != &part);
        let Some(parent) = cold_parent(&part) else {
            continue;
        };
        let known = report.changed_functions.iter().any(|n| n == parent)
            || report.new_functions.iter().any(|n| n == parent);
        if !known {
            report.changed_functions.push(parent.to_owned());
        }
    }
    let changed_names: BTreeSet<String> = report
        .changed_functions
        .iter()
        .map(|n| correlation_name(n))
        .collect();
    for clone in report.changed_functions.iter().filter(|n| is_clone(n)) {
        let Some(old) = original
            .symbols
            .iter()
            .find(|s| s.is_function() && correlation_name(&s.name) == correlation_name(clone))
        else {
            continue;
        };
        let traceable = engine::has_ftrace_entry(original, old);
        let callers_unchanged = engine::callers_of(original, &old.name)
            .iter()
            .all(|caller| !changed_names.contains(&correlation_name(caller)));
        if traceable && callers_unchanged {
            plan.replaced.push(clone.clone());
        } else {
            plan.via_callers.insert(clone.clone());
        }
    }
    plan
}

/// Adds the `.cold` part of every kept function to the new functions: the replacement jumps
/// into its own cold blocks (which jump back into it), never into the running kernel's.
pub fn carry_cold_parts(patched: &ElfView, report: &mut DiffReport) {
    let kept: BTreeSet<String> = report
        .changed_functions
        .iter()
        .chain(&report.new_functions)
        .cloned()
        .collect();
    for symbol in patched.symbols.iter().filter(|s| s.is_function()) {
        let Some(parent) = cold_parent(&symbol.name) else {
            continue;
        };
        if kept.contains(parent) && !report.new_functions.contains(&symbol.name) {
            report.new_functions.push(symbol.name.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_parts_and_clones_are_named_by_their_parent() {
        assert_eq!(cold_parent("foo.cold"), Some("foo"));
        assert_eq!(cold_parent("foo.isra.0.cold"), Some("foo.isra.0"));
        assert_eq!(cold_parent("foo.cold.3"), Some("foo"));
        assert_eq!(cold_parent("foo.colder"), None);
        assert_eq!(cold_parent("foo"), None);
        assert!(is_clone("foo.isra.0"));
        assert!(is_clone("foo.constprop.12"));
        assert!(is_clone("foo.part.0"));
        assert!(!is_clone("foo.cold"));
        assert!(!is_clone("foo"));
    }
}

//! Stage 4 of diff mode: which functions and data differ between the original and the patched
//! object. Functions are compared symbol by symbol over their bytes and their relocations,
//! semantically: symbols by name without GCC's numbering, strings by content (not by their
//! offset in a merged string section), PC-relative addends decoded.

use std::collections::{BTreeMap, BTreeSet};

use super::elf::{correlation_name, is_prefix_symbol, ElfView, Reloc, Section, Symbol, Target};

/// What changed between two compiles of one translation unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffReport {
    /// Functions in both objects whose code or references differ.
    pub changed_functions: Vec<String>,
    /// Functions only in the patched object.
    pub new_functions: Vec<String>,
    /// Functions only in the original object (inlined or deleted by the fix).
    pub removed_functions: Vec<String>,
    /// Data objects only in the patched object.
    pub new_data: Vec<String>,
    /// Existing data whose contents differ: the builder refuses these.
    pub changed_data: Vec<String>,
    /// Changed or new functions in `__init`/`__exit` code. They are not applied: init code
    /// already ran (and was freed), exit code of vmlinux never runs; a live patch replaces
    /// only what runs from now on. Reported, not carried.
    pub changed_init: Vec<String>,
}

impl DiffReport {
    /// No difference a live patch can apply (init/exit changes do not count).
    pub fn is_empty(&self) -> bool {
        self.changed_functions.is_empty()
            && self.new_functions.is_empty()
            && self.new_data.is_empty()
            && self.changed_data.is_empty()
    }
}

/// `.init.text`, `.exit.text`, `.init.data`, `.init.rodata`, …: code and data the running
/// kernel runs once at boot (or module load) and frees, or never runs.
pub fn is_init_section(name: &str) -> bool {
    name.starts_with(".init.") || name.starts_with(".exit.") || name.starts_with(".head.text")
}

fn is_comparable_data_section(name: &str) -> bool {
    [".data", ".bss", ".rodata"]
        .iter()
        .any(|p| name == *p || name.starts_with(&format!("{p}.")))
        && !name.starts_with(".rodata.str")
        && !name.starts_with(".rodata.cst")
}

/// Defined function (or data) symbols by correlation name. Static locals that share a name
/// (`__func__.3`, `count.7` in several functions) are told apart by the function that uses
/// them: `count@my_function`.
fn by_name(view: &ElfView, want_function: bool) -> BTreeMap<String, &Symbol> {
    let keep = |symbol: &Symbol| {
        if want_function {
            // objtool's `__pfx_` symbols over the padding are not functions of the source.
            symbol.is_function() && !is_prefix_symbol(&symbol.name)
        } else {
            // Special statics are never correlated: the patch has its own copies (extract).
            symbol.is_data()
                && !view.is_special_static(symbol)
                && symbol
                    .section
                    .and_then(|s| view.section(s))
                    .is_some_and(|s| is_comparable_data_section(&s.name))
        }
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for symbol in view
        .symbols
        .iter()
        .filter(|s| keep(s) && !s.name.is_empty())
    {
        *counts.entry(correlation_name(&symbol.name)).or_default() += 1;
    }
    let mut map = BTreeMap::new();
    for symbol in view
        .symbols
        .iter()
        .filter(|s| keep(s) && !s.name.is_empty())
    {
        let base = correlation_name(&symbol.name);
        let key = if counts.get(&base).copied().unwrap_or(0) > 1 {
            match first_user(view, symbol) {
                Some(user) => format!("{base}@{}", correlation_name(user)),
                None => base,
            }
        } else {
            base
        };
        map.entry(key).or_insert(symbol);
    }
    map
}

/// The first function whose code refers to `symbol` (by name or through its section).
fn first_user<'a>(view: &'a ElfView, symbol: &Symbol) -> Option<&'a str> {
    view.symbols
        .iter()
        .filter(|f| f.is_function())
        .find_map(|function| {
            let (section, start, end) = symbol_range(view, function)?;
            section
                .relocs
                .iter()
                .filter(|r| r.offset >= start && r.offset < end)
                .any(|r| match &r.target {
                    Target::Symbol(i) => *i == symbol.index,
                    Target::Section(s) => Some(*s) == symbol.section,
                })
                .then_some(function.name.as_str())
        })
}

/// Compares every function and data object of two compiles of the same file.
pub fn compare(original: &ElfView, patched: &ElfView) -> DiffReport {
    compare_with_lines(original, patched, &LineMap::default())
}

/// How the diff moved the lines of one source file: `(old start, old count, new start, new
/// count)` of each hunk, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LineMap {
    /// The hunks' line ranges (1-based, as in `@@ -10,3 +10,5 @@`); empty: no lines moved.
    pub hunks: Vec<(u64, u64, u64, u64)>,
}

impl LineMap {
    /// Where old line `line` is after the diff, if the diff did not change it.
    pub fn new_line(&self, line: u64) -> Option<u64> {
        let mut shift: i64 = 0;
        for &(old_start, old_count, new_start, new_count) in &self.hunks {
            // A range of count 0 names the line before it (`@@ -10,0 +11,3 @@` inserts after
            // old line 10).
            let (old_first, old_end) = if old_count == 0 {
                (old_start + 1, old_start + 1)
            } else {
                (old_start, old_start.saturating_add(old_count))
            };
            let new_end = if new_count == 0 {
                new_start + 1
            } else {
                new_start.saturating_add(new_count)
            };
            if line < old_first {
                break;
            }
            if line < old_end {
                return None;
            }
            shift = i64::try_from(new_end).ok()? - i64::try_from(old_end).ok()?;
        }
        u64::try_from(i64::try_from(line).ok()?.checked_add(shift)?).ok()
    }
}

/// Whether two equally long instruction streams differ only in 32-bit immediates that hold a
/// source line the diff moved (`__LINE__` of `might_sleep()`, `mlog()`, `ocfs2_error()` …):
/// every differing byte lies in a 4-byte field whose old value is line L and new value the
/// line L moved to. Such a function does the same as before, so it is not replaced.
fn only_moved_lines(old: &[u8], new: &[u8], lines: &LineMap) -> bool {
    if lines.hunks.is_empty() || old.len() != new.len() {
        return false;
    }
    let field = |bytes: &[u8], at: usize| -> Option<u64> {
        let slice = bytes.get(at..at.checked_add(4)?)?;
        Some(u64::from(u32::from_le_bytes(slice.try_into().ok()?)))
    };
    let mut index = 0;
    while index < old.len() {
        if old.get(index) == new.get(index) {
            index += 1;
            continue;
        }
        // A field starting at most 3 bytes before the first differing byte.
        let explained = (index.saturating_sub(3)..=index).find(|&start| {
            match (field(old, start), field(new, start)) {
                (Some(before), Some(after)) => {
                    before != after && before > 0 && lines.new_line(before) == Some(after)
                }
                _ => false,
            }
        });
        let Some(start) = explained else {
            return false;
        };
        index = start + 4;
    }
    true
}

/// [`compare`], treating functions whose code differs only in moved `__LINE__` values (see
/// `only_moved_lines`) as unchanged.
pub(crate) fn compare_with_lines(
    original: &ElfView,
    patched: &ElfView,
    lines: &LineMap,
) -> DiffReport {
    let same_symbol = |a_view: &ElfView, a: &Symbol, b_view: &ElfView, b: &Symbol| {
        same_symbol_with(a_view, a, b_view, b, lines)
    };
    let mut report = DiffReport::default();
    let old_functions = by_name(original, true);
    let new_functions = by_name(patched, true);
    for (name, new) in &new_functions {
        let in_init = new
            .section
            .and_then(|s| patched.section(s))
            .is_some_and(|s| is_init_section(&s.name));
        match old_functions.get(name) {
            None if in_init => report.changed_init.push(new.name.clone()),
            None => report.new_functions.push(new.name.clone()),
            Some(old) if !same_symbol(original, old, patched, new) => {
                if in_init {
                    report.changed_init.push(new.name.clone());
                } else {
                    report.changed_functions.push(new.name.clone());
                }
            }
            Some(_) => {}
        }
    }
    for (name, old) in &old_functions {
        if !new_functions.contains_key(name) {
            report.removed_functions.push(old.name.clone());
        }
    }
    let old_data = by_name(original, false);
    let new_data = by_name(patched, false);
    let read_only = |symbol: &Symbol| {
        symbol
            .section
            .and_then(|s| patched.section(s))
            .is_some_and(|s| !s.is_writable())
    };
    // Constants whose content changed (correlation names): kept code gets its own copy (see
    // extract), so code that uses one must be kept even when its own bytes are the same.
    let mut changed_constants: BTreeSet<String> = BTreeSet::new();
    for (name, new) in &new_data {
        match old_data.get(name) {
            None => report.new_data.push(new.name.clone()),
            Some(old) if !same_symbol(original, old, patched, new) => {
                if read_only(new) {
                    changed_constants.insert(name.clone());
                } else {
                    report.changed_data.push(new.name.clone());
                }
            }
            Some(_) => {}
        }
    }
    // A constant that points at a changed one changed too (an ops table naming a policy); a
    // variable that does cannot be replaced (the running kernel keeps using its own).
    loop {
        let mut grew = false;
        for (name, new) in &new_data {
            if changed_constants.contains(name)
                || report.changed_data.contains(&new.name)
                || !old_data.contains_key(name)
                || !references_any(patched, new, &changed_constants)
            {
                continue;
            }
            if read_only(new) {
                changed_constants.insert(name.clone());
                grew = true;
            } else {
                report.changed_data.push(new.name.clone());
            }
        }
        if !grew {
            break;
        }
    }
    if !changed_constants.is_empty() {
        for (name, new) in &new_functions {
            let listed = report.changed_functions.contains(&new.name)
                || report.changed_init.contains(&new.name)
                || report.new_functions.contains(&new.name);
            if !listed
                && old_functions.contains_key(name)
                && references_any(patched, new, &changed_constants)
            {
                let in_init = new
                    .section
                    .and_then(|s| patched.section(s))
                    .is_some_and(|s| is_init_section(&s.name));
                if in_init {
                    report.changed_init.push(new.name.clone());
                } else {
                    report.changed_functions.push(new.name.clone());
                }
            }
        }
    }
    report
}

/// Whether `symbol`'s relocations refer to one of `names` (correlation names of data).
fn references_any(view: &ElfView, symbol: &Symbol, names: &BTreeSet<String>) -> bool {
    let Some((section, start, end)) = symbol_range(view, symbol) else {
        return false;
    };
    section
        .relocs
        .iter()
        .filter(|r| r.offset >= start && r.offset < end)
        .any(|r| match referent(view, r) {
            Referent::Symbol(name, _) | Referent::SectionOf(name, _) => names.contains(&name),
            _ => false,
        })
}

/// The bytes and relocations of a symbol's range `[value, value + size)` (the whole section
/// when the symbol has no size, as for some assembler labels).
fn symbol_range<'a>(view: &'a ElfView, symbol: &Symbol) -> Option<(&'a Section, u64, u64)> {
    let section = view.section(symbol.section?)?;
    let size = if symbol.size == 0 {
        section.size
    } else {
        symbol.size
    };
    Some((section, symbol.value, symbol.value.saturating_add(size)))
}

fn same_symbol_with(
    a_view: &ElfView,
    a: &Symbol,
    b_view: &ElfView,
    b: &Symbol,
    lines: &LineMap,
) -> bool {
    let (Some((a_sec, a_start, a_end)), Some((b_sec, b_start, b_end))) =
        (symbol_range(a_view, a), symbol_range(b_view, b))
    else {
        return false;
    };
    if a_end - a_start != b_end - b_start || a_sec.sh_type != b_sec.sh_type {
        return false;
    }
    let bytes = |sec: &Section, start: u64, end: u64| -> Option<Vec<u8>> {
        if sec.data.is_empty() {
            return Some(Vec::new()); // NOBITS: all zero, size already compared
        }
        sec.data
            .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
            .map(<[u8]>::to_vec)
    };
    let (a_bytes, b_bytes) = (bytes(a_sec, a_start, a_end), bytes(b_sec, b_start, b_end));
    if a_bytes != b_bytes {
        let moved_lines = a_sec.is_text()
            && matches!((&a_bytes, &b_bytes), (Some(x), Some(y)) if only_moved_lines(x, y, lines));
        if !moved_lines {
            return false;
        }
    }
    let relocs = |sec: &'_ Section, start: u64, end: u64| -> Vec<Reloc> {
        sec.relocs
            .iter()
            .filter(|r| r.offset >= start && r.offset < end)
            .map(|r| Reloc {
                offset: r.offset - start,
                ..r.clone()
            })
            .collect()
    };
    let (a_rel, b_rel) = (relocs(a_sec, a_start, a_end), relocs(b_sec, b_start, b_end));
    a_rel.len() == b_rel.len()
        && a_rel
            .iter()
            .zip(&b_rel)
            .all(|(x, y)| same_reloc(a_view, x, b_view, y))
}

/// What a relocation refers to, in terms that survive recompiling.
#[derive(Debug, PartialEq, Eq)]
enum Referent<'a> {
    Symbol(String, i64),
    String(&'a [u8]),
    SectionOf(String, i64),
    Anonymous(&'a str, &'a [u8], i64),
    /// A special static local (never correlated, see `ElfView::is_special_static`): its kind
    /// and the offset inside it. Which instance, and where the compiler placed it among the
    /// others, changes whenever a fix adds or removes one anywhere in the file.
    SpecialStatic(String, i64),
    Unknown,
}

/// `__already_done.12` → `__already_done`; `__UNIQUE_ID_ddebug545.9` → `__UNIQUE_ID_ddebug`.
fn special_static_kind(name: &str) -> String {
    let base = correlation_name(name);
    match base.strip_prefix("__UNIQUE_ID_") {
        Some(rest) => format!(
            "__UNIQUE_ID_{}",
            rest.trim_end_matches(|c: char| c.is_ascii_digit())
        ),
        None => base,
    }
}

/// The special static that byte `offset` of section `section` belongs to, as a referent.
fn special_static_at<'a>(view: &'a ElfView, section: usize, offset: i64) -> Option<Referent<'a>> {
    let holder = view.symbols.iter().find(|s| {
        let start = i64::try_from(s.value).unwrap_or(i64::MAX);
        let end = start.saturating_add(i64::try_from(s.size.max(1)).unwrap_or(i64::MAX));
        s.section == Some(section) && s.is_data() && start <= offset && offset < end
    })?;
    view.is_special_static(holder).then(|| {
        let start = i64::try_from(holder.value).unwrap_or(i64::MAX);
        Referent::SpecialStatic(special_static_kind(&holder.name), offset - start)
    })
}

fn referent<'a>(view: &'a ElfView, reloc: &Reloc) -> Referent<'a> {
    match &reloc.target {
        Target::Symbol(i) => match view.symbol(*i) {
            // Assembler-local labels (`.LC2`): compare what they point at, not their number.
            Some(s) if !s.is_function() && !s.is_data() && s.section.is_some() => {
                let Some(section) = s.section else {
                    return Referent::Unknown;
                };
                let as_section = Reloc {
                    target: Target::Section(section),
                    addend: reloc
                        .addend
                        .saturating_add(i64::try_from(s.value).unwrap_or(i64::MAX)),
                    ..reloc.clone()
                };
                referent(view, &as_section)
            }
            Some(s) if view.is_special_static(s) => {
                Referent::SpecialStatic(special_static_kind(&s.name), reloc.addend)
            }
            Some(s) => Referent::Symbol(correlation_name(&s.name), reloc.addend),
            None => Referent::Unknown,
        },
        Target::Section(s) => {
            let Some(section) = view.section(*s) else {
                return Referent::Unknown;
            };
            if section.is_strings() {
                return match section.c_string_at(reloc.target_offset()) {
                    Some(text) => Referent::String(text),
                    None => Referent::Unknown,
                };
            }
            if let Some(special) = special_static_at(view, *s, reloc.target_offset()) {
                return special;
            }
            match view.symbol_of_section(*s) {
                Some(owner) => Referent::SectionOf(correlation_name(&owner.name), reloc.addend),
                None => Referent::Anonymous(&section.name, &section.data, reloc.addend),
            }
        }
    }
}

fn same_reloc(a_view: &ElfView, a: &Reloc, b_view: &ElfView, b: &Reloc) -> bool {
    a.offset == b.offset
        && a.r_type == b.r_type
        && match (referent(a_view, a), referent(b_view, b)) {
            (Referent::Unknown, _) | (_, Referent::Unknown) => false,
            (x, y) => x == y,
        }
}

/// Whether a function of `view` starts with an ftrace call (`call __fentry__` within its first
/// bytes): livepatch redirects a function through that call, so a function without it
/// (`notrace`, or kernel `inline` functions GCC kept out of line) cannot be replaced itself.
pub fn has_ftrace_entry(view: &ElfView, function: &Symbol) -> bool {
    let Some((section, start, _)) = symbol_range(view, function) else {
        return false;
    };
    section.relocs.iter().any(|r| {
        r.offset >= start
            && r.offset < start + 16
            && matches!(&r.target, Target::Symbol(i)
                if view.symbol(*i).is_some_and(|s| s.name == "__fentry__"))
    })
}

/// Changed functions that cannot be replaced (no ftrace entry) are carried as new code
/// instead, and the functions that call them are replaced so they call the new copy; repeated
/// up the call chain. Returns the functions moved that way, or the first one with no
/// replaceable caller.
pub fn route_around_untraceable(
    original: &ElfView,
    patched: &ElfView,
    report: &mut DiffReport,
) -> Result<Vec<String>, String> {
    route_around(original, patched, report, &BTreeSet::new())
}

/// The functions of `view` whose code refers to function `name` (by symbol or through its
/// section), except `name` itself and its `.cold` part (which jumps back into it).
pub fn callers_of(view: &ElfView, name: &str) -> Vec<String> {
    let Some(target) = view
        .symbols
        .iter()
        .find(|s| s.name == name && s.is_function())
    else {
        return Vec::new();
    };
    let target_section = target.section;
    let own_cold = format!("{name}.cold");
    view.symbols
        .iter()
        .filter(|s| s.is_function() && s.name != name && !s.name.starts_with(&own_cold))
        .filter(|caller| {
            let Some((section, start, end)) = symbol_range(view, caller) else {
                return false;
            };
            section.relocs.iter().any(|r| {
                r.offset >= start
                    && r.offset < end
                    && match &r.target {
                        Target::Symbol(i) => view.symbol(*i).is_some_and(|s| s.name == name),
                        Target::Section(s) => Some(*s) == target_section,
                    }
            })
        })
        .map(|s| s.name.clone())
        .collect()
}

/// Like [`route_around_untraceable`], also moving the changed functions named in `forced`
/// (GCC clones whose calling convention may have changed) to their callers.
pub fn route_around(
    original: &ElfView,
    patched: &ElfView,
    report: &mut DiffReport,
    forced: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let mut moved = Vec::new();
    loop {
        let untraceable = report.changed_functions.iter().position(|name| {
            forced.contains(name)
                || original
                    .symbols
                    .iter()
                    .find(|s| {
                        s.is_function() && correlation_name(&s.name) == correlation_name(name)
                    })
                    .is_some_and(|s| !has_ftrace_entry(original, s))
        });
        let Some(position) = untraceable else {
            return Ok(moved);
        };
        let name = report.changed_functions.remove(position);
        let callers = callers_of(patched, &name);
        if callers.is_empty() {
            return Err(name);
        }
        report.new_functions.push(name.clone());
        for caller in callers {
            let is_new = report.new_functions.contains(&caller);
            if !is_new && !report.changed_functions.contains(&caller) {
                report.changed_functions.push(caller);
            }
        }
        moved.push(name);
    }
}

/// References from kept code (changed and new functions) into `__init`/`__exit` code or data:
/// `(function, referenced symbol)`. The running kernel freed what they point at.
pub fn init_references(patched: &ElfView, report: &DiffReport) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for name in report.changed_functions.iter().chain(&report.new_functions) {
        let Some(function) = patched
            .symbols
            .iter()
            .find(|s| &s.name == name && s.is_function())
        else {
            continue;
        };
        let Some((section, start, end)) = symbol_range(patched, function) else {
            continue;
        };
        for reloc in section
            .relocs
            .iter()
            .filter(|r| r.offset >= start && r.offset < end)
        {
            let (target_section, target_name) = match &reloc.target {
                Target::Symbol(i) => match patched.symbol(*i) {
                    Some(s) => (s.section, s.name.clone()),
                    None => continue,
                },
                Target::Section(s) => (
                    Some(*s),
                    patched
                        .symbol_of_section(*s)
                        .map(|o| o.name.clone())
                        .or_else(|| patched.section(*s).map(|sec| sec.name.clone()))
                        .unwrap_or_default(),
                ),
            };
            let into_init = target_section
                .and_then(|s| patched.section(s))
                .is_some_and(|s| is_init_section(&s.name));
            if into_init && !found.contains(&(name.clone(), target_name.clone())) {
                found.push((name.clone(), target_name));
            }
        }
    }
    found
}

/// Whether `reloc` in code is the rel32 operand of a call or jump (`e8`/`e9`, `0f 8x`): the
/// assembler relocates calls to local functions through their section with `R_X86_64_PC32`,
/// so the relocation type alone cannot tell a call from taking the address (`lea`).
pub(crate) fn is_branch_target(section: &Section, reloc: &Reloc) -> bool {
    if !matches!(
        reloc.r_type,
        object::elf::R_X86_64_PLT32 | object::elf::R_X86_64_PC32
    ) {
        return false;
    }
    let Ok(at) = usize::try_from(reloc.offset) else {
        return false;
    };
    let before = |n: usize| at.checked_sub(n).and_then(|i| section.data.get(i)).copied();
    matches!(before(1), Some(0xe8 | 0xe9))
        || (before(2) == Some(0x0f) && before(1).is_some_and(|b| b & 0xf0 == 0x80))
}

/// The local function of `patched` that the running kernel knows as `running_name`, if kept
/// code (changed and new functions) only ever calls it: every reference is a call or jump,
/// none takes its address. Such a function can be carried as a copy
/// without anything noticing that its address changed.
pub fn only_called_local_function(
    patched: &ElfView,
    report: &DiffReport,
    running_name: &str,
) -> Option<String> {
    let function = patched.symbols.iter().find(|s| {
        s.is_function() && !s.global && correlation_name(&s.name) == correlation_name(running_name)
    })?;
    let mut referenced = false;
    for name in report.changed_functions.iter().chain(&report.new_functions) {
        let Some(caller) = patched
            .symbols
            .iter()
            .find(|s| &s.name == name && s.is_function())
        else {
            continue;
        };
        let Some((section, start, end)) = symbol_range(patched, caller) else {
            continue;
        };
        for reloc in section
            .relocs
            .iter()
            .filter(|r| r.offset >= start && r.offset < end)
        {
            let to_function = match &reloc.target {
                Target::Symbol(i) => *i == function.index,
                Target::Section(s) => {
                    Some(*s) == function.section
                        && patched
                            .symbol_of_section(*s)
                            .is_some_and(|owner| owner.index == function.index)
                }
            };
            if to_function {
                if !is_branch_target(section, reloc) {
                    return None;
                }
                referenced = true;
            }
        }
    }
    referenced.then(|| function.name.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn gcc12_object(dir: &std::path::Path, name: &str, source: &str) -> ElfView {
        crate::diff::gcc12_object(dir, name, source, &[])
    }

    /// A fix that only changes a constant table (an netlink policy's `NLA_STRING` →
    /// `NLA_NUL_STRING`): the functions that use it, directly or through a constant that points
    /// at it, are changed (they get the patch's copy); a variable pointing at it cannot be
    /// replaced and is changed data.
    #[test]
    fn code_using_a_changed_constant_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let source = |second: u32| {
            format!(
                "struct ops {{ const int *p; }};\n\
                 static const int policy[2] = {{ 1, {second} }};\n\
                 int use_policy(int i) {{ return policy[i & 1]; }}\n\
                 static const struct ops ops = {{ policy }};\n\
                 const struct ops *get_ops(void) {{ return &ops; }}\n\
                 static struct ops variable_ops = {{ policy }};\n\
                 struct ops *get_variable_ops(void) {{ return &variable_ops; }}\n\
                 int unrelated(int i) {{ return i * 3; }}\n"
            )
        };
        let old = gcc12_object(dir.path(), "old", &source(2));
        let new = gcc12_object(dir.path(), "new", &source(3));
        let report = compare(&old, &new);
        let mut changed = report.changed_functions.clone();
        changed.sort();
        assert_eq!(changed, ["get_ops", "use_policy"], "{report:?}");
        assert_eq!(report.changed_data, ["variable_ops"], "{report:?}");
        // The same source twice: nothing.
        let again = gcc12_object(dir.path(), "again", &source(2));
        assert!(
            compare(&old, &again).is_empty(),
            "{:?}",
            compare(&old, &again)
        );
    }

    #[test]
    fn calls_and_jumps_are_told_from_taking_an_address() {
        let section = |data: Vec<u8>| Section {
            index: 1,
            name: ".text.f".into(),
            size: data.len() as u64,
            data,
            align: 16,
            flags: 0,
            sh_type: object::elf::SHT_PROGBITS,
            relocs: Vec::new(),
        };
        let reloc = |offset: u64, r_type: u32| Reloc {
            offset,
            r_type,
            target: Target::Symbol(1),
            addend: -4,
        };
        let pc32 = object::elf::R_X86_64_PC32;
        // call rel32; jmp rel32; jne rel32; lea rel32(%rip),%rdi
        let call = section(vec![0xe8, 0, 0, 0, 0]);
        assert!(is_branch_target(&call, &reloc(1, pc32)));
        assert!(is_branch_target(
            &call,
            &reloc(1, object::elf::R_X86_64_PLT32)
        ));
        let jump = section(vec![0xe9, 0, 0, 0, 0]);
        assert!(is_branch_target(&jump, &reloc(1, pc32)));
        let conditional = section(vec![0x0f, 0x85, 0, 0, 0, 0]);
        assert!(is_branch_target(&conditional, &reloc(2, pc32)));
        let lea = section(vec![0x48, 0x8d, 0x3d, 0, 0, 0, 0]);
        assert!(!is_branch_target(&lea, &reloc(3, pc32)));
        assert!(!is_branch_target(
            &call,
            &reloc(1, object::elf::R_X86_64_64)
        ));
        assert!(!is_branch_target(&call, &reloc(0, pc32)));
    }

    #[test]
    fn lines_move_by_the_hunks_before_them() {
        // One hunk replacing old lines 10..12 (3 lines) by 10..16 (7 lines).
        let lines = LineMap {
            hunks: vec![(10, 3, 10, 7)],
        };
        assert_eq!(lines.new_line(5), Some(5));
        assert_eq!(lines.new_line(11), None);
        assert_eq!(lines.new_line(13), Some(17));
        assert_eq!(lines.new_line(1834), Some(1838));
        // Without context: 3 lines inserted after old line 10; old lines 20..22 deleted.
        let bare = LineMap {
            hunks: vec![(10, 0, 11, 3), (20, 3, 22, 0)],
        };
        assert_eq!(bare.new_line(10), Some(10));
        assert_eq!(bare.new_line(11), Some(14));
        assert_eq!(bare.new_line(21), None);
        assert_eq!(bare.new_line(23), Some(23));
    }

    #[test]
    fn only_immediates_holding_moved_lines_are_tolerated() {
        let lines = LineMap {
            hunks: vec![(10, 3, 10, 7)],
        };
        // mov $0x72a,%edx (line 1834) → mov $0x72e,%edx (line 1838)
        let old = [0x90, 0xba, 0x2a, 0x07, 0x00, 0x00, 0xe8];
        let new = [0x90, 0xba, 0x2e, 0x07, 0x00, 0x00, 0xe8];
        assert!(only_moved_lines(&old, &new, &lines));
        // 1834 → 1839 is not where the diff moved line 1834.
        let other = [0x90, 0xba, 0x2f, 0x07, 0x00, 0x00, 0xe8];
        assert!(!only_moved_lines(&old, &other, &lines));
        // An opcode change is never a moved line.
        let opcode = [0x91, 0xba, 0x2a, 0x07, 0x00, 0x00, 0xe8];
        assert!(!only_moved_lines(&old, &opcode, &lines));
        // Without a diff nothing moved.
        assert!(!only_moved_lines(&old, &new, &LineMap::default()));
    }
}

//! A fix's own prerequisites: what the fix's files, taken from the newer source, use that the
//! running kernel's tree does not have, found from the compiler's errors and carried from the
//! newer source.
//!
//! - A name the compiler does not know (`implicit declaration of function`, `undeclared`,
//!   `unknown type name`, an undefined struct, a `__free(x)` cleanup whose `DEFINE_FREE` is
//!   new): the regions of the newer tree's files that declare it, each widened to whole
//!   top-level items (`diff::c_items`), are carried alone (a [`Prerequisites::partial`] file):
//!   from a header the new helper, macro, constant or prototype; from a `.c` file a new
//!   function other objects link to. A header's regions go through the diff pipeline's header
//!   proof like any header change (when they are only new names, the units that name them
//!   are compiled before and after; otherwise every unit including the header).
//! - A function whose signature changed (`too many`/`too few arguments`, `conflicting
//!   types`): the header regions declaring it, and the whole newer version of the `.c` file
//!   that defines it (its changed functions are patched as well; the header proof names the
//!   other callers, which `upgrade` then takes from the newer source too or refuses).
//! - An include the running tree cannot find (`fatal error: ../common/x.h: No such file`): a
//!   header only the newer tree has (a directory's headers reorganised), carried whole as a
//!   new file; nothing in the running kernel can include it but the patched files.
//! - A struct member the running kernel's struct does not have: refused with the struct named
//!   ([`NewStructMember`]); a live patch cannot grow objects that already exist.
//!
//! Nothing here names a file, function or struct of any kernel: everything comes from the
//! compiler's words and the two trees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::diff::c_items::{self, Region};
use crate::diff::headers;
use crate::diff::include_index::IncludeIndex;

/// What one failed compile says the fix needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    /// Names the compiler does not know.
    pub unknown: BTreeSet<String>,
    /// Functions called or defined with another signature than the running tree declares.
    pub changed_signature: BTreeSet<String>,
    /// `(struct, member)` pairs the running tree's struct lacks.
    pub members: BTreeSet<(String, String)>,
    /// Members named on lines where a type does not match (`from incompatible pointer
    /// type`): `(path, member)`; a struct of the newer tree may have changed their type.
    pub mismatched_members: BTreeSet<(String, String)>,
    /// The translation unit that failed (`net/ipv6/addrconf.c`), when the error names it.
    pub unit: Option<String>,
    /// Errors inside headers (`include/net/ipv6_frag.h`, 1-based line): an inline or macro
    /// there no longer fits what is carried.
    pub in_headers: BTreeSet<(String, usize)>,
    /// Includes the running tree cannot find: `(including file, name as written)`.
    pub missing_includes: BTreeSet<(String, String)>,
}

impl Needs {
    /// Whether the errors name nothing this stage can look for.
    fn is_empty(&self) -> bool {
        self.unknown.is_empty()
            && self.changed_signature.is_empty()
            && self.members.is_empty()
            && self.mismatched_members.is_empty()
            && self.in_headers.is_empty()
            && self.missing_includes.is_empty()
    }
}

/// The text between the first pair of quotes (gcc's ‘…’ or '…') after `marker` in `line`.
fn quoted_after<'l>(line: &'l str, marker: &str) -> Option<&'l str> {
    let rest = line.get(line.find(marker)? + marker.len()..)?;
    quoted(rest)
}

fn quoted(text: &str) -> Option<&str> {
    let (open, close) = if let Some(at) = text.find('‘') {
        (at + '‘'.len_utf8(), '’')
    } else {
        (text.find('\'')? + 1, '\'')
    };
    let rest = text.get(open..)?;
    rest.get(..rest.find(close)?)
}

/// Reads a compile failure's text (`make`'s output, gcc's diagnostics). `line_of` gives a
/// source line of the newer tree (`path`, 1-based line) for diagnostics that name no
/// identifier (a cleanup attribute's).
pub(crate) fn needs_of(errors: &str, line_of: &dyn Fn(&str, usize) -> Option<String>) -> Needs {
    let mut needs = Needs::default();
    for line in errors.lines() {
        if needs.unit.is_none() {
            needs.unit = line
                .split_once("compiling ")
                .and_then(|(_, rest)| rest.split_once(".o failed"))
                .map(|(object, _)| format!("{object}.c"));
        }
        if let Some((place, message)) = line.split_once(": fatal error: ") {
            let includer = place.trim().trim_start_matches("./").split(':').next();
            let name = message.trim().strip_suffix(": No such file or directory");
            if let (Some(includer), Some(name)) = (includer, name) {
                needs
                    .missing_includes
                    .insert((includer.to_owned(), name.to_owned()));
            }
            continue;
        }
        let Some((place, message)) = line.split_once(": error: ") else {
            continue;
        };
        let mut at = place.trim().trim_start_matches("./").split(':');
        if let (Some(path), Some(Ok(number))) = (at.next(), at.next().map(str::parse)) {
            if path.ends_with(".h") {
                needs.in_headers.insert((path.to_owned(), number));
            }
        }
        let identifier = |text: &str| {
            let name = text
                .trim_start_matches("struct ")
                .trim_start_matches("union ");
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then(|| name.to_owned())
        };
        if let Some(name) = quoted_after(message, "implicit declaration of function ")
            .or_else(|| quoted_after(message, "unknown type name "))
            .or_else(|| quoted_after(message, "invalid use of undefined type "))
            .or_else(|| {
                message
                    .contains("undeclared")
                    .then(|| quoted(message))
                    .flatten()
            })
            .and_then(identifier)
        {
            needs.unknown.insert(name);
        } else if let Some(name) = quoted_after(message, "arguments to function ")
            .or_else(|| quoted_after(message, "conflicting types for "))
            .and_then(identifier)
        {
            needs.changed_signature.insert(name);
        } else if message.contains("has no member named") {
            let structure = quoted(message).and_then(identifier);
            let member = quoted_after(message, "has no member named ").and_then(identifier);
            if let (Some(s), Some(m)) = (structure, member) {
                needs.members.insert((s, m));
            }
        } else if message.contains("incompatible pointer type")
            || message.contains("incompatible type for argument")
        {
            let mut parts = place.split(':');
            let (Some(path), Some(number)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(text) = number.parse().ok().and_then(|n| line_of(path, n)) else {
                continue;
            };
            for member in accessed_members(&text) {
                needs.mismatched_members.insert((path.to_owned(), member));
            }
        } else if message.starts_with("cleanup argument not a function") {
            // `__free(name)` on that line: the cleanup `DEFINE_FREE(name, …)` made.
            let mut parts = place.split(':');
            let (Some(path), Some(number)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(text) = number.parse().ok().and_then(|n| line_of(path, n)) else {
                continue;
            };
            for piece in text.split("__free(").skip(1) {
                let name: String = piece
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    needs.unknown.insert(name);
                }
            }
        }
    }
    needs
}

/// A file as the two trees have it (only when they differ).
struct Versions {
    old: String,
    new: String,
}

impl Versions {
    fn read(old: &Path, new: &Path, file: &str) -> Option<Versions> {
        let old = std::fs::read_to_string(old.join(file)).ok()?;
        let new = std::fs::read_to_string(new.join(file)).ok()?;
        (old != new).then_some(Versions { old, new })
    }

    fn lines(&self) -> (Vec<&str>, Vec<&str>) {
        (self.old.lines().collect(), self.new.lines().collect())
    }

    /// Its changed regions, widened to whole items.
    fn regions(&self, old: &Path, new: &Path, file: &str) -> Option<Vec<Region>> {
        let (old_lines, new_lines) = self.lines();
        c_items::regions(&old.join(file), &new.join(file), &old_lines, &new_lines).ok()
    }
}

/// The identifiers a source line reaches through `->` or `.` (struct members, designated
/// initialisers).
fn accessed_members(line: &str) -> BTreeSet<String> {
    let mut members = BTreeSet::new();
    for piece in line.split("->").skip(1).chain(line.split('.').skip(1)) {
        let name: String = piece
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        {
            members.insert(name);
        }
    }
    members
}

/// Structs of a changed header whose declaration of one of `members` changed between the
/// trees: `(struct, member)`.
fn changed_member_types(
    old: &Path,
    new: &Path,
    members: &BTreeSet<String>,
    reaches_unit: &dyn Fn(&str) -> bool,
) -> BTreeSet<(String, String)> {
    let mut changed = BTreeSet::new();
    let Ok(files) = headers::files_naming(new, members) else {
        return changed;
    };
    for file in files.iter().filter(|f| f.ends_with(".h")) {
        // Reading both versions first: most headers naming a member are unchanged, and
        // whether one reaches the unit costs a walk of the include graph.
        let Some(versions) = Versions::read(old, new, file).filter(|_| reaches_unit(file)) else {
            continue;
        };
        let (old_lines, new_lines) = versions.lines();
        let Some(regions) = versions.regions(old, new, file) else {
            continue;
        };
        for region in regions {
            let (removed, added) = region.items(&old_lines, &new_lines);
            let old_side = old_lines.get(region.old.clone()).unwrap_or_default();
            let new_side = new_lines.get(region.new.clone()).unwrap_or_default();
            for tag in removed.names.intersection(&added.names) {
                let opens = |l: &&str| {
                    ["struct", "union"]
                        .iter()
                        .any(|k| l.contains(&format!("{k} {tag} {{")))
                };
                if !old_side.iter().any(opens) {
                    continue;
                }
                for member in members {
                    // The member's declarations: statements (split at `;`) naming it.
                    let declares = |lines: &[&str]| -> BTreeSet<String> {
                        lines
                            .join("\n")
                            .split(';')
                            .filter(|statement| c_items::mentions(statement, member))
                            .map(|st| st.split_whitespace().collect::<Vec<_>>().join(" "))
                            .collect()
                    };
                    let (before, after) = (declares(old_side), declares(new_side));
                    if !before.is_empty() && !after.is_empty() && before != after {
                        changed.insert((tag.clone(), member.clone()));
                    }
                }
            }
        }
    }
    changed
}

/// Headers the newer tree added that the fix's files include: each include resolved as the
/// compiler would look for it (beside the including file, then the kernel's include
/// directories), kept when only the newer tree has it. A new header brings no object of its
/// own: in the running kernel only the patched files can include it.
fn new_headers(old: &Path, new: &Path, missing: &BTreeSet<(String, String)>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (includer, name) in missing {
        if !name.ends_with(".h") {
            continue;
        }
        let beside = includer
            .rsplit_once('/')
            .map_or_else(|| name.clone(), |(dir, _)| format!("{dir}/{name}"));
        let candidates = [
            beside,
            format!("include/{name}"),
            format!("arch/x86/include/{name}"),
            format!("include/uapi/{name}"),
        ];
        if let Some(path) = candidates
            .iter()
            .filter_map(|c| tree_relative(c))
            .find(|c| new.join(c).is_file() && !old.join(c).exists())
        {
            found.insert(path);
        }
    }
    found
}

/// `path` with `.` and `..` folded; `None` when it climbs out of the tree.
fn tree_relative(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            _ => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A fix's prerequisites found in the newer tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Prerequisites {
    /// Files of which only the regions declaring these names are carried.
    pub partial: BTreeMap<String, BTreeSet<String>>,
    /// Files whose whole newer version is carried (they define a function whose signature
    /// changed, or they are headers only the newer tree has).
    pub whole: BTreeSet<String>,
}

/// A struct member the fix uses that the running kernel's struct lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewStructMember {
    /// `(struct, member)` pairs, as the compiler named them.
    pub members: BTreeSet<(String, String)>,
    /// `(struct, member)` pairs whose declared type the newer source changed.
    pub changed: BTreeSet<(String, String)>,
}

impl NewStructMember {
    /// The report's reason.
    pub fn reason(&self) -> String {
        let list: Vec<String> = self
            .members
            .iter()
            .map(|(s, m)| format!("struct {s} has no member {m}"))
            .chain(
                self.changed
                    .iter()
                    .map(|(s, m)| format!("the type of struct {s}'s member {m} changed")),
            )
            .collect();
        format!(
            "the fix uses struct members the newer source added or changed ({}): the running \
             kernel's objects and the code that fills or calls them keep the old layout and \
             types, so patched code would read and write past them or disagree with them; a \
             shadow variable (klp_shadow_*) given with --patches can carry new state instead",
            list.join("; ")
        )
    }
}

/// The prerequisites `needs` asks for, found between the running kernel's tree `old` and the
/// newer tree `new`, beyond what `have` (already carried) holds; or the struct members
/// refusal. Only headers the failing unit includes (per the running tree's include index) or
/// beside it supply a name; a `.c` file supplies one only through a definition other objects
/// link to, and only when exactly one file does.
pub(crate) fn find(
    old: &Path,
    new: &Path,
    includes: &IncludeIndex,
    needs: &Needs,
    have: &Prerequisites,
) -> Result<Prerequisites, NewStructMember> {
    let mut found = Prerequisites::default();
    found
        .whole
        .extend(new_headers(old, new, &needs.missing_includes));
    let wanted: BTreeSet<String> = needs
        .unknown
        .union(&needs.changed_signature)
        .cloned()
        .collect();
    let Ok(files) = headers::files_naming(new, &wanted) else {
        return Ok(found);
    };
    let unit_dir = needs
        .unit
        .as_deref()
        .and_then(|u| u.rsplit_once('/'))
        .map(|(d, _)| d);
    let reaches_unit = |header: &str| {
        header.rsplit_once('/').map(|(d, _)| d) == unit_dir
            || needs
                .unit
                .as_ref()
                .is_some_and(|u| includes.translation_units(header).contains(u))
    };
    let mismatched: BTreeSet<String> = needs
        .mismatched_members
        .iter()
        .map(|(_, m)| m.clone())
        .collect();
    let changed = if mismatched.is_empty() {
        BTreeSet::new()
    } else {
        changed_member_types(old, new, &mismatched, &reaches_unit)
    };
    if !needs.members.is_empty() || !changed.is_empty() {
        return Err(NewStructMember {
            members: needs.members.clone(),
            changed,
        });
    }
    // name → .c files defining it for other objects.
    let mut definers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    // name → headers whose changed regions declare it.
    let mut declaring_headers: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for file in files.iter().filter(|f| old.join(f).is_file()) {
        if Some(file) == needs.unit.as_ref() {
            continue;
        }
        let Some(versions) = Versions::read(old, new, file) else {
            continue;
        };
        let (old_lines, new_lines) = versions.lines();
        let Some(regions) = versions.regions(old, new, file) else {
            continue;
        };
        let header = file.ends_with(".h");
        for region in &regions {
            let (removed, added) = region.items(&old_lines, &new_lines);
            for name in &wanted {
                let signature = needs.changed_signature.contains(name);
                let declares = added.names.contains(name)
                    || (signature && removed.names.contains(name) && header);
                if !declares {
                    continue;
                }
                if header {
                    declaring_headers
                        .entry(name.as_str())
                        .or_default()
                        .insert(file.clone());
                } else if added.reaches_other_units.is_some() {
                    definers
                        .entry(name.as_str())
                        .or_default()
                        .push(file.clone());
                }
            }
        }
    }
    // A header the unit includes; failing that (an include path only a Makefile's `-I`
    // names, which the textual include index cannot follow), the one header that declares it.
    for (name, files) in declaring_headers {
        let reaching: Vec<&String> = files.iter().filter(|f| reaches_unit(f)).collect();
        let chosen = match (reaching.as_slice(), files.len()) {
            ([], 1) => files.iter().collect(),
            _ => reaching,
        };
        for file in chosen {
            found
                .partial
                .entry(file.clone())
                .or_default()
                .insert(name.to_owned());
        }
    }
    for (name, files) in definers {
        let files: BTreeSet<String> = files.into_iter().collect();
        let [file] = files.iter().collect::<Vec<_>>()[..] else {
            continue;
        };
        if needs.changed_signature.contains(name) {
            found.whole.insert(file.clone());
        } else {
            found
                .partial
                .entry(file.clone())
                .or_default()
                .insert(name.to_owned());
        }
    }
    // A header whose inline or macro no longer compiles with what is carried: the region of
    // its newer version around the failing line (the newer source updated it too).
    for (header, number) in &needs.in_headers {
        let Some(versions) = Versions::read(old, new, header) else {
            continue;
        };
        let (old_lines, new_lines) = versions.lines();
        let regions = versions.regions(old, new, header).unwrap_or_default();
        let line = number.saturating_sub(1);
        if let Some(region) = regions.iter().find(|r| r.old.contains(&line)) {
            let (removed, added) = region.items(&old_lines, &new_lines);
            found
                .partial
                .entry(header.clone())
                .or_default()
                .extend(removed.names.union(&added.names).cloned());
        }
    }
    // Only what is not carried yet.
    found.whole.retain(|f| !have.whole.contains(f));
    for (file, names) in &mut found.partial {
        if let Some(had) = have.partial.get(file) {
            names.retain(|n| !had.contains(n));
        }
    }
    found.partial.retain(|f, names| {
        !names.is_empty() && !found.whole.contains(f) && !have.whole.contains(f)
    });
    Ok(found)
}

impl Prerequisites {
    /// Whether nothing is carried.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty() && self.whole.is_empty()
    }

    /// Adds `other`'s files and names.
    pub fn extend(&mut self, other: Prerequisites) {
        for (file, names) in other.partial {
            self.partial.entry(file).or_default().extend(names);
        }
        self.whole.extend(other.whole);
    }

    /// The report's words for what is carried: `file (names)`.
    pub fn describe(&self) -> Vec<String> {
        self.partial
            .iter()
            .map(|(file, names)| {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                format!("{file} (only {})", names.join(", "))
            })
            .collect()
    }
}

/// The diff that carries, for each partial file not in `skip` (files cut whole), only the
/// regions declaring its names. Empty when there is nothing to carry.
pub(crate) fn partial_diff(
    old: &Path,
    new: &Path,
    partial: &BTreeMap<String, BTreeSet<String>>,
    skip: &BTreeSet<String>,
) -> String {
    let mut text = String::new();
    for (file, names) in partial.iter().filter(|(f, _)| !skip.contains(*f)) {
        let Some(versions) = Versions::read(old, new, file) else {
            continue;
        };
        let (old_lines, new_lines) = versions.lines();
        let Some(regions) = versions.regions(old, new, file) else {
            continue;
        };
        let chosen: Vec<Region> = regions
            .into_iter()
            .filter(|r| {
                let (removed, added) = r.items(&old_lines, &new_lines);
                names
                    .iter()
                    .any(|n| added.names.contains(n) || removed.names.contains(n))
            })
            .collect();
        if !chosen.is_empty() {
            text.push_str(&c_items::partial_patch(
                file, &old_lines, &new_lines, &chosen,
            ));
        }
    }
    text
}

/// What the prerequisites stage of a group's build decided after a failed compile.
#[derive(Debug)]
pub(crate) enum Stage {
    /// More to carry: build again with it.
    Carry(Prerequisites),
    /// The fix needs struct members the running kernel lacks: refuse the group.
    Refuse(NewStructMember),
    /// Nothing found (the caller's other retries, or the compile failure, stand).
    Nothing,
}

/// The prerequisites stage of `upgrade`'s group build: reads the failed compile's `errors`,
/// finds in the newer tree `new` what the fix needs beyond `have`, under the running tree's
/// lock (another build may have patched it for a moment).
pub(crate) fn after_compile_failure(
    kernel: &patchbay_kernels::Kernel,
    new: &Path,
    errors: &str,
    have: &Prerequisites,
) -> Result<Stage, patchbay_kernels::KernelError> {
    let tree = kernel.source_tree()?;
    let _exclusive = tree.lock()?;
    let line_of = |path: &str, number: usize| {
        let text = std::fs::read_to_string(new.join(path)).ok()?;
        text.lines().nth(number.checked_sub(1)?).map(str::to_owned)
    };
    let needs = needs_of(errors, &line_of);
    if needs.is_empty() {
        return Ok(Stage::Nothing);
    }
    let cache = headers::include_index_cache(kernel.dir());
    let Ok(includes) = IncludeIndex::load_or_build(tree.dir(), &cache) else {
        return Ok(Stage::Nothing);
    };
    Ok(match find(tree.dir(), new, &includes, &needs, have) {
        Err(members) => Stage::Refuse(members),
        Ok(found) if found.is_empty() => Stage::Nothing,
        Ok(found) => Stage::Carry(found),
    })
}

/// Writes the group's partial prerequisites (regions of files not cut whole, `whole`) to
/// `out`; `None` when there are none.
pub(crate) fn write_partial(
    kernel: &patchbay_kernels::Kernel,
    new: &Path,
    carried: &Prerequisites,
    whole: &BTreeSet<String>,
    out: &Path,
) -> Result<Option<std::path::PathBuf>, super::UpgradeError> {
    if carried.partial.is_empty() {
        return Ok(None);
    }
    let tree = kernel.source_tree()?;
    let text = {
        let _exclusive = tree.lock()?;
        partial_diff(tree.dir(), new, &carried.partial, whole)
    };
    if text.is_empty() {
        return Ok(None);
    }
    std::fs::write(out, text).map_err(super::io("write", out))?;
    Ok(Some(out.to_path_buf()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn compiler_errors_name_what_the_fix_needs() {
        // gcc-12's words on 6.12.95's tree for fixes taken from 6.12.107.
        let errors = "\
compiling net/ipv6/netfilter/nf_conntrack_reasm.o failed (make exit exit status: 2): x
net/ipv6/netfilter/nf_conntrack_reasm.c:226:25: error: too many arguments to function ‘inet_frag_kill’
net/ipv6/netfilter/nf_conntrack_reasm.c:500:9: error: implicit declaration of function ‘inet_frag_putn’; did you mean ‘inet_frag_put’? [-Werror=implicit-function-declaration]
net/unix/af_unix.c:735:39: error: ‘SKB_DROP_REASON_SOCKET_CLOSE’ undeclared (first use in this function); did you mean ‘SKB_DROP_REASON_TCP_CLOSE’?
kernel/audit_fsnotify.c:94:26: error: invalid use of undefined type ‘struct audit_watch_ctx’
fs/x.c:12:9: error: cleanup argument not a function
";
        let needs = needs_of(errors, &|path, line| {
            (path == "fs/x.c" && line == 12)
                .then(|| "\tstruct foo *f __free(foo_release) = NULL;".to_owned())
        });
        assert_eq!(
            needs.unit.as_deref(),
            Some("net/ipv6/netfilter/nf_conntrack_reasm.c")
        );
        assert_eq!(
            needs.unknown,
            BTreeSet::from([
                "SKB_DROP_REASON_SOCKET_CLOSE".to_owned(),
                "audit_watch_ctx".to_owned(),
                "foo_release".to_owned(),
                "inet_frag_putn".to_owned(),
            ])
        );
        assert_eq!(
            needs.changed_signature,
            BTreeSet::from(["inet_frag_kill".to_owned()])
        );
        let in_header = needs_of(
            "./include/net/ipv6_frag.h:77:9: error: too few arguments to function ‘inet_frag_kill’\n",
            &|_, _| None,
        );
        assert_eq!(
            in_header.in_headers,
            BTreeSet::from([("include/net/ipv6_frag.h".to_owned(), 77)])
        );
        let mismatch = needs_of(
            "net/netfilter/ipset/ip_set_core.c:353:63: error: passing argument 2 of ‘atomic64_sub’ \
             from incompatible pointer type [-Werror=incompatible-pointer-types]\n",
            &|_, _| {
                Some("\t\tatomic64_sub(sizeof(*c) + strlen(c->str) + 1, &set->ext_size);".to_owned())
            },
        );
        assert_eq!(
            mismatch.mismatched_members,
            BTreeSet::from([
                (
                    "net/netfilter/ipset/ip_set_core.c".to_owned(),
                    "ext_size".to_owned()
                ),
                (
                    "net/netfilter/ipset/ip_set_core.c".to_owned(),
                    "str".to_owned()
                ),
            ])
        );
        let members = needs_of(
            "fs/smb/server/vfs_cache.c:394:51: error: ‘struct ksmbd_lock’ has no member named ‘conn’\n",
            &|_, _| None,
        );
        assert_eq!(
            members.members,
            BTreeSet::from([("ksmbd_lock".to_owned(), "conn".to_owned())])
        );
    }

    #[test]
    fn a_member_whose_type_changed_is_named_with_its_struct() {
        // include/linux/netfilter/ipset/ip_set.h, 6.12.95 → 6.12.107.
        let old_text = "struct ip_set {\n\tchar name[IPSET_MAXNAMELEN];\n\tu32 elements;\n\
                        \tsize_t ext_size;\n\tsize_t dsize;\n};\n";
        let new_text = old_text.replace("size_t ext_size;", "atomic64_t ext_size;");
        let old = tempfile::tempdir().unwrap();
        let new = tempfile::tempdir().unwrap();
        let header = "include/linux/netfilter/ipset/ip_set.h";
        for (tree, text) in [(&old, old_text), (&new, new_text.as_str())] {
            let path = tree.path().join(header);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let members = BTreeSet::from(["ext_size".to_owned(), "elements".to_owned()]);
        assert_eq!(
            changed_member_types(old.path(), new.path(), &members, &|_| true),
            BTreeSet::from([("ip_set".to_owned(), "ext_size".to_owned())])
        );
        // A header the failing unit does not include says nothing.
        assert!(changed_member_types(old.path(), new.path(), &members, &|_| false).is_empty());
    }

    #[test]
    fn an_include_the_running_tree_lacks_is_a_header_the_newer_tree_added() {
        // gcc-12's words on 6.12.95's tree for smb's headers taken from 6.12.107.
        let errors = "In file included from fs/smb/server/smb2pdu.c:25:
            fs/smb/server/smb_common.h:13:10: fatal error: ../common/cifsglob.h: No such file or directory
            compilation terminated.
";
        let needs = needs_of(errors, &|_, _| None);
        assert!(!needs.is_empty());
        let missing = BTreeSet::from([(
            "fs/smb/server/smb_common.h".to_owned(),
            "../common/cifsglob.h".to_owned(),
        )]);
        assert_eq!(needs.missing_includes, missing);

        let old = tempfile::tempdir().unwrap();
        let new = tempfile::tempdir().unwrap();
        let write = |tree: &Path, path: &str| {
            let path = tree.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "/* header */\n").unwrap();
        };
        write(new.path(), "fs/smb/common/cifsglob.h");
        assert_eq!(
            new_headers(old.path(), new.path(), &missing),
            BTreeSet::from(["fs/smb/common/cifsglob.h".to_owned()])
        );
        // Found through the kernel's include directories too (`<linux/x.h>`).
        write(new.path(), "include/linux/fresh.h");
        let angle = BTreeSet::from([("fs/a.c".to_owned(), "linux/fresh.h".to_owned())]);
        assert_eq!(
            new_headers(old.path(), new.path(), &angle),
            BTreeSet::from(["include/linux/fresh.h".to_owned()])
        );
        // A header the running tree has is not new (the error is another one), nor is one
        // that climbs out of the tree, nor anything but a header.
        write(old.path(), "fs/smb/common/cifsglob.h");
        assert!(new_headers(old.path(), new.path(), &missing).is_empty());
        let outside = BTreeSet::from([("a.c".to_owned(), "../../etc/x.h".to_owned())]);
        assert!(new_headers(old.path(), new.path(), &outside).is_empty());
        write(new.path(), "fs/b.c");
        let source = BTreeSet::from([("fs/a.c".to_owned(), "b.c".to_owned())]);
        assert!(new_headers(old.path(), new.path(), &source).is_empty());

        // Carried whole by `find`, before anything else is looked for.
        let includes = IncludeIndex::default();
        let needs = Needs {
            missing_includes: BTreeSet::from([("fs/a.c".to_owned(), "linux/fresh.h".to_owned())]),
            ..Needs::default()
        };
        let found = find(
            old.path(),
            new.path(),
            &includes,
            &needs,
            &Prerequisites::default(),
        )
        .unwrap();
        assert_eq!(
            found.whole,
            BTreeSet::from(["include/linux/fresh.h".to_owned()])
        );
    }
}

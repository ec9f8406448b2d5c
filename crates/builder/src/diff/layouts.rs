//! Struct and union layouts, before and after a diff, as the compiler laid them out.
//!
//! A live patch replaces code, never memory that exists: objects allocated before the patch
//! keep the old layout, so replaced code that reads a new member, or a member at a new offset,
//! reads the wrong bytes. The compile error of a fix that needs a new member is caught earlier
//! (upgrade's prerequisites); this stage catches what compiles: a fix whose own files (a `.c`
//! file's private struct, or a header cut with the fix) change a struct.
//!
//! The reading is the debug information of the two objects of each changed unit, through
//! `pahole` (dwarves, the tool the kernel's own BTF build uses): every struct and union the
//! unit knows, with each member's declaration, offset and size. A type that exists in both
//! objects and differs in any of these (a member added, removed, moved, resized or retyped,
//! a function pointer's signature) is a layout change. Types only the patched object has are
//! new and harmless; comments (holes, cache lines) are not part of a layout.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// One struct or union as `pahole` prints it: the members' declarations with their offsets and
/// sizes (nested anonymous aggregates inline), and the total size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// In order. Members of members (`-E` expands them) are here too, so that their changes
    /// count.
    members: Vec<Member>,
    /// `size: N` of the aggregate.
    size: Option<u64>,
}

/// One member line of a [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// The declaration, whitespace normalised.
    declaration: String,
    /// `offset size`, as pahole's comment gives them.
    place: String,
    /// The aggregate's own member (pahole indents the members of members deeper).
    own: bool,
}

impl Layout {
    /// The names of the aggregate's own members.
    fn member_names(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.own)
            .filter_map(|m| member_name(&m.declaration))
            .collect()
    }
}

/// Every aggregate of an object by its head line (`struct l2cap_conn`); a name defined more
/// than once in one unit (function-local types) keeps each definition.
pub type Layouts = BTreeMap<String, Vec<Layout>>;

/// Why the layouts of an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// `pahole` could not be run.
    #[error("cannot run pahole on {object} to compare struct layouts ({source}); install dwarves (`apt-get install dwarves`, scripts/setup does)")]
    Run {
        /// The object.
        object: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// `pahole` ran and failed.
    #[error("pahole failed on {object}: {stderr}")]
    Failed {
        /// The object.
        object: String,
        /// What it said.
        stderr: String,
    },
}

/// The layouts of every struct and union in `object`'s debug information.
pub fn of_object(object: &Path) -> Result<Layouts, LayoutError> {
    // `-E`: typedefs expanded to what they name, so a member retyped from `unsigned long` to
    // `u64` is seen to keep its representation.
    let output = Command::new("pahole")
        .arg("--expand_types")
        .arg(object)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| LayoutError::Run {
            object: object.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(LayoutError::Failed {
            object: object.display().to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(parse(&String::from_utf8_lossy(&output.stdout)))
}

/// Reads `pahole`'s output: a block per aggregate, its head at column 0 ending in `{`, its
/// end a line starting with `}`.
pub fn parse(text: &str) -> Layouts {
    let mut layouts = Layouts::new();
    let mut current: Option<(String, Layout)> = None;
    for line in text.lines() {
        match &mut current {
            None => {
                if !line.starts_with(char::is_whitespace) {
                    if let Some(head) = line.trim_end().strip_suffix('{') {
                        let head = normalise(head);
                        if !head.is_empty() {
                            current = Some((
                                head,
                                Layout {
                                    members: Vec::new(),
                                    size: None,
                                },
                            ));
                        }
                    }
                }
            }
            Some((head, layout)) => {
                if line.starts_with('}') {
                    layouts
                        .entry(std::mem::take(head))
                        .or_default()
                        .push(layout.clone());
                    current = None;
                    continue;
                }
                let (code, comment) = split_comments(line);
                if let Some(size) = comment.and_then(total_size) {
                    layout.size = Some(size);
                    continue;
                }
                let code = same_representation(&normalise(&code));
                if code.is_empty() {
                    continue; // a hole, a cache line, a blank line
                }
                let place = comment.map(normalise).unwrap_or_default();
                let own =
                    line.starts_with('\t') && !line.starts_with("\t\t") && !code.ends_with('{');
                layout.members.push(Member {
                    declaration: code,
                    place,
                    own,
                });
            }
        }
    }
    layouts
}

/// A struct or union both objects have, laid out differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutChange {
    /// Its head line (`struct l2cap_conn`).
    pub aggregate: String,
    /// What differs, for a person: members added and removed, or the first that moved.
    pub what: String,
    /// Whether bytes moved or only a member's type changed.
    pub kind: ChangeKind,
}

/// How an aggregate changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Members added, removed, moved or resized: the bytes of existing objects mean other things.
    Layout,
    /// Every member at the same offset and size, one declared with another type (a function
    /// pointer's signature, a signedness).
    MemberType,
}

/// The aggregates of `original` whose layout `patched` changes.
pub fn changes(original: &Layouts, patched: &Layouts) -> Vec<LayoutChange> {
    let mut changed = Vec::new();
    for (aggregate, before) in original {
        let Some(after) = patched.get(aggregate) else {
            continue;
        };
        if before == after {
            continue;
        }
        // A name defined once on each side is compared member by member; several definitions
        // (function-local types) are only reported as changed.
        let what = match (before.as_slice(), after.as_slice()) {
            ([before], [after]) => describe(before, after),
            _ => "one of its definitions differs".to_owned(),
        };
        let same_places = |a: &Layout, b: &Layout| {
            a.size == b.size
                && a.members.len() == b.members.len()
                && a.members
                    .iter()
                    .zip(&b.members)
                    .all(|(x, y)| x.place == y.place)
                && a.member_names() == b.member_names()
        };
        let kind = match (before.as_slice(), after.as_slice()) {
            ([before], [after]) if same_places(before, after) => ChangeKind::MemberType,
            _ => ChangeKind::Layout,
        };
        changed.push(LayoutChange {
            aggregate: aggregate.clone(),
            what,
            kind,
        });
    }
    changed
}

fn describe(before: &Layout, after: &Layout) -> String {
    let old = before.member_names();
    let new = after.member_names();
    let added: Vec<&String> = new.iter().filter(|n| !old.contains(n)).collect();
    let removed: Vec<&String> = old.iter().filter(|n| !new.contains(n)).collect();
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("adds {}", quoted(&added)));
    }
    if !removed.is_empty() {
        parts.push(format!("removes {}", quoted(&removed)));
    }
    if parts.is_empty() {
        let first = before
            .members
            .iter()
            .zip(&after.members)
            .find(|(a, b)| (&a.declaration, &a.place) != (&b.declaration, &b.place))
            .map(|(a, b)| {
                format!(
                    "changes `{}` to `{}` (offset, size: {})",
                    a.declaration, b.declaration, b.place
                )
            });
        parts.push(first.unwrap_or_else(|| match (before.size, after.size) {
            (Some(a), Some(b)) if a != b => format!("changes its size from {a} to {b} bytes"),
            _ => "changes its members".to_owned(),
        }));
    }
    match (before.size, after.size) {
        (Some(a), Some(b)) if a != b && parts.len() < 3 => {
            parts.push(format!("{a} → {b} bytes"));
        }
        _ => {}
    }
    parts.join(", ")
}

fn quoted(names: &[&String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The code of a line without its comments, and its last comment (pahole puts a member's
/// offset and size there; `-E` puts the typedef a type came from before the type).
fn split_comments(line: &str) -> (String, Option<&str>) {
    let mut code = String::new();
    let mut last = None;
    let mut rest = line;
    while let Some((before, after)) = rest.split_once("/*") {
        code.push_str(before);
        code.push(' ');
        match after.split_once("*/") {
            Some((comment, tail)) => {
                last = Some(comment);
                rest = tail;
            }
            None => return (code, last),
        }
    }
    code.push_str(rest);
    (code, last)
}

/// Type spellings that name one representation on x86-64 (LP64): `long long` is `long`, so a
/// typedef expanded to either (`u64`, `unsigned long`) is the same member.
fn same_representation(declaration: &str) -> String {
    declaration
        .replace("long long unsigned int", "long unsigned int")
        .replace("long long int", "long int")
}

/// `size: 392` from the closing summary comment (`size: 392, cachelines: 7, members: 13`).
fn total_size(comment: &str) -> Option<u64> {
    let rest = comment.trim().strip_prefix("size:")?;
    rest.split(',').next()?.trim().parse().ok()
}

fn normalise(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The member a declaration names: `(*name)` of a function pointer, else the last identifier
/// before an array bound, a bit-field width or the `;`.
fn member_name(declaration: &str) -> Option<String> {
    if let Some((_, rest)) = declaration.split_once("(*") {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        return (!name.is_empty()).then_some(name);
    }
    let end = declaration
        .find(['[', ':', ';'])
        .unwrap_or(declaration.len());
    let head = declaration.get(..end)?.trim_end();
    let name: String = head
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The layouts of a C source compiled by gcc-12 with debug information, read by pahole.
    fn layouts_of(dir: &Path, name: &str, source: &str) -> Layouts {
        crate::diff::gcc12_object(dir, name, source, &["-g"]);
        of_object(&dir.join(format!("{name}.o"))).unwrap()
    }

    const ORIGINAL: &str = r#"
struct conn { int id; unsigned char ident; void *lock; long pending; };
struct ops { void *(*new_connection)(struct conn *c); int (*recv)(struct conn *c, int n); };
struct untouched { int a; int b; };
int use(struct conn *c, struct ops *o, struct untouched *u) {
    return c->id + c->ident + (o->recv ? o->recv(c, u->a) : 0);
}
"#;

    /// The layout changes of [`ORIGINAL`] with `from` replaced by `to`, both compiled.
    fn changes_of(from: &str, to: &str) -> Vec<LayoutChange> {
        changes_in(ORIGINAL, from, to)
    }

    fn changes_in(base: &str, from: &str, to: &str) -> Vec<LayoutChange> {
        let dir = tempfile::tempdir().unwrap();
        let before = layouts_of(dir.path(), "before", base);
        assert!(before.contains_key("struct conn"), "{before:?}");
        let source = base.replacen(from, to, 1);
        assert_ne!(source, base, "{from:?} is not in the source");
        changes(&before, &layouts_of(dir.path(), "after", &source))
    }

    #[test]
    fn an_unchanged_layout_is_no_change_even_when_the_code_changes() {
        assert_eq!(
            changes_of("c->id + c->ident", "c->id - c->ident"),
            Vec::new()
        );
    }

    #[test]
    fn a_member_added_in_the_middle_is_a_change_naming_the_struct_and_member() {
        let changed = changes_of("unsigned char ident;", "unsigned char ident; long tx_ida;");
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].aggregate, "struct conn");
        assert_eq!(changed[0].kind, ChangeKind::Layout);
        let what = &changed[0].what;
        assert!(what.contains("adds `tx_ida`"), "{what}");
        assert!(what.contains("24 → 32 bytes"), "{what}");
    }

    #[test]
    fn a_new_member_of_struct_type_is_named_not_its_own_members() {
        let base = format!("struct inner {{ int deep_a; long deep_b; }};\n{ORIGINAL}");
        let changed = changes_in(&base, "void *lock;", "void *lock; struct inner tx;");
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(
            changed[0].what.starts_with("adds `tx`,"),
            "{}",
            changed[0].what
        );
        assert!(!changed[0].what.contains("deep_a"), "{}", changed[0].what);
    }

    #[test]
    fn a_removed_member_is_a_change() {
        let changed = changes_of(" void *lock;", "");
        assert!(changed[0].what.contains("removes `lock`"), "{changed:?}");
    }

    #[test]
    fn a_retyped_member_is_a_change() {
        let changed = changes_of("long pending;", "int pending;");
        let what = &changed[0].what;
        assert!(
            what.contains("changes `long int pending;` to `int pending;`"),
            "{what}"
        );
    }

    #[test]
    fn a_typedef_of_the_same_representation_is_no_change() {
        // `unsigned long ino` → `u64 ino` (a 64-bit inode number on LP64: the same bytes).
        let base = format!("typedef unsigned long long u64;\n{ORIGINAL}")
            .replace("long pending;", "long pending; unsigned long ino;");
        assert_eq!(
            changes_in(&base, "unsigned long ino;", "u64 ino;"),
            Vec::new()
        );
        // Signedness is a change.
        let changed = changes_in(&base, "unsigned long ino;", "long long ino;");
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].kind, ChangeKind::MemberType);
    }

    #[test]
    fn a_function_pointer_s_new_signature_is_a_change_of_type_only() {
        let changed = changes_of(
            "void *(*new_connection)(struct conn *c);",
            "int (*new_connection)(struct conn *c, struct conn *n);",
        );
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].aggregate, "struct ops");
        assert_eq!(changed[0].kind, ChangeKind::MemberType);
    }

    #[test]
    fn a_new_type_is_not_a_change() {
        let changed = changes_of(
            "struct untouched {",
            "struct fresh { int x; };\nint more(struct fresh *f) { return f->x; }\nstruct untouched {",
        );
        assert_eq!(changed, Vec::new());
    }

    #[test]
    fn member_names_of_pahole_declarations() {
        assert_eq!(member_name("__u8 tx_ident;").as_deref(), Some("tx_ident"));
        assert_eq!(
            member_name("int (*recv)(struct conn *, int);").as_deref(),
            Some("recv")
        );
        assert_eq!(member_name("char name[16];").as_deref(), Some("name"));
        assert_eq!(member_name("unsigned int flag:1;").as_deref(), Some("flag"));
        assert_eq!(member_name("};"), None);
    }
}

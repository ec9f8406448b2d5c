//! What a patch replaces, as data: [`Marker`]s and [`CallbackMarker`]s, and finding them in a
//! patch author's C sources (`PATCHBAY_REPLACE` and the callback macros of `patchbay.h`).
//!
//! The macros are the contract between patch authors and the builder: each marker says which
//! kernel function (in which object, at which position) a replacement function takes over.
//! Diff mode makes the same values from its object diff, with no C text in between.

use std::collections::BTreeSet;

use patchbay_core::manifest::is_c_identifier;
use patchbay_core::ObjectName;

/// Where a marked function is defined, which says how the module's generated tables reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Definition {
    /// Beside a `patchbay.h` macro in a C source of the patch (source mode): reached through the
    /// global pointer the macro defines, because the function itself is usually `static`.
    Macro,
    /// As a global function of an object linked into the module as it is (diff mode's
    /// extracted code): reached by its own name.
    Linked,
}

/// One replaced function: `PATCHBAY_REPLACE(object, old_function, new_function)` in source
/// mode, a changed function of the object diff in diff mode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Marker {
    /// The object that holds the old function.
    pub object: ObjectName,
    /// The kernel's name of the function: any symbol name, a GCC clone's has dots
    /// (`foo.isra.0`).
    pub old_function: String,
    /// The replacement function (a C identifier).
    pub new_function: String,
    /// 0 when the old function's name is unique in its object.
    pub sympos: u32,
    /// Where `new_function` is defined.
    pub defined: Definition,
}

impl Marker {
    /// The symbol the built module defines for this marker, which its tables reference: the
    /// global pointer the `PATCHBAY_REPLACE` macro defines (see `patchbay.h`), or the linked
    /// replacement function itself.
    pub fn symbol(&self) -> String {
        match self.defined {
            Definition::Macro => format!(
                "__patchbay_replace__{}__{}__{}",
                self.object, self.old_function, self.sympos
            ),
            Definition::Linked => self.new_function.clone(),
        }
    }
}

/// A marker that cannot be understood.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct MarkerError {
    /// The C source the marker is in, as the caller named it.
    pub file: String,
    /// The 1-based line the macro call starts on; 0 when no one call is at fault (a function
    /// or callback kind marked twice).
    pub line: usize,
    /// What is wrong with it (wrong argument count, not a C identifier, a duplicate, ...).
    pub reason: String,
}

/// One call of a marker macro: its line and its arguments.
struct MacroCall {
    line: usize,
    args: Vec<String>,
}

/// Every call of `macro_name(...)` in `code` (comments and strings already blanked).
fn find_calls(file: &str, code: &str, macro_name: &str) -> Result<Vec<MacroCall>, MarkerError> {
    let mut calls = Vec::new();
    let mut from = 0;
    while let Some(found) = code.get(from..).and_then(|rest| rest.find(macro_name)) {
        let start = from + found;
        let after = start + macro_name.len();
        from = after;
        let before_ok = code
            .get(..start)
            .and_then(|b| b.chars().next_back())
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let rest = code.get(after..).unwrap_or_default();
        let args_start = rest.len() - rest.trim_start().len();
        if !before_ok || !rest.get(args_start..).unwrap_or_default().starts_with('(') {
            continue; // a longer identifier, or the name without a call
        }
        let line = code.get(..start).unwrap_or_default().matches('\n').count() + 1;
        let open = after + args_start + 1;
        let close = code
            .get(open..)
            .and_then(|r| r.find(')'))
            .ok_or_else(|| MarkerError {
                file: file.to_owned(),
                line,
                reason: format!("{macro_name}( is never closed"),
            })?;
        let inner = code.get(open..open + close).unwrap_or_default();
        calls.push(MacroCall {
            line,
            args: inner.split(',').map(|a| a.trim().to_owned()).collect(),
        });
    }
    Ok(calls)
}

/// Finds every marker in `source` (the text of `file`). Comments and string literals are
/// ignored so that documentation that mentions the macro does not count.
pub fn find_markers(file: &str, source: &str) -> Result<Vec<Marker>, MarkerError> {
    let code = blank_comments_and_strings(source);
    let mut markers = Vec::new();
    // "PATCHBAY_REPLACE" is a prefix of "PATCHBAY_REPLACE_SYMPOS", but there it is followed by
    // "_SYMPOS(" rather than "(", so the call check skips it.
    for (macro_name, takes_sympos) in [
        ("PATCHBAY_REPLACE_SYMPOS", true),
        ("PATCHBAY_REPLACE", false),
    ] {
        for call in find_calls(file, &code, macro_name)? {
            let err = |reason: String| MarkerError {
                file: file.to_owned(),
                line: call.line,
                reason,
            };
            let expected = if takes_sympos { 4 } else { 3 };
            if call.args.len() != expected {
                return Err(err(format!(
                    "{macro_name} takes {expected} arguments, found {}: ({})",
                    call.args.len(),
                    call.args.join(", ")
                )));
            }
            let arg = |i: usize| call.args.get(i).map(String::as_str).unwrap_or_default();
            let object: ObjectName = arg(0).parse().map_err(|e| {
                err(format!(
                    "first argument must be vmlinux or a module name: {e}"
                ))
            })?;
            for (what, name) in [("old function", arg(1)), ("new function", arg(2))] {
                if !is_c_identifier(name) {
                    return Err(err(format!("{what} {name:?} is not a C identifier")));
                }
            }
            let sympos = if takes_sympos {
                arg(3).parse::<u32>().map_err(|_| {
                    err(format!(
                        "sympos must be a decimal number (1 = first symbol of that name), found {:?}",
                        arg(3)
                    ))
                })?
            } else {
                0
            };
            markers.push(Marker {
                object,
                old_function: arg(1).to_owned(),
                new_function: arg(2).to_owned(),
                sympos,
                defined: Definition::Macro,
            });
        }
    }
    let mut seen = BTreeSet::new();
    for m in &markers {
        if !seen.insert((&m.object, &m.old_function)) {
            return Err(MarkerError {
                file: file.to_owned(),
                line: 0,
                reason: format!(
                    "{}:{} is replaced twice; keep one marker per function",
                    m.object, m.old_function
                ),
            });
        }
    }
    markers.sort();
    Ok(markers)
}

/// When a livepatch callback runs (see the kernel's Documentation/livepatch/callbacks.rst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CallbackKind {
    /// Before the object is patched; returning an error stops the patch.
    PrePatch,
    /// After the object is patched.
    PostPatch,
    /// Before the object is unpatched.
    PreUnpatch,
    /// After the object is unpatched (where shadow variables are typically freed).
    PostUnpatch,
}

impl CallbackKind {
    /// Every kind, in the order the kernel calls them over a patch's life.
    pub const ALL: [CallbackKind; 4] = [
        CallbackKind::PrePatch,
        CallbackKind::PostPatch,
        CallbackKind::PreUnpatch,
        CallbackKind::PostUnpatch,
    ];

    /// The `struct klp_callbacks` field.
    pub fn field(self) -> &'static str {
        match self {
            CallbackKind::PrePatch => "pre_patch",
            CallbackKind::PostPatch => "post_patch",
            CallbackKind::PreUnpatch => "pre_unpatch",
            CallbackKind::PostUnpatch => "post_unpatch",
        }
    }

    /// The kind whose `struct klp_callbacks` field is `field` (`patchbay-diff.h` names its
    /// sections by it).
    pub fn from_field(field: &str) -> Option<CallbackKind> {
        CallbackKind::ALL
            .into_iter()
            .find(|kind| kind.field() == field)
    }

    fn macro_name(self) -> &'static str {
        match self {
            CallbackKind::PrePatch => "PATCHBAY_PRE_PATCH",
            CallbackKind::PostPatch => "PATCHBAY_POST_PATCH",
            CallbackKind::PreUnpatch => "PATCHBAY_PRE_UNPATCH",
            CallbackKind::PostUnpatch => "PATCHBAY_POST_UNPATCH",
        }
    }
}

/// One livepatch callback: `PATCHBAY_PRE_PATCH(object, function)` (or post/unpatch) in source
/// mode, a `patchbay-diff.h` annotation in diff mode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CallbackMarker {
    /// The object whose patching or unpatching the callback attends.
    pub object: ObjectName,
    /// When it runs.
    pub kind: CallbackKind,
    /// The callback function (a C identifier).
    pub function: String,
    /// Where `function` is defined.
    pub defined: Definition,
}

impl CallbackMarker {
    /// The symbol the built module defines for this callback, which its tables reference: the
    /// global pointer the callback macro defines (see `patchbay.h`), or the linked function.
    pub fn symbol(&self) -> String {
        match self.defined {
            Definition::Macro => format!(
                "__patchbay_callback__{}__{}",
                self.object,
                self.kind.field()
            ),
            Definition::Linked => self.function.clone(),
        }
    }
}

/// Finds the callback markers in `source`; at most one of each kind per object.
pub fn find_callbacks(file: &str, source: &str) -> Result<Vec<CallbackMarker>, MarkerError> {
    let code = blank_comments_and_strings(source);
    let mut found = Vec::new();
    for kind in CallbackKind::ALL {
        for call in find_calls(file, &code, kind.macro_name())? {
            let err = |reason: String| MarkerError {
                file: file.to_owned(),
                line: call.line,
                reason,
            };
            let [object, function] = call.args.as_slice() else {
                return Err(err(format!(
                    "{} takes 2 arguments (object, function), found {}",
                    kind.macro_name(),
                    call.args.len()
                )));
            };
            let object: ObjectName = object.parse().map_err(|e| {
                err(format!(
                    "first argument must be vmlinux or a module name: {e}"
                ))
            })?;
            if !is_c_identifier(function) {
                return Err(err(format!("callback {function:?} is not a C identifier")));
            }
            found.push(CallbackMarker {
                object,
                kind,
                function: function.clone(),
                defined: Definition::Macro,
            });
        }
    }
    found.sort();
    let mut seen = BTreeSet::new();
    for c in &found {
        if !seen.insert((&c.object, c.kind)) {
            return Err(MarkerError {
                file: file.to_owned(),
                line: 0,
                reason: format!(
                    "{}: two {} callbacks; combine them into one function",
                    c.object,
                    c.kind.field()
                ),
            });
        }
    }
    Ok(found)
}

/// Replaces comments and string/char literals with spaces, keeping newlines (for line numbers).
fn blank_comments_and_strings(src: &str) -> String {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Code,
        LineComment,
        BlockComment,
        Str(char),
    }
    let mut out = String::with_capacity(src.len());
    let mut state = State::Code;
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match state {
            State::Code => match c {
                '/' if chars.peek() == Some(&'/') => {
                    chars.next();
                    out.push_str("  ");
                    state = State::LineComment;
                }
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    out.push_str("  ");
                    state = State::BlockComment;
                }
                '"' | '\'' => {
                    out.push(' ');
                    state = State::Str(c);
                }
                _ => out.push(c),
            },
            State::LineComment => {
                if c == '\n' {
                    out.push('\n');
                    state = State::Code;
                } else {
                    out.push(' ');
                }
            }
            State::BlockComment => {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    out.push_str("  ");
                    state = State::Code;
                } else {
                    out.push(if c == '\n' { '\n' } else { ' ' });
                }
            }
            State::Str(quote) => {
                if c == '\\' {
                    chars.next();
                    out.push_str("  ");
                } else if c == quote {
                    out.push(' ');
                    state = State::Code;
                } else {
                    out.push(if c == '\n' { '\n' } else { ' ' });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn finds_plain_and_sympos_markers() {
        let src = r#"
#include "patchbay.h"
/* PATCHBAY_REPLACE(vmlinux, in_comment, x); */
static const char *s = "PATCHBAY_REPLACE(vmlinux, in_string, x)";
static int pb_show(struct seq_file *m, void *v) { return 0; }
PATCHBAY_REPLACE(vmlinux, cmdline_proc_show, pb_show);
PATCHBAY_REPLACE_SYMPOS( pb-fixture , helper ,
    pb_helper, 2);
"#;
        let m = find_markers("fix.c", src).unwrap();
        assert_eq!(m.len(), 2);
        let plain = m
            .iter()
            .find(|m| m.old_function == "cmdline_proc_show")
            .unwrap();
        assert!(plain.object.is_vmlinux());
        assert_eq!(plain.sympos, 0);
        assert_eq!(
            plain.symbol(),
            "__patchbay_replace__vmlinux__cmdline_proc_show__0"
        );
        let pos = m.iter().find(|m| m.old_function == "helper").unwrap();
        assert_eq!(pos.object.as_str(), "pb_fixture");
        assert_eq!(pos.sympos, 2);
        assert_eq!(pos.new_function, "pb_helper");
    }

    #[test]
    fn callbacks_are_found_and_checked() {
        let src = "static int pb_setup(struct klp_object *o) { return 0; }\n\
                   PATCHBAY_PRE_PATCH(vmlinux, pb_setup);\n\
                   /* PATCHBAY_POST_PATCH(vmlinux, in_a_comment); */\n\
                   PATCHBAY_POST_UNPATCH(nf_tables, pb_cleanup);\n";
        let found = find_callbacks("fix.c", src).unwrap();
        assert_eq!(found.len(), 2);
        let pre = found
            .iter()
            .find(|c| c.kind == CallbackKind::PrePatch)
            .unwrap();
        assert_eq!(pre.function, "pb_setup");
        assert_eq!(pre.symbol(), "__patchbay_callback__vmlinux__pre_patch");
        let post = found
            .iter()
            .find(|c| c.kind == CallbackKind::PostUnpatch)
            .unwrap();
        assert_eq!(post.object.to_string(), "nf_tables");
        let twice = "PATCHBAY_PRE_PATCH(vmlinux, a);\nPATCHBAY_PRE_PATCH(vmlinux, b);\n";
        assert!(find_callbacks("fix.c", twice).is_err());
        for kind in CallbackKind::ALL {
            assert_eq!(CallbackKind::from_field(kind.field()), Some(kind));
        }
        assert_eq!(CallbackKind::from_field("post_load"), None);
        let bad = "PATCHBAY_POST_PATCH(vmlinux);\n";
        let err = find_callbacks("fix.c", bad).unwrap_err().to_string();
        assert!(err.contains("fix.c:1"), "{err}");
    }

    #[test]
    fn bad_markers_name_file_and_line() {
        let err = find_markers("a.c", "\n\nPATCHBAY_REPLACE(vmlinux, f);").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.to_string().starts_with("a.c:3:"), "{err}");
        assert!(find_markers("a.c", "PATCHBAY_REPLACE(vmlinux, f, g").is_err());
        assert!(find_markers("a.c", "PATCHBAY_REPLACE(Bad/Obj, f, g);").is_err());
        assert!(find_markers("a.c", "PATCHBAY_REPLACE_SYMPOS(vmlinux, f, g, x);").is_err());
        assert!(find_markers(
            "a.c",
            "PATCHBAY_REPLACE(vmlinux, f, g); PATCHBAY_REPLACE(vmlinux, f, h);"
        )
        .is_err());
    }

    #[test]
    fn longer_identifiers_are_not_markers() {
        assert!(find_markers("a.c", "MY_PATCHBAY_REPLACE(vmlinux, f, g);")
            .unwrap()
            .is_empty());
        assert!(find_markers("a.c", "#define X PATCHBAY_REPLACE\n")
            .unwrap()
            .is_empty());
    }
}

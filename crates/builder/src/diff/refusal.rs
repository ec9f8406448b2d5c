//! Why a diff cannot become a live patch, in a form both people and scripts can use.
//!
//! Every refusal names a stable [`Category`] (a short kebab-case string a benchmark can count),
//! the file and function it concerns when there is one, and the rule that was broken with what to
//! do instead. The category strings are a contract: scripts count them, so they are never
//! renamed, only added.

use std::fmt;

/// What kind of rule stopped a build. `as_str` is the stable name used in `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// The input has no file headers a unified diff would have.
    NotADiff,
    /// A path is absolute or climbs out of the tree.
    UnsafePath,
    /// No strip level makes the diff's paths name files of the kernel tree.
    PathNotInTree,
    /// More than one strip level names existing files; `-p N` must decide.
    AmbiguousStripLevel,
    /// The old and new names of a file differ (a rename).
    RenamedFile,
    /// A header's change reaches objects other than the patched ones.
    HeaderChange,
    /// The diff changes an assembly file (`.S`, `.s`).
    Assembly,
    /// The diff changes `Kconfig`, a `Makefile`, `Kbuild` or a `.mk` file.
    BuildSystem,
    /// The diff adds or deletes a file (no existing object to map it to).
    NewOrDeletedFile,
    /// Not kernel C: a binary patch, a file neither `.c` nor `.h`, or a `.c` file outside the
    /// kernel proper (`Documentation/`, `tools/`, `scripts/`, ...).
    NotKernelC,
    /// The kernel's configuration cannot load or be diffed into live patches.
    KernelConfig,
    /// The compiler here is not the kernel's.
    Compiler,
    /// The diff does not apply to this kernel's source (`patch --dry-run` fails).
    PatchDoesNotApply,
    /// The objects compile the same before and after (comments or formatting only).
    NoFunctionalChange,
    /// Existing data changes (needs a shadow variable or a callback).
    ChangedData,
    /// A changed function cannot be redirected and has no replaceable caller.
    UntraceableFunction,
    /// A `.patchbay.callbacks.*` section names a callback kind livepatch does not have.
    UnknownCallback,
    /// A GCC clone changed and neither it nor its callers can be replaced.
    ClonedFunction,
    /// Kept code is described by a section the extractor does not know.
    UnknownSpecialSection,
    /// A module's patch would use a vmlinux symbol that is not exported.
    ModuleUsesUnexported,
    /// A name repeats in the running kernel and nothing says which one is meant.
    AmbiguousSymbol,
    /// The binary an object is linked into could not be found.
    UnknownOwner,
    /// The object is not built in this kernel's configuration (proven from kbuild data).
    NotBuiltInConfig,
    /// Only `__init`/`__exit` code changes: nothing can be applied to a running kernel.
    InitOnly,
    /// Kept code refers to `__init` code or data, which the running kernel freed.
    InitReference,
    /// Kept code takes the address of a running-kernel function that IBT forbids as an
    /// indirect branch target (sealed at boot, or without `ENDBR64`).
    SealedFunctionAddress,
    /// Kept code calls a static call whose key lives in a module, which the patch's static
    /// call site could name only through a livepatch relocation applied too late.
    StaticCallModuleKey,
    /// A struct or union the running kernel already has changes its layout (a member added,
    /// removed, moved, resized or retyped): memory allocated before the patch keeps the old one.
    ChangedStructLayout,
}

impl Category {
    /// The stable kebab-case name (`header-change`), as `--json` and scripts see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::NotADiff => "not-a-diff",
            Category::UnsafePath => "unsafe-path",
            Category::PathNotInTree => "path-not-in-tree",
            Category::AmbiguousStripLevel => "ambiguous-strip-level",
            Category::RenamedFile => "renamed-file",
            Category::HeaderChange => "header-change",
            Category::Assembly => "assembly",
            Category::BuildSystem => "build-system",
            Category::NewOrDeletedFile => "new-or-deleted-file",
            Category::NotKernelC => "not-kernel-c",
            Category::KernelConfig => "kernel-config",
            Category::Compiler => "compiler",
            Category::PatchDoesNotApply => "patch-does-not-apply",
            Category::NoFunctionalChange => "no-functional-change",
            Category::ChangedData => "changed-data",
            Category::UntraceableFunction => "untraceable-function",
            Category::UnknownCallback => "unknown-callback",
            Category::ClonedFunction => "cloned-function",
            Category::UnknownSpecialSection => "unknown-special-section",
            Category::ModuleUsesUnexported => "module-uses-unexported",
            Category::AmbiguousSymbol => "ambiguous-symbol",
            Category::UnknownOwner => "unknown-owner",
            Category::NotBuiltInConfig => "not-built-in-config",
            Category::InitOnly => "init-only",
            Category::InitReference => "init-reference",
            Category::SealedFunctionAddress => "sealed-function-address",
            Category::StaticCallModuleKey => "static-call-module-key",
            Category::ChangedStructLayout => "changed-struct-layout",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a diff is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// What kind of rule was broken.
    pub category: Category,
    /// The file of the kernel tree it concerns (as the diff names it after stripping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The function (or data symbol) it concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The rule that was broken and what to do instead.
    pub reason: String,
    /// Other translation units the refusal is about (a header change alters them): what a
    /// caller that can patch them too (`upgrade`) adds to the fix.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_sources: Vec<String>,
}

impl Refusal {
    /// A refusal about the whole diff.
    pub fn new(category: Category, reason: impl Into<String>) -> Self {
        Refusal {
            category,
            file: None,
            function: None,
            reason: reason.into(),
            other_sources: Vec::new(),
        }
    }

    /// A refusal about one file.
    pub fn in_file(category: Category, file: &str, reason: impl Into<String>) -> Self {
        Refusal {
            file: Some(file.to_owned()),
            ..Refusal::new(category, reason)
        }
    }

    /// A refusal about one function (or datum) of one file.
    pub fn in_function(
        category: Category,
        file: &str,
        function: &str,
        reason: impl Into<String>,
    ) -> Self {
        Refusal {
            file: Some(file.to_owned()),
            function: Some(function.to_owned()),
            ..Refusal::new(category, reason)
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if let Some(function) = &self.function {
            write!(f, "`{function}`: ")?;
        }
        write!(f, "{} [{}]", self.reason, self.category)
    }
}

/// Several refusals, reported together (each on its own line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusals(pub Vec<Refusal>);

impl fmt::Display for Refusals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, refusal) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "- {refusal}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a_refusal_names_file_function_rule_and_category() {
        let refusal = Refusal::in_function(
            Category::ChangedData,
            "fs/proc/cmdline.c",
            "counter",
            "existing data changes; use a shadow variable",
        );
        assert_eq!(
            refusal.to_string(),
            "fs/proc/cmdline.c: `counter`: existing data changes; use a shadow variable \
             [changed-data]"
        );
        let json = serde_json::to_value(&refusal).unwrap();
        assert_eq!(json["category"], "changed-data");
        assert_eq!(json["file"], "fs/proc/cmdline.c");
        assert_eq!(json["function"], "counter");
    }

    #[test]
    fn serde_names_equal_the_stable_strings() {
        for category in [
            Category::NotADiff,
            Category::AmbiguousStripLevel,
            Category::ModuleUsesUnexported,
            Category::NotBuiltInConfig,
        ] {
            assert_eq!(serde_json::to_value(category).unwrap(), category.as_str());
        }
    }
}

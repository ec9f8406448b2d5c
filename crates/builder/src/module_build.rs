//! The module builder: what a patch replaces, as typed markers, becomes a livepatch bundle.
//!
//! Source mode finds the markers in the author's C ([`collect_markers`], then [`build`]); diff
//! mode makes them from its object diff and hands them over with the extracted code. Both go
//! through [`build_from_markers`]: check the markers → check the old functions exist → generate
//! tables (`codegen`) → kbuild → resolve undefined symbols → rewrite into livepatch relocations
//! → validate → write the bundle. Nothing is written to the output path unless every stage
//! succeeded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSymbol};
use patchbay_core::manifest::{is_c_identifier, BuilderInfo, KernelTarget, ModuleInfo};
use patchbay_core::modinfo::Modinfo;
use patchbay_core::{
    BuildId, Bundle, CveId, Manifest, ModuleName, ObjectName, PatchLevel, ReplacedFunction, Sha256,
    MANIFEST_FORMAT,
};
use patchbay_kernels::{Kernel, SymbolTable};

use crate::codegen::{self, PatchDescription};
use crate::kbuild::{self, UndefinedSymbols};
use crate::klp_elf;
use crate::markers::{self, CallbackMarker, Definition, Marker};
use crate::symbols::{self, Exports, SymbolSources};

/// Everything the module builder fails on (source mode, and diff mode's last stage), each
/// naming the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// One of the author's C files could not be read.
    #[error("cannot read patch source {path}: {source}")]
    ReadSource {
        /// The C file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `PATCHBAY_*` macro call in the sources is malformed.
    #[error(transparent)]
    Marker(#[from] markers::MarkerError),
    /// Source mode: none of the files (listed, comma-separated) has a `PATCHBAY_REPLACE`.
    #[error(
        "no PATCHBAY_REPLACE(object, old_function, new_function) marker in {0}; \
         mark each replacement function so the builder knows what it replaces"
    )]
    NoMarkers(String),
    /// Nothing to replace (diff mode found no replaced function; source mode has `NoMarkers`).
    #[error("the patch replaces no kernel function, so there is nothing to live-patch")]
    NothingReplaced,
    /// An old function is not in the kernel, or an undefined symbol cannot be resolved.
    #[error(transparent)]
    Symbols(#[from] symbols::SymbolError),
    /// kbuild (or the debug strip after it) failed.
    #[error(transparent)]
    Kbuild(#[from] kbuild::KbuildError),
    /// The kernel's files (System.map, modules, headers, vermagic) could not be had.
    #[error(transparent)]
    Kernel(#[from] patchbay_kernels::KernelError),
    /// The markers or the built module break a rule the kernel or the tables need (bad name,
    /// duplicate replacement, wrong vermagic, missing symbol, ...); the text says which.
    #[error("the built module is unusable: {0}")]
    Module(String),
    /// The linked module could not be read or rewritten into livepatch relocations.
    #[error(transparent)]
    KlpElf(#[from] klp_elf::KlpElfError),
    /// The bundle could not be assembled or written to the output path.
    #[error(transparent)]
    Bundle(#[from] patchbay_core::BundleError),
    /// A file operation of the build failed.
    #[error("{what}: {source}")]
    Io {
        /// What the builder was doing (`read /path/to/x.ko`, `create /tmp/...`).
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// Where and as what a patch module is built, whichever mode found what it replaces.
#[derive(Debug, Clone)]
pub struct ModuleBuild {
    /// The patch level the module carries.
    pub level: PatchLevel,
    /// The CVEs the level fixes, as the manifest records them.
    pub fixes: Vec<CveId>,
    /// `.ko` files of modules that are not part of the distro kernel (e.g. third-party modules)
    /// but hold functions the patch replaces or symbols it uses.
    pub extra_objects: Vec<PathBuf>,
    /// A symbol table to use instead of the distro's full `System.map` (e.g. a host's
    /// `/proc/kallsyms` read with `nokaslr`).
    pub symbols_override: Option<PathBuf>,
    /// Where the bundle is written (only when every stage succeeded).
    pub output: PathBuf,
    /// Keep the kbuild directory here (for debugging) instead of a temporary one.
    pub keep_work_dir: Option<PathBuf>,
}

/// A request to build one patch level from C sources (source mode).
#[derive(Debug, Clone)]
pub struct SourceBuild {
    /// The author's C files: replacement functions, each with a `PATCHBAY_REPLACE` marker.
    pub sources: Vec<PathBuf>,
    /// Level, output and the rest, as for any module build.
    pub module: ModuleBuild,
}

/// What a patch module is made of, whichever mode found it: the functions it replaces, its
/// callbacks, and the code that defines them.
#[derive(Debug, Clone, Default)]
pub struct ModuleParts {
    /// The kernel functions the module replaces, and their replacements.
    pub markers: Vec<Marker>,
    /// Livepatch callbacks, at most one of each kind per object.
    pub callbacks: Vec<CallbackMarker>,
    /// C sources compiled into the module, as text (source mode: the author's files).
    pub c_sources: Vec<String>,
    /// Relocatable objects linked into the module as they are (diff mode's extracted code).
    pub linked_objects: Vec<PathBuf>,
    /// Which copy of a repeated symbol name the code's references mean (diff mode knows it).
    pub hints: symbols::ResolutionHints,
}

/// What was built.
#[derive(Debug)]
pub struct BuildReport {
    /// The bundle's manifest, as written.
    pub manifest: Manifest,
    /// The livepatch relocation sections of the module, as the kernel will read them.
    pub klp_relocations: Vec<klp_elf::KlpRelaSection>,
}

/// The module name for a kernel build and level: unique per (build-id, level), stable, and
/// short enough for the kernel's 55-byte limit.
pub fn module_name(build_id: &BuildId, level: PatchLevel) -> ModuleName {
    ModuleName::of_level(build_id, level)
}

/// Source mode: builds the bundle of the C sources `request` names, for `kernel`.
pub fn build(kernel: &Kernel, request: &SourceBuild) -> Result<BuildReport, BuildError> {
    let parts = collect_markers(&request.sources)?;
    build_from_markers(kernel, &request.module, &parts)
}

/// Source mode's first stage: reads the author's C files and the markers in them. The files
/// are compiled into the module as they are.
pub fn collect_markers(sources: &[PathBuf]) -> Result<ModuleParts, BuildError> {
    let mut parts = ModuleParts::default();
    for path in sources {
        let text = std::fs::read_to_string(path).map_err(|source| BuildError::ReadSource {
            path: path.display().to_string(),
            source,
        })?;
        let shown = path.display().to_string();
        parts.markers.extend(markers::find_markers(&shown, &text)?);
        parts
            .callbacks
            .extend(markers::find_callbacks(&shown, &text)?);
        parts.c_sources.push(text);
    }
    if parts.markers.is_empty() {
        let names: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
        return Err(BuildError::NoMarkers(names.join(", ")));
    }
    Ok(parts)
}

/// Whether `name` can be a kernel symbol the generated C names in a string: C identifier
/// characters and the dots of GCC's clone suffixes (`foo.isra.0`, `bar.cold`).
fn is_symbol_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// What the markers and callbacks must hold, whichever mode found them: names the generated C
/// can spell, something to replace, each function replaced once, callbacks only for objects
/// the patch changes and at most one of each kind per object.
fn check_parts(parts: &ModuleParts) -> Result<(), BuildError> {
    for m in &parts.markers {
        // A macro's pointer symbol is spelled with the old function's name, so source mode's
        // names are C identifiers (`find_markers` checks them); a linked marker may name any
        // kernel symbol.
        let old_ok = match m.defined {
            Definition::Macro => is_c_identifier(&m.old_function),
            Definition::Linked => is_symbol_name(&m.old_function),
        };
        if !old_ok || !is_c_identifier(&m.new_function) {
            return Err(BuildError::Module(format!(
                "cannot generate the tables for {}:{} replaced by {:?}: not a symbol name",
                m.object, m.old_function, m.new_function
            )));
        }
    }
    if let Some(cb) = parts
        .callbacks
        .iter()
        .find(|cb| !is_c_identifier(&cb.function))
    {
        return Err(BuildError::Module(format!(
            "cannot generate the tables for the {} callback {:?}: not a C identifier",
            cb.kind.field(),
            cb.function
        )));
    }
    if parts.markers.is_empty() {
        return Err(BuildError::NothingReplaced);
    }
    for cb in &parts.callbacks {
        if !parts.markers.iter().any(|m| m.object == cb.object) {
            return Err(BuildError::Module(format!(
                "the {} callback {} is for {}, but no PATCHBAY_REPLACE replaces a function of \
                 {}; callbacks belong to an object the patch changes",
                cb.kind.field(),
                cb.function,
                cb.object,
                cb.object
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for m in &parts.markers {
        if !seen.insert((&m.object, &m.old_function)) {
            return Err(BuildError::Module(format!(
                "{}:{} is replaced by markers in two files; keep one",
                m.object, m.old_function
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for cb in &parts.callbacks {
        if !seen.insert((&cb.object, cb.kind)) {
            return Err(BuildError::Module(format!(
                "{}: two {} callbacks; combine them into one function",
                cb.object,
                cb.kind.field()
            )));
        }
    }
    Ok(())
}

/// Both modes' module builder: builds the bundle of `parts` for `kernel` as `request` says.
pub fn build_from_markers(
    kernel: &Kernel,
    request: &ModuleBuild,
    parts: &ModuleParts,
) -> Result<BuildReport, BuildError> {
    // 1. Markers.
    check_parts(parts)?;

    // 2. Symbol tables of the target kernel.
    let build_id = kernel.build_id().clone();
    let release = kernel.release().clone();
    let vmlinux_table = match &request.symbols_override {
        Some(path) => SymbolTable::load(path)?,
        None => SymbolTable::load(&kernel.system_map()?)?,
    };
    let module_tables = module_tables(kernel, &parts.markers, &request.extra_objects)?;
    // The symbol-to-file index is a large one-time extraction: only when a hint needs it.
    let symbol_files = if parts.hints.file_hints.is_empty() {
        None
    } else {
        Some(kernel.symbol_files()?)
    };
    let sources_for_symbols = SymbolSources {
        vmlinux: &vmlinux_table,
        modules: module_tables.iter().map(|(n, t)| (n.clone(), t)).collect(),
        symbol_files: symbol_files.as_ref(),
        hints: &parts.hints,
    };
    symbols::check_old_functions(&parts.markers, &sources_for_symbols)?;

    // 3. Generate and build.
    let name = module_name(&build_id, request.level);
    let temp;
    let work_dir: &Path = match &request.keep_work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
            dir
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("patchbay-build-")
                .tempdir()
                .map_err(io("create a temporary build directory"))?;
            temp.path()
        }
    };
    write_kbuild_dir(
        work_dir,
        &PatchDescription {
            module: &name,
            level: request.level,
            release: &release,
            build_id: &build_id,
        },
        &parts.markers,
        &parts.callbacks,
        &parts.c_sources,
        &parts.linked_objects,
    )?;
    let ko_path = kbuild::build_module(
        kernel,
        work_dir,
        name.as_str(),
        UndefinedSymbols::AllowForLivepatch,
    )?;
    kbuild::strip_debug(&ko_path)?;
    let linked = std::fs::read(&ko_path).map_err(io(format!("read {}", ko_path.display())))?;
    check_marker_symbols(&linked, &parts.markers)?;

    // 4. Livepatch relocations for what the kernel does not export.
    let exports_path = kernel.module_symvers();
    let exports = Exports::parse(
        &std::fs::read_to_string(&exports_path)
            .map_err(io(format!("read {}", exports_path.display())))?,
    );
    if exports.is_empty() {
        return Err(BuildError::Module(format!(
            "{} lists no exported symbols; the kernel headers are incomplete: fetch them again",
            exports_path.display()
        )));
    }
    let undefined = klp_elf::undefined_symbols(&linked)?;
    let targets = symbols::resolve_undefined(&undefined, &exports, &sources_for_symbols)?;
    let module = if targets.is_empty() {
        linked
    } else {
        klp_elf::rewrite(&linked, &targets)?
    };

    // 5. Validate what the kernel will check.
    let info = Modinfo::of_module(&module).map_err(|e| BuildError::Module(e.to_string()))?;
    let expected = kernel.vermagic()?;
    let actual = info.value("vermagic").unwrap_or_default();
    if actual.trim() != expected.trim() {
        return Err(BuildError::Module(format!(
            "vermagic {actual:?} does not match the kernel's {expected:?}; the headers tree does not \
             belong to this kernel"
        )));
    }
    if info.value("livepatch") != Some("Y") {
        return Err(BuildError::Module(
            "the module is not marked as a livepatch (modinfo livepatch=Y)".into(),
        ));
    }
    let klp_relocations = klp_elf::inspect(&module)?;

    // 6. Bundle.
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        kernel: KernelTarget {
            release,
            build_id,
            upstream_version: kernel.upstream_version(),
            package_version: Some(kernel.package_version().to_owned()),
        },
        level: request.level,
        module: ModuleInfo {
            name,
            sha256: Sha256::of(&module),
            size: module.len() as u64,
        },
        replaced_functions: parts
            .markers
            .iter()
            .map(|m| ReplacedFunction {
                object: m.object.clone(),
                function: m.old_function.clone(),
                sympos: m.sympos,
                replacement: m.new_function.clone(),
            })
            .collect(),
        fixes: request.fixes.clone(),
        builder: BuilderInfo {
            name: "patchbay-build".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        created: patchbay_core::clock::now_rfc3339(),
    };
    Bundle::new(manifest.clone(), module)?.write(&request.output)?;
    Ok(BuildReport {
        manifest,
        klp_relocations,
    })
}

fn module_tables(
    kernel: &Kernel,
    markers: &[Marker],
    extra_objects: &[PathBuf],
) -> Result<Vec<(ObjectName, SymbolTable)>, BuildError> {
    let mut tables = Vec::new();
    for extra in extra_objects {
        let bytes = std::fs::read(extra).map_err(io(format!("read {}", extra.display())))?;
        let info = Modinfo::of_module(&bytes)
            .map_err(|e| BuildError::Module(format!("{}: {e}", extra.display())))?;
        let name = info.value("name").ok_or_else(|| {
            BuildError::Module(format!(
                "{} has no module name in .modinfo",
                extra.display()
            ))
        })?;
        let object: ObjectName = name
            .parse()
            .map_err(|e| BuildError::Module(format!("{}: {e}", extra.display())))?;
        tables.push((object, SymbolTable::from_module_ko(&bytes)?));
    }
    let wanted: BTreeSet<&ObjectName> = markers
        .iter()
        .map(|m| &m.object)
        .filter(|o| !o.is_vmlinux())
        .collect();
    for object in wanted {
        if tables.iter().any(|(name, _)| name == object) {
            continue;
        }
        let path = kernel.find_module(object.as_str())?.ok_or_else(|| {
            BuildError::Module(format!(
                "the kernel has no module {object}; for a module that is not part of the distro \
                 kernel pass its .ko with --object-file"
            ))
        })?;
        // 6.12's modules are `.ko.xz`.
        let bytes = patchbay_kernels::read_module(&path)?;
        tables.push((object.clone(), SymbolTable::from_module_ko(&bytes)?));
    }
    Ok(tables)
}

fn write_kbuild_dir(
    dir: &Path,
    desc: &PatchDescription<'_>,
    markers: &[Marker],
    callbacks: &[CallbackMarker],
    c_sources: &[String],
    linked_objects: &[PathBuf],
) -> Result<(), BuildError> {
    let include = dir.join("include");
    std::fs::create_dir_all(&include).map_err(io(format!("create {}", include.display())))?;
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))
    };
    write(include.join("patchbay.h"), crate::PATCHBAY_H)?;
    write(
        dir.join("patchbay_main.c"),
        &codegen::main_c(desc, markers, callbacks),
    )?;
    let mut objects = Vec::new();
    for (index, text) in c_sources.iter().enumerate() {
        write(dir.join(format!("pb_src{index}.c")), text)?;
        objects.push(format!("pb_src{index}.o"));
    }
    for (index, object) in linked_objects.iter().enumerate() {
        // kbuild copies `x.o_shipped` to `x.o` and links it like a compiled object.
        let shipped = dir.join(format!("pb_obj{index}.o_shipped"));
        std::fs::copy(object, &shipped).map_err(io(format!("copy {}", object.display())))?;
        // modpost reads every object's `.cmd` file (for the module's srcversion); a shipped
        // object has no sources to list.
        write(
            dir.join(format!(".pb_obj{index}.o.cmd")),
            &format!("cmd_pb_obj{index}.o := cp pb_obj{index}.o_shipped pb_obj{index}.o\n"),
        )?;
        objects.push(format!("pb_obj{index}.o"));
    }
    write(dir.join("Kbuild"), &codegen::kbuild(desc.module, &objects))
}

/// Every marker's symbol must be in the linked module: a source marker inside `#if 0` defined
/// no pointer, and a linked replacement must be in the objects linked in.
fn check_marker_symbols(ko: &[u8], markers: &[Marker]) -> Result<(), BuildError> {
    let file = object::File::parse(ko).map_err(|e| BuildError::Module(e.to_string()))?;
    let defined: BTreeSet<String> = file
        .symbols()
        .filter(|s| !s.is_undefined())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect();
    let missing = |definition: Definition| -> Vec<String> {
        markers
            .iter()
            .filter(|m| m.defined == definition && !defined.contains(&m.symbol()))
            .map(|m| format!("{}:{}", m.object, m.old_function))
            .collect()
    };
    let from_macros = missing(Definition::Macro);
    if !from_macros.is_empty() {
        return Err(BuildError::Module(format!(
            "markers found in the source were not compiled (inside #if 0 or a macro?): {}",
            from_macros.join(", ")
        )));
    }
    let linked = missing(Definition::Linked);
    if !linked.is_empty() {
        return Err(BuildError::Module(format!(
            "the objects linked into the module do not define the replacements of: {}",
            linked.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::markers::CallbackKind;

    #[test]
    fn module_names_are_unique_per_build_and_level() {
        let id: BuildId = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
        let n = module_name(&id, 12.try_into().unwrap());
        assert_eq!(n.as_str(), "pb_0123456789ab_l12");
    }

    fn linked(object: &str, old: &str, sympos: u32) -> Marker {
        Marker {
            object: object.parse().unwrap(),
            old_function: old.into(),
            new_function: format!("__patchbay_new__{}", old.replace('.', "_")),
            sympos,
            defined: Definition::Linked,
        }
    }

    fn callback(object: &str, kind: CallbackKind) -> CallbackMarker {
        CallbackMarker {
            object: object.parse().unwrap(),
            kind,
            function: format!("__patchbay_cb__{}", kind.field()),
            defined: Definition::Linked,
        }
    }

    #[track_caller]
    fn refused(parts: &ModuleParts, expected: &str) {
        let err = check_parts(parts).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{err:?} does not contain {expected:?}"
        );
    }

    /// Diff mode's boundary: typed markers (a position, a clone's kernel name, a module's
    /// function) and callbacks go to the module builder as they are.
    #[test]
    fn typed_markers_and_callbacks_are_checked_as_data() {
        let parts = ModuleParts {
            markers: vec![
                linked("vmlinux", "dup_helper", 2),
                linked("vmlinux", "tcp_ack.isra.0", 0),
                linked("nf_tables", "nft_lookup_eval", 0),
            ],
            callbacks: vec![
                callback("vmlinux", CallbackKind::PostUnpatch),
                callback("nf_tables", CallbackKind::PrePatch),
            ],
            ..ModuleParts::default()
        };
        check_parts(&parts).unwrap();

        // A clone's name cannot be spelled in a source marker's pointer symbol.
        let mut macro_clone = parts.clone();
        macro_clone.markers[1].defined = Definition::Macro;
        refused(&macro_clone, "vmlinux:tcp_ack.isra.0");
        // Nor can anything but a symbol name go into the generated C.
        let mut quoted = parts.clone();
        quoted.markers[0].old_function = "dup\"helper".into();
        refused(&quoted, "not a symbol name");
        let mut bad_callback = parts.clone();
        bad_callback.callbacks[0].function = "pb cleanup".into();
        refused(&bad_callback, "post_unpatch callback");

        let mut stray = parts.clone();
        stray
            .callbacks
            .push(callback("ext4", CallbackKind::PostPatch));
        refused(
            &stray,
            "the post_patch callback __patchbay_cb__post_patch is for ext4",
        );
        let mut twice = parts.clone();
        twice.callbacks.push(CallbackMarker {
            function: "__patchbay_cb__other".into(),
            ..callback("nf_tables", CallbackKind::PrePatch)
        });
        refused(&twice, "nf_tables: two pre_patch callbacks");
        let mut replaced_twice = parts.clone();
        replaced_twice
            .markers
            .push(linked("vmlinux", "dup_helper", 1));
        refused(
            &replaced_twice,
            "vmlinux:dup_helper is replaced by markers in two files",
        );
        assert!(matches!(
            check_parts(&ModuleParts::default()),
            Err(BuildError::NothingReplaced)
        ));
    }

    /// A relocatable object defining `defined`, as the linked module would.
    fn object_defining(defined: &[&str]) -> Vec<u8> {
        use object::write;
        let mut obj = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let text = obj.section_id(write::StandardSection::Text);
        obj.append_section_data(text, &[0xc3; 16], 16);
        for (index, name) in defined.iter().enumerate() {
            obj.add_symbol(write::Symbol {
                name: name.as_bytes().to_vec(),
                value: index as u64,
                size: 1,
                kind: object::SymbolKind::Text,
                scope: object::SymbolScope::Linkage,
                weak: false,
                section: write::SymbolSection::Section(text),
                flags: object::SymbolFlags::None,
            });
        }
        obj.write().unwrap()
    }

    #[test]
    fn each_marker_s_symbol_must_be_in_the_linked_module() {
        let from_source = Marker {
            object: ObjectName::vmlinux(),
            old_function: "cmdline_proc_show".into(),
            new_function: "pb_show".into(),
            sympos: 0,
            defined: Definition::Macro,
        };
        let markers = [from_source, linked("vmlinux", "tcp_ack.isra.0", 0)];
        let symbols = [
            "__patchbay_replace__vmlinux__cmdline_proc_show__0",
            "__patchbay_new__tcp_ack_isra_0",
        ];
        check_marker_symbols(&object_defining(&symbols), &markers).unwrap();
        let error_without = |missing: &str| {
            let defined: Vec<&str> = symbols.into_iter().filter(|s| *s != missing).collect();
            check_marker_symbols(&object_defining(&defined), &markers)
                .unwrap_err()
                .to_string()
        };
        let err = error_without(symbols[0]);
        assert!(
            err.contains("not compiled (inside #if 0 or a macro?): vmlinux:cmdline_proc_show"),
            "{err}"
        );
        let err = error_without(symbols[1]);
        assert!(
            err.contains("do not define the replacements of: vmlinux:tcp_ack.isra.0"),
            "{err}"
        );
    }
}

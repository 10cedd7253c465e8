//! Loading a recipe and the modules it imports: the standard library (embedded in the
//! binary) and `.kd` files next to the recipe.

use crate::codes::Code;
use crate::diag::{Diagnostic, Diagnostics};
use crate::source::{SourceMap, Span};
use crate::syntax::ast::{self, Item};
use crate::syntax::parse;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The compiler's view of the machine: module files, the library's manifest, the environment.
/// The CLI passes one backed by the file system ([`crate::FsLoader`]); tests may pass their
/// own.
pub trait Loader {
    fn read(&self, path: &Path) -> Option<String>;

    /// The text of the standard library's module `name` (`clip_kd`): the one compiled into
    /// the binary. A test may substitute one to see which recipes a change reaches.
    fn std_module(&self, name: &str) -> Option<String> {
        STD_MODULES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| text.to_string())
    }

    /// The manifest (`kdc.toml`) that governs the recipe at `recipe`: its path and text.
    fn manifest(&self, _recipe: &Path) -> Option<(PathBuf, String)> {
        None
    }

    /// An environment variable (`KDC_ROOT_<NAME>` overrides a manifest's root).
    fn env(&self, _name: &str) -> Option<String> {
        None
    }

    /// Whether a folder exists (a root that does not is a warning).
    fn is_dir(&self, _path: &Path) -> bool {
        true
    }
}

/// The standard library, compiled into the binary.
pub const STD_MODULES: &[(&str, &str)] = &[
    ("prelude", include_str!("../../std/prelude.kd")),
    ("clip", include_str!("../../std/clip.kd")),
    ("clip_kd", include_str!("../../std/clip_kd.kd")),
    ("comkd", include_str!("../../std/comkd.kd")),
    ("dcclip", include_str!("../../std/dcclip.kd")),
    ("tinyclip", include_str!("../../std/tinyclip.kd")),
    ("kd", include_str!("../../std/kd.kd")),
];

pub type ModuleId = usize;

/// A parsed module and the names it defines and imports.
#[derive(Debug)]
pub struct Module {
    /// `std.clip_kd`, or the recipe's path for the root.
    pub name: String,
    pub ast: ast::File,
    /// Top-level bindings by name: index into `ast.items`.
    pub bindings: HashMap<String, usize>,
    /// Functions by name: index into `ast.items`.
    pub fns: HashMap<String, usize>,
    /// Imported names: (module, item name in that module, span of the import).
    pub imports: HashMap<String, (ModuleId, String, Span)>,
    /// Names whose import failed (already reported): uses of them are not reported again.
    pub failed_imports: std::collections::HashSet<String>,
}

impl Module {
    pub fn fn_def(&self, name: &str) -> Option<&ast::FnDef> {
        match self.fns.get(name).map(|&i| &self.ast.items[i]) {
            Some(Item::Fn(f)) => Some(f),
            _ => None,
        }
    }

    pub fn binding(&self, name: &str) -> Option<&ast::Binding> {
        match self.bindings.get(name).map(|&i| &self.ast.items[i]) {
            Some(Item::Binding(b)) => Some(b),
            _ => None,
        }
    }

    /// A library: functions (and perhaps helper bindings), but no stage and none of a
    /// recipe's own bindings (`loss`, `data`, `train`, `eval`, `freeze`). `kdc check` checks
    /// it as a module: every signature, default and name in every body.
    pub fn is_library(&self) -> bool {
        !self.fns.is_empty()
            && self.stages().next().is_none()
            && !crate::check::SPECIAL_BINDINGS
                .iter()
                .any(|b| self.bindings.contains_key(*b))
    }

    pub fn stages(&self) -> impl Iterator<Item = &ast::Stage> {
        self.ast.items.iter().filter_map(|i| match i {
            Item::Stage(s) => Some(s),
            _ => None,
        })
    }
}

/// The root recipe (module 0) and every module it reaches.
#[derive(Debug, Default)]
pub struct Program {
    pub modules: Vec<Module>,
    by_name: HashMap<String, ModuleId>,
    /// The recipe library's manifest, when one governs the recipe (and is valid).
    pub manifest: Option<crate::manifest::Manifest>,
    /// For each root the manifest declares: whether its folder exists on this machine.
    pub roots_present: HashMap<String, bool>,
    /// The manifest's file, when one was found (even if it did not parse).
    pub manifest_file: Option<PathBuf>,
}

impl Program {
    pub fn root(&self) -> &Module {
        &self.modules[0]
    }

    pub fn module_id(&self, name: &str) -> Option<ModuleId> {
        self.by_name.get(name).copied()
    }

    /// Loads the recipe at `path` (already read into `text`) and everything it imports.
    /// Returns `None` when the recipe itself does not parse.
    pub fn load(
        path: &str,
        text: &str,
        loader: &dyn Loader,
        sources: &mut SourceMap,
        diags: &mut Diagnostics,
    ) -> Option<Program> {
        let mut program = Program::default();
        let base = Path::new(path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let file = sources.add(path, text);
        let ast = match parse(file, text) {
            Ok(ast) => ast,
            Err(errors) => {
                errors.into_iter().for_each(|e| diags.push(e));
                return None;
            }
        };
        if let Some((manifest_path, manifest_text)) = loader.manifest(Path::new(path)) {
            program.manifest_file = Some(manifest_path.clone());
            program.manifest = crate::manifest::parse(
                &manifest_path,
                &manifest_text,
                &|name| loader.env(name),
                sources,
                diags,
            );
            if let Some(m) = &program.manifest {
                program.roots_present = m
                    .roots
                    .iter()
                    .map(|(name, root)| (name.clone(), loader.is_dir(&root.path)))
                    .collect();
            }
        }
        program.add_module(path.to_string(), ast, &base, loader, sources, diags);
        Some(program)
    }

    fn add_module(
        &mut self,
        name: String,
        ast: ast::File,
        base: &Path,
        loader: &dyn Loader,
        sources: &mut SourceMap,
        diags: &mut Diagnostics,
    ) -> ModuleId {
        let id = self.modules.len();
        self.by_name.insert(name.clone(), id);
        let mut bindings = HashMap::new();
        let mut fns = HashMap::new();
        let mut first_span: HashMap<String, Span> = HashMap::new();
        for (index, item) in ast.items.iter().enumerate() {
            let (ident, is_fn) = match item {
                Item::Binding(b) => (&b.name, false),
                Item::Fn(f) => (&f.name, true),
                _ => continue,
            };
            if let Some(previous) = first_span.get(&ident.name) {
                diags.push(
                    Diagnostic::error(
                        Code::DuplicateDefinition,
                        ident.span,
                        format!("`{}` is defined twice", ident.name),
                    )
                    .primary_label("defined again here")
                    .label(*previous, "first defined here"),
                );
                continue;
            }
            first_span.insert(ident.name.clone(), ident.span);
            if is_fn {
                fns.insert(ident.name.clone(), index);
            } else {
                bindings.insert(ident.name.clone(), index);
            }
        }
        self.modules.push(Module {
            name: name.clone(),
            ast,
            bindings,
            fns,
            imports: HashMap::new(),
            failed_imports: Default::default(),
        });

        // Every module but the prelude sees the prelude's functions.
        let mut imports = HashMap::new();
        let mut failed = std::collections::HashSet::new();
        if name != "std.prelude" {
            if let Some(prelude) = self.load_module(
                &["std".into(), "prelude".into()],
                base,
                loader,
                sources,
                diags,
                None,
            ) {
                for fname in self.modules[prelude].fns.keys() {
                    imports.insert(
                        fname.clone(),
                        (
                            prelude,
                            fname.clone(),
                            Span::new(crate::source::FileId(0), 0, 0),
                        ),
                    );
                }
            }
        }
        let uses: Vec<ast::Use> = self.modules[id]
            .ast
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Use(u) => Some(u.clone()),
                _ => None,
            })
            .collect();
        for u in uses {
            let (module_path, names): (Vec<ast::Ident>, Vec<ast::Ident>) = match &u.names {
                Some(names) => (u.path.clone(), names.clone()),
                // `use std.clip_kd` names a whole module: kdc imports items, by name.
                None if u.path.len() == 2
                    && u.path[0].name == "std"
                    && STD_MODULES.iter().any(|(n, _)| *n == u.path[1].name) =>
                {
                    diags.push(
                        Diagnostic::error(
                            Code::UnknownModule,
                            u.span,
                            format!(
                                "`use` imports items of a module, not the module `std.{}` itself",
                                u.path[1].name
                            ),
                        )
                        .primary_label("no item named")
                        .hint(format!(
                            "name the items: `use std.{}.{{crd, fd}}`",
                            u.path[1].name
                        )),
                    );
                    continue;
                }
                None if u.path.len() >= 2 => (
                    u.path[..u.path.len() - 1].to_vec(),
                    vec![u.path.last().unwrap().clone()],
                ),
                None => {
                    diags.push(
                        Diagnostic::error(
                            Code::UnknownModule,
                            u.span,
                            "`use` needs a module and an item",
                        )
                        .primary_label("nothing to import")
                        .hint("write `use std.clip_kd.{crd, fd}` or `use std.clip_kd.fd`"),
                    );
                    continue;
                }
            };
            let segments: Vec<String> = module_path.iter().map(|i| i.name.clone()).collect();
            let path_span = module_path
                .first()
                .unwrap()
                .span
                .to(module_path.last().unwrap().span);
            let Some(target) =
                self.load_module(&segments, base, loader, sources, diags, Some(path_span))
            else {
                failed.extend(names.iter().map(|n| n.name.clone()));
                continue;
            };
            for item in names {
                let module = &self.modules[target];
                let exists =
                    module.fns.contains_key(&item.name) || module.bindings.contains_key(&item.name);
                if !exists {
                    let candidates: Vec<&str> = module
                        .fns
                        .keys()
                        .chain(module.bindings.keys())
                        .map(String::as_str)
                        .collect();
                    let mut d = Diagnostic::error(
                        Code::UnknownModule,
                        item.span,
                        format!("`{}` has no item `{}`", module.name, item.name),
                    )
                    .primary_label("not defined in that module");
                    if let Some(s) = crate::suggest::closest(&item.name, candidates.iter().copied())
                    {
                        d = d.hint(format!("did you mean `{s}`?"));
                    }
                    diags.push(d);
                    failed.insert(item.name.clone());
                    continue;
                }
                if let Some((_, _, previous)) = imports.get(&item.name) {
                    if previous.end > 0 {
                        diags.push(
                            Diagnostic::error(
                                Code::DuplicateDefinition,
                                item.span,
                                format!("`{}` is imported twice", item.name),
                            )
                            .primary_label("imported again here")
                            .label(*previous, "first imported here"),
                        );
                        continue;
                    }
                }
                if let Some(local) = first_span.get(&item.name) {
                    diags.push(
                        Diagnostic::error(
                            Code::DuplicateDefinition,
                            item.span,
                            format!("`{}` is both imported and defined", item.name),
                        )
                        .primary_label("imported here")
                        .label(*local, "defined here"),
                    );
                    continue;
                }
                imports.insert(item.name.clone(), (target, item.name.clone(), item.span));
            }
        }
        self.modules[id].imports = imports;
        self.modules[id].failed_imports = failed;
        id
    }

    fn load_module(
        &mut self,
        segments: &[String],
        base: &Path,
        loader: &dyn Loader,
        sources: &mut SourceMap,
        diags: &mut Diagnostics,
        span: Option<Span>,
    ) -> Option<ModuleId> {
        let name = segments.join(".");
        if let Some(&id) = self.by_name.get(&name) {
            return Some(id);
        }
        let (display, text, module_base) = if segments[0] == "std" {
            let found = (segments.len() == 2)
                .then(|| loader.std_module(&segments[1]))
                .flatten();
            match found {
                Some(text) => (format!("std/{}.kd", segments[1]), text, PathBuf::new()),
                None => {
                    if let Some(span) = span {
                        let names = STD_MODULES
                            .iter()
                            .filter(|(n, _)| *n != "prelude")
                            .map(|(n, _)| format!("std.{n}"));
                        let listed: Vec<String> = names.collect();
                        let mut d = Diagnostic::error(
                            Code::UnknownModule,
                            span,
                            format!("there is no module `{name}`"),
                        )
                        .primary_label("unknown module")
                        .note(format!(
                            "the standard library's modules are {}",
                            listed.join(", ")
                        ));
                        if let Some(s) =
                            crate::suggest::closest(&name, listed.iter().map(String::as_str))
                        {
                            d = d.hint(format!("did you mean `{s}`?"));
                        }
                        diags.push(d);
                    }
                    return None;
                }
            }
        } else {
            let mut path = base.to_path_buf();
            for s in segments {
                path.push(s);
            }
            path.set_extension("kd");
            match loader.read(&path) {
                Some(text) => (
                    path.display().to_string(),
                    text,
                    path.parent().map(Path::to_path_buf).unwrap_or_default(),
                ),
                None => {
                    if let Some(span) = span {
                        diags.push(
                            Diagnostic::error(Code::UnknownModule, span, format!("there is no module `{name}`"))
                                .primary_label(format!("no file {}", path.display()))
                                .hint("standard library modules start with `std.`; other modules are .kd files relative to the recipe"),
                        );
                    }
                    return None;
                }
            }
        };
        let file = sources.add(display, text.clone());
        match parse(file, &text) {
            Ok(ast) => Some(self.add_module(name, ast, &module_base, loader, sources, diags)),
            Err(errors) => {
                errors.into_iter().for_each(|e| diags.push(e));
                None
            }
        }
    }
}

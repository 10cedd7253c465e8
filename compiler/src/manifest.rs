//! `kdc.toml`: a recipe library's manifest. kdc finds it upward from a recipe's folder, as cargo
//! finds `Cargo.toml`, and reads from it
//!
//! - the library's name;
//! - named asset roots, which recipes use as `"$teachers/vit-b-16.safetensors"` instead of
//!   `../../` paths (relative roots resolve against the manifest's folder; `KDC_ROOT_<NAME>`
//!   overrides one, for CI and clusters);
//! - defaults of the command line: device, threads, the runs folder;
//! - `kdc snap` settings.
//!
//! ```toml
//! [library]
//! name = "team-recipes"
//!
//! [roots]
//! teachers = "/shared/weights/teachers"
//! data = "../datasets"
//! runs = "../runs"
//!
//! [defaults]
//! device = "cpu"
//! threads = 8
//! runs = "$runs"
//!
//! [snap]
//! exclude = ["scratch/**"]
//! lowered = true
//! ```
//!
//! Parsing is pure: the [`crate::check::Loader`] finds and reads the file and the environment.
//! Errors are diagnostics at a line and column of the manifest (KD0043).

use crate::codes::Code;
use crate::diag::{Diagnostic, Diagnostics};
use crate::source::{SourceMap, Span};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The manifest's file name.
pub const FILE_NAME: &str = "kdc.toml";

/// A parsed, validated manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Where it was read from, as shown in messages.
    pub file: PathBuf,
    /// Its folder: relative roots and snapshot paths start here.
    pub dir: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub roots: BTreeMap<String, Root>,
    pub defaults: Defaults,
    pub snap: SnapSettings,
}

/// One named root.
#[derive(Clone, Debug)]
pub struct Root {
    /// The path as the manifest (or the environment variable) gives it.
    pub written: String,
    /// Resolved against the manifest's folder.
    pub path: PathBuf,
    /// The environment variable that overrode the manifest, if one did.
    pub from_env: Option<String>,
    /// The root's entry in the manifest.
    pub span: Span,
}

/// Defaults of `kdc run`, `kdc bench` and `kdc eval` (command-line options win).
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    /// `cpu` or `cuda`.
    pub device: Option<String>,
    /// Worker threads of the compute pool (0 or absent: one per core).
    pub threads: Option<usize>,
    /// The folder run folders go in (`runs/<recipe>`), which may start with `$root`.
    pub runs: Option<String>,
}

/// `[snap]`: what `kdc snap` covers.
#[derive(Clone, Debug)]
pub struct SnapSettings {
    /// Glob patterns, relative to the manifest's folder, of recipes without snapshots.
    pub exclude: Vec<String>,
    /// Whether snapshots show the lowered training step's summary (default true).
    pub lowered: bool,
}

impl Default for SnapSettings {
    fn default() -> Self {
        SnapSettings {
            exclude: Vec::new(),
            lowered: true,
        }
    }
}

/// The environment variable that overrides root `name`: `KDC_ROOT_TEACHERS` for `teachers`.
pub fn env_var(name: &str) -> String {
    format!("KDC_ROOT_{}", name.to_ascii_uppercase())
}

/// Devices a manifest may name.
pub const DEVICES: &[&str] = &["cpu", "cuda"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    library: Option<RawLibrary>,
    #[serde(default)]
    roots: BTreeMap<toml::Spanned<String>, toml::Spanned<String>>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    snap: RawSnap,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLibrary {
    name: toml::Spanned<String>,
    description: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    device: Option<toml::Spanned<String>>,
    threads: Option<toml::Spanned<i64>>,
    runs: Option<toml::Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSnap {
    #[serde(default)]
    exclude: Vec<toml::Spanned<String>>,
    lowered: Option<bool>,
}

/// Parses the manifest `file` (its text `text`, added to `sources`), resolving relative roots
/// against its folder and applying `env`'s overrides. Errors go to `diags`; `None` when the
/// manifest cannot be used at all.
pub fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    sources: &mut SourceMap,
    diags: &mut Diagnostics,
) -> Option<Manifest> {
    let id = sources.add(file.display().to_string(), text);
    let span = |range: std::ops::Range<usize>| Span::new(id, range.start, range.end);
    let raw: Raw = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let range = e.span().unwrap_or(0..0);
            diags.push(
                Diagnostic::error(
                    Code::BadManifest,
                    span(range),
                    format!(
                        "{} is not a valid manifest: {}",
                        file.display(),
                        e.message().trim()
                    ),
                )
                .primary_label("here")
                .hint(
                    "a kdc.toml has the tables [library] (name, description), [roots] \
                     (name = \"path\"), [defaults] (device, threads, runs) and [snap] \
                     (exclude, lowered)",
                ),
            );
            return None;
        }
    };
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut ok = true;
    let name = match &raw.library {
        Some(library) if !library.name.get_ref().trim().is_empty() => {
            library.name.get_ref().clone()
        }
        Some(library) => {
            diags.push(
                Diagnostic::error(
                    Code::BadManifest,
                    span(library.name.span()),
                    "the library's name is empty",
                )
                .primary_label("name it"),
            );
            ok = false;
            String::new()
        }
        None => {
            diags.push(
                Diagnostic::error(
                    Code::BadManifest,
                    span(0..0),
                    format!("{} has no [library] table", file.display()),
                )
                .hint("start it with `[library]` and `name = \"…\"`"),
            );
            return None;
        }
    };
    let mut roots = BTreeMap::new();
    for (key, value) in &raw.roots {
        let root = key.get_ref();
        if !is_identifier(root) {
            diags.push(
                Diagnostic::error(
                    Code::BadManifest,
                    span(key.span()),
                    format!("`{root}` cannot name a root"),
                )
                .primary_label("not a name")
                .hint("a root's name is a letter or `_` followed by letters, digits or `_`, as recipes write it after `$`"),
            );
            ok = false;
            continue;
        }
        let var = env_var(root);
        let (written, from_env) = match env(&var) {
            Some(over) if !over.is_empty() => (over, Some(var)),
            _ => (value.get_ref().clone(), None),
        };
        if written.trim().is_empty() {
            diags.push(
                Diagnostic::error(
                    Code::BadManifest,
                    span(value.span()),
                    format!("root `{root}` is an empty path"),
                )
                .primary_label("empty"),
            );
            ok = false;
            continue;
        }
        let path = clean(&dir.join(&written));
        roots.insert(
            root.clone(),
            Root {
                written,
                path,
                from_env,
                span: span(key.span().start..value.span().end),
            },
        );
    }
    let mut defaults = Defaults::default();
    if let Some(device) = &raw.defaults.device {
        if DEVICES.contains(&device.get_ref().as_str()) {
            defaults.device = Some(device.get_ref().clone());
        } else {
            let mut d = Diagnostic::error(
                Code::BadManifest,
                span(device.span()),
                format!("there is no device `{}`", device.get_ref()),
            )
            .primary_label("unknown device");
            d = match crate::suggest::closest(device.get_ref(), DEVICES.iter().copied()) {
                Some(s) => d.hint(format!("did you mean `{s}`?")),
                None => d.hint(format!("devices: {}", DEVICES.join(", "))),
            };
            diags.push(d);
            ok = false;
        }
    }
    if let Some(threads) = &raw.defaults.threads {
        match usize::try_from(*threads.get_ref()) {
            Ok(n) => defaults.threads = Some(n),
            Err(_) => {
                diags.push(
                    Diagnostic::error(
                        Code::BadManifest,
                        span(threads.span()),
                        format!(
                            "threads must be 0 (one per core) or more, not {}",
                            threads.get_ref()
                        ),
                    )
                    .primary_label("negative"),
                );
                ok = false;
            }
        }
    }
    if let Some(runs) = &raw.defaults.runs {
        match root_reference(runs.get_ref()) {
            Some((root, _)) if !roots.contains_key(root) => {
                diags.push(unknown_root(
                    root,
                    span(runs.span().start + 1..runs.span().start + 2 + root.len()),
                    &roots,
                    Some(file),
                ));
                ok = false;
            }
            _ => defaults.runs = Some(runs.get_ref().clone()),
        }
    }
    let mut snap = SnapSettings::default();
    for pattern in &raw.snap.exclude {
        if let Err(e) = globset::Glob::new(pattern.get_ref()) {
            diags.push(
                Diagnostic::error(
                    Code::BadManifest,
                    span(pattern.span()),
                    format!(
                        "`{}` is not a glob pattern: {}",
                        pattern.get_ref(),
                        e.kind()
                    ),
                )
                .primary_label("invalid pattern"),
            );
            ok = false;
        } else {
            snap.exclude.push(pattern.get_ref().clone());
        }
    }
    if let Some(lowered) = raw.snap.lowered {
        snap.lowered = lowered;
    }
    ok.then_some(Manifest {
        file: file.to_path_buf(),
        dir,
        name,
        description: raw.library.and_then(|l| l.description),
        roots,
        defaults,
        snap,
    })
}

/// `$name/rest` (or `$name` alone): the root's name and the rest of the path. A string that
/// does not start with `$` and a letter or `_` is an ordinary path.
pub fn root_reference(text: &str) -> Option<(&str, &str)> {
    let after = text.strip_prefix('$')?;
    let end = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(after.len());
    let name = &after[..end];
    let rest = &after[end..];
    if !is_identifier(name) || !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some((name, rest.trim_start_matches('/')))
}

/// The error for `$name` when the manifest has no such root (`manifest` is the manifest's
/// file, or `None` when no manifest was found).
pub fn unknown_root(
    name: &str,
    at: Span,
    roots: &BTreeMap<String, Root>,
    manifest: Option<&Path>,
) -> Diagnostic {
    match manifest {
        None => Diagnostic::error(
            Code::UnknownRoot,
            at,
            format!("`${name}` names a root of a kdc.toml, and none was found"),
        )
        .primary_label("no manifest declares it")
        .hint(format!(
            "create a kdc.toml in this folder or one above it, with `[library]` `name = \"…\"` \
             and `[roots]` `{name} = \"path/to/{name}\"`"
        )),
        Some(file) => {
            let d = Diagnostic::error(
                Code::UnknownRoot,
                at,
                format!("{} declares no root `{name}`", file.display()),
            )
            .primary_label("unknown root");
            match crate::suggest::closest(name, roots.keys().map(String::as_str)) {
                Some(s) => d.hint(format!("did you mean `${s}`?")),
                None if roots.is_empty() => {
                    d.hint(format!("declare it under [roots]: `{name} = \"path\"`"))
                }
                None => d.hint(format!(
                    "its roots are {}; or declare `{name}` under [roots]",
                    roots
                        .keys()
                        .map(|r| format!("`${r}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `a/b/../c` → `a/c`, `./a` → `a`, without touching the file system.
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Where a recipe's paths resolve: its own folder, and the manifest's roots for `$root/…`.
#[derive(Clone, Debug, Default)]
pub struct Base {
    dir: PathBuf,
    roots: BTreeMap<String, PathBuf>,
}

impl Base {
    /// Paths relative to `dir`, no roots.
    pub fn new(dir: impl Into<PathBuf>) -> Base {
        Base {
            dir: dir.into(),
            roots: BTreeMap::new(),
        }
    }

    /// Paths relative to `dir`, and the roots of `manifest` (if any).
    pub fn with_manifest(dir: impl Into<PathBuf>, manifest: Option<&Manifest>) -> Base {
        Base {
            dir: dir.into(),
            roots: manifest
                .map(|m| {
                    m.roots
                        .iter()
                        .map(|(k, r)| (k.clone(), r.path.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The recipe's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path as a recipe writes it: `$root/rest` under the root, an absolute path as is,
    /// anything else relative to the recipe's folder. (The checker has already reported
    /// unknown roots; one that slipped through stays a literal path and fails to open.)
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        if let Some((root, rest)) = path.to_str().and_then(root_reference) {
            if let Some(dir) = self.roots.get(root) {
                return if rest.is_empty() {
                    dir.clone()
                } else {
                    dir.join(rest)
                };
            }
        }
        self.dir.join(path)
    }
}

/// Finds `kdc.toml` in `start` or the nearest folder above it.
pub fn find_upward(start: &Path) -> Option<PathBuf> {
    let absolute = if start.as_os_str().is_empty() {
        std::env::current_dir().ok()?
    } else {
        std::fs::canonicalize(start).ok()?
    };
    let found = absolute
        .ancestors()
        .map(|d| d.join(FILE_NAME))
        .find(|f| f.is_file())?;
    // Shown relative to the working folder when it lies below it.
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| found.strip_prefix(&cwd).ok().map(Path::to_path_buf))
        .unwrap_or(found);
    Some(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str, env: &[(&str, &str)]) -> (Option<Manifest>, Vec<String>) {
        let mut sources = SourceMap::new();
        let mut diags = Diagnostics::default();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let lookup = move |k: &str| env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone());
        let m = parse(
            Path::new("lib/kdc.toml"),
            text,
            &lookup,
            &mut sources,
            &mut diags,
        );
        let messages = diags
            .iter()
            .map(|d| format!("{} {}", d.code, d.message))
            .collect();
        (m, messages)
    }

    #[test]
    fn roots_resolve_against_the_manifest_and_the_environment_overrides_them() {
        let text =
            "[library]\nname = \"team\"\n\n[roots]\nteachers = \"../weights\"\nabs = \"/data/x\"\n";
        let (m, errors) = parse_text(text, &[("KDC_ROOT_ABS", "/cluster/x")]);
        assert!(errors.is_empty(), "{errors:?}");
        let m = m.unwrap();
        assert_eq!(m.name, "team");
        assert_eq!(m.roots["teachers"].path, PathBuf::from("weights"));
        assert_eq!(m.roots["abs"].path, PathBuf::from("/cluster/x"));
        assert_eq!(m.roots["abs"].from_env.as_deref(), Some("KDC_ROOT_ABS"));
        let base = Base::with_manifest("lib/recipes", Some(&m));
        assert_eq!(
            base.join("$teachers/vit.safetensors"),
            PathBuf::from("weights/vit.safetensors")
        );
        assert_eq!(base.join("$abs"), PathBuf::from("/cluster/x"));
        assert_eq!(
            base.join("data/x.csv"),
            PathBuf::from("lib/recipes/data/x.csv")
        );
        assert_eq!(base.join("$nope/x"), PathBuf::from("lib/recipes/$nope/x"));
    }

    #[test]
    fn errors_name_the_line_and_the_offending_value() {
        for (text, expected) in [
            (
                "[library]\nname = \"x\"\n[roots]\n\"2x\" = \"a\"\n",
                "`2x` cannot name a root",
            ),
            (
                "[library]\nname = \"x\"\n[defaults]\ndevice = \"gpu\"\n",
                "there is no device `gpu`",
            ),
            (
                "[library]\nname = \"x\"\n[defaults]\nthreads = -1\n",
                "threads must be 0",
            ),
            (
                "[library]\nname = \"x\"\n[defaults]\nrunz = \"a\"\n",
                "unknown field `runz`",
            ),
            (
                "[library]\nname = \"x\"\n[defaults]\nruns = \"$run/x\"\n",
                "declares no root `run`",
            ),
            (
                "[library]\nname = \"x\"\n[snap]\nexclude = [\"a/[\"]\n",
                "is not a glob pattern",
            ),
            ("[roots]\na = \"b\"\n", "has no [library] table"),
            ("[library\nname = 1", "is not a valid manifest"),
        ] {
            let (m, errors) = parse_text(text, &[]);
            assert!(m.is_none(), "{text}");
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{text}: {errors:?}"
            );
            let code = if expected.contains("no root") {
                "KD0044"
            } else {
                "KD0043"
            };
            assert!(
                errors.iter().all(|e| e.starts_with(code)),
                "{text}: {errors:?}"
            );
        }
    }

    #[test]
    fn root_references() {
        assert_eq!(root_reference("$a/b/c"), Some(("a", "b/c")));
        assert_eq!(root_reference("$a"), Some(("a", "")));
        assert_eq!(root_reference("$5 off"), None);
        assert_eq!(root_reference("$a-b"), None);
        assert_eq!(root_reference("a/$b"), None);
        assert_eq!(clean(Path::new("a/./b/../../c")), PathBuf::from("c"));
        assert_eq!(clean(Path::new("../a/../b")), PathBuf::from("../b"));
    }
}

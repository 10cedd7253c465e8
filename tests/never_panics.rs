//! Random and mutated recipes through parse, check, explain and fmt: nothing panics, every
//! failure is a coded diagnostic, and whatever parses formats stably. Runs a bounded number
//! of cases (PROPTEST_CASES overrides it).

use kdc::check::Loader;
use proptest::prelude::*;
use std::path::Path;

/// Modules come only from the embedded standard library here, so cases are self-contained.
struct NoFiles;

impl Loader for NoFiles {
    fn read(&self, _: &Path) -> Option<String> {
        None
    }
}

fn seeds() -> &'static [String] {
    static SEEDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(load_seeds)
}

fn load_seeds() -> Vec<String> {
    let root = kdc_tests::root();
    let mut out = Vec::new();
    for dir in [
        "recipes/clip_kd",
        "recipes/demo",
        "recipes/dcclip",
        "recipes/comkd",
        "recipes/tinyclip",
        "tests/cases/err",
    ] {
        let Ok(listing) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut entries: Vec<_> = listing.map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "kd"))
        {
            out.push(std::fs::read_to_string(path).unwrap());
        }
    }
    for (_, text) in kdc::check::STD_MODULES {
        out.push(text.to_string());
    }
    out
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    ".",
    "+",
    "-",
    "*",
    "/",
    "@",
    "|",
    "\n",
    " ",
    "#",
    "\"",
    "fn",
    "let",
    "stage",
    "use",
    "std",
    "student",
    "teacher",
    "loss",
    "data",
    "train",
    "clip",
    "vit",
    "fd",
    "crd",
    "mse",
    "norm",
    "0",
    "1e999",
    "-1",
    "0.75",
    "1/0",
    "axis",
    "to",
    ".T",
    "image",
    "text",
    "dim",
    "masked",
    "from",
    "frozen",
    "preset",
    "\"ViT-B-16\"",
    "diagonal",
    "eye",
    "rows",
    "linear",
];

/// Feeds one source through every stage; panics only if the compiler does.
fn exercise(text: &str) {
    let compiled = kdc::compile("case.kd", text, &NoFiles);
    for d in compiled.diagnostics.sorted() {
        assert!(d.code.number() > 0);
        let _ = kdc::diag::render(
            d,
            &compiled.sources,
            kdc::diag::RenderOptions { color: false },
        );
    }
    if let Some(recipe) = &compiled.recipe {
        let _ = kdc::explain::ir(recipe);
    }
    if let Some(program) = &compiled.program {
        let ast = &program.root().ast;
        let _ = kdc::explain::ast(ast, &compiled.sources);
        let once = kdc::format::format(ast, text);
        let reparsed = kdc::syntax::parse(ast.file, &once)
            .unwrap_or_else(|e| panic!("formatted text does not parse: {e:?}\n{once}"));
        let twice = kdc::format::format(&reparsed, &once);
        assert_eq!(once, twice, "formatting is not stable for:\n{text}");
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, usize),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..8usize).prop_map(|(a, b)| Edit::Delete(a, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), 1..40usize).prop_map(|(a, b)| Edit::Duplicate(a, b)),
    ]
}

fn char_boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut s = text.to_string();
    for e in edits {
        match *e {
            Edit::Delete(at, len) => {
                let a = char_boundary(&s, at);
                let b = char_boundary(&s, (a + len).min(s.len()));
                s.replace_range(a..b.max(a), "");
            }
            Edit::Insert(at, token) => {
                let a = char_boundary(&s, at);
                s.insert_str(a, TOKENS[token]);
            }
            Edit::Duplicate(at, len) => {
                let a = char_boundary(&s, at);
                let b = char_boundary(&s, (a + len).min(s.len()));
                let piece = s[a..b.max(a)].to_string();
                s.insert_str(b.max(a), &piece);
            }
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_recipes_never_panic(seed in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..6)) {
        let seeds = seeds();
        let text = apply(&seeds[seed.index(seeds.len())], &edits);
        exercise(&text);
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(0..TOKENS.len(), 0..60)) {
        let text: String = tokens.iter().map(|&t| TOKENS[t]).collect::<Vec<_>>().join(" ");
        exercise(&text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        exercise(&text);
    }
}

#[test]
fn every_seed_passes_through_every_stage() {
    for text in seeds() {
        exercise(text);
    }
}

//! Every example in docs/language.md checks as the manual says. A fragment is checked as part
//! of §1's recipe (its bindings replace §1's bindings of the same name, its `use`s and `fn`s
//! are added); an example followed by a ```text block is a whole recipe whose rendered
//! diagnostics must be exactly that block.

use kdc::syntax::ast::Item;
use kdc_tests::{root, with_root};

struct Block {
    lang: String,
    text: String,
    line: usize,
}

fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in doc.lines().enumerate() {
        if let Some(fence) = line.strip_prefix("```") {
            match current.take() {
                Some(b) => out.push(b),
                None => {
                    current = Some(Block {
                        lang: fence.trim().to_string(),
                        text: String::new(),
                        line: i + 1,
                    })
                }
            }
        } else if let Some(b) = current.as_mut() {
            b.text.push_str(line);
            b.text.push('\n');
        }
    }
    out
}

/// The names a fragment binds and imports at its top level.
fn names(text: &str) -> (Vec<String>, Vec<String>) {
    let mut sources = kdc::source::SourceMap::new();
    let file = sources.add("fragment.kd", text);
    let ast = kdc::syntax::parse(file, text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    let (mut bound, mut imported) = (Vec::new(), Vec::new());
    for item in &ast.items {
        match item {
            Item::Binding(b) => bound.push(b.name.name.clone()),
            Item::Use(u) => match &u.names {
                Some(n) => imported.extend(n.iter().map(|i| i.name.clone())),
                None => imported.push(u.path.last().unwrap().name.clone()),
            },
            _ => {}
        }
    }
    (bound, imported)
}

/// §1's recipe without the bindings and imports `fragment` makes, followed by `fragment`.
fn merged(base: &str, fragment: &str) -> String {
    let (bound, imported) = names(fragment);
    let mut sources = kdc::source::SourceMap::new();
    let file = sources.add("base.kd", base);
    let ast = kdc::syntax::parse(file, base).unwrap();
    let mut out = String::new();
    for item in &ast.items {
        match item {
            Item::Binding(b) if bound.contains(&b.name.name) => continue,
            Item::Use(u) => {
                let path: Vec<&str> = u.path.iter().map(|i| i.name.as_str()).collect();
                let names: Vec<&str> = match &u.names {
                    Some(n) => n.iter().map(|i| i.name.as_str()).collect(),
                    None => vec![path.last().unwrap()],
                };
                let module = if u.names.is_some() {
                    &path[..]
                } else {
                    &path[..path.len() - 1]
                };
                let kept: Vec<&str> = names
                    .into_iter()
                    .filter(|n| !imported.iter().any(|i| i == n))
                    .collect();
                if !kept.is_empty() {
                    out.push_str(&format!(
                        "use {}.{{{}}}\n",
                        module.join("."),
                        kept.join(", ")
                    ));
                }
                continue;
            }
            _ => {}
        }
        let span = item.span();
        out.push_str(&base[span.start as usize..span.end as usize]);
        out.push('\n');
    }
    out.push_str(fragment);
    out
}

fn check(text: &str) -> kdc::Compiled {
    with_root(|| kdc::compile("recipe.kd", text, &kdc::FsLoader))
}

#[test]
fn every_example_in_the_language_reference_checks() {
    let doc = std::fs::read_to_string(root().join("docs/language.md")).unwrap();
    let blocks = blocks(&doc);
    let kd: Vec<usize> = (0..blocks.len())
        .filter(|&i| blocks[i].lang == "kd")
        .collect();
    assert!(kd.len() >= 10, "only {} examples found", kd.len());
    let base = &blocks[kd[0]].text;
    let mut checked = 0;
    for &i in &kd {
        let block = &blocks[i];
        let expected_errors = blocks.get(i + 1).filter(|b| b.lang == "text");
        match expected_errors {
            Some(want) => {
                let compiled = check(&block.text);
                let rendered = kdc_tests::rendered(&compiled);
                // The manual shows the diagnostics, not the closing count.
                let got = rendered
                    .trim_end()
                    .rsplit_once("\n\nerror: ")
                    .map_or(rendered.as_str(), |(d, _)| d);
                assert_eq!(
                    got.trim_end(),
                    want.text.trim_end(),
                    "docs/language.md:{}: the diagnostics shown differ from kdc's",
                    block.line
                );
            }
            None => {
                let text = if i == kd[0] {
                    block.text.clone()
                } else {
                    merged(base, &block.text)
                };
                let compiled = check(&text);
                assert!(
                    compiled.recipe.is_some() && !compiled.diagnostics.has_errors(),
                    "docs/language.md:{}: the example does not check:\n{}\n{text}",
                    block.line,
                    kdc_tests::rendered(&compiled)
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, kd.len());
}

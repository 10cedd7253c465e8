//! `kdc fmt` on messy inputs (tests/cases/fmt/*.kd): the formatted text is a snapshot;
//! formatting it again changes nothing; the program and its comments are unchanged.

use kdc_tests::{ast_without_positions, comments, root};

fn format(text: &str) -> String {
    let mut sources = kdc::source::SourceMap::new();
    let file = sources.add("input.kd", text);
    let ast = kdc::syntax::parse(file, text).expect("fmt cases parse");
    kdc::format::format(&ast, text)
}

#[test]
fn formatting_is_stable_and_keeps_meaning_and_comments() {
    let base = root().join("tests/cases/fmt");
    insta::glob!(base.as_path(), "*.kd", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let once = format(&text);
        let twice = format(&once);
        assert_eq!(
            once,
            twice,
            "formatting {} twice changes it",
            path.display()
        );
        assert_eq!(
            ast_without_positions(&once),
            ast_without_positions(&text),
            "formatting changed the program"
        );
        assert_eq!(
            comments(&once),
            comments(&text),
            "formatting lost or reordered comments"
        );
        insta::assert_snapshot!(once);
    });
}

//! Wrong recipes (tests/cases/err/*.kd): each must fail to check with at least one coded
//! error that names file:line:col, and never panic. The rendered diagnostics are snapshots,
//! so a change in any message is a reviewed diff.

use kdc_tests::{compile_file, rendered, root};

#[test]
fn every_wrong_recipe_reports_coded_located_errors() {
    let base = root().join("tests/cases/err");
    let mut count = 0;
    insta::glob!(base.as_path(), "*.kd", |path| {
        count += 1;
        let (compiled, _) = compile_file(path);
        let text = rendered(&compiled);
        assert!(
            compiled.diagnostics.has_errors(),
            "{} checks without error",
            path.display()
        );
        assert!(compiled.recipe.is_none());
        let name = kdc_tests::relative(path);
        assert!(
            text.lines().any(|l| l.starts_with("error[KD")),
            "no coded error for {name}:\n{text}"
        );
        assert!(
            text.contains(&format!("{name}:")),
            "no location in {name}:\n{text}"
        );
        insta::assert_snapshot!(text);
    });
    assert!(count >= 40, "only {count} wrong recipes");
}

#[test]
fn every_code_has_an_explanation_with_an_example() {
    for code in kdc::codes::Code::ALL {
        let text = code.explanation();
        assert!(text.contains("Example"), "{code} has no example");
        assert!(
            text.contains("Fix") || *code == kdc::codes::Code::UnusedBinding,
            "{code} says nothing about a fix"
        );
        assert_eq!(kdc::codes::Code::parse(&code.as_str()), Some(*code));
    }
}

#[test]
fn every_warning_case_checks_with_coded_located_warnings() {
    let base = root().join("tests/cases/warn");
    let mut count = 0;
    insta::glob!(base.as_path(), "*.kd", |path| {
        count += 1;
        let (compiled, _) = compile_file(path);
        let text = rendered(&compiled);
        assert!(
            !compiled.diagnostics.has_errors(),
            "{} has errors:\n{text}",
            path.display()
        );
        let name = kdc_tests::relative(path);
        let warnings = text.lines().filter(|l| l.starts_with("warning[KD")).count();
        assert_eq!(warnings, 1, "{name} should warn exactly once:\n{text}");
        insta::assert_snapshot!(text);
    });
    assert!(count >= 2);
}

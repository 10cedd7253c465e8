//! Every recipe of the library through every stage: parse (AST snapshot), check (no
//! diagnostics at all, IR snapshot), and format (the recipe is already canonical).

use kdc_tests::{ast_without_positions, compile_file, rendered, root};

#[test]
fn every_recipe_checks_and_explains() {
    let base = root().join("recipes");
    insta::glob!(base.as_path(), "**/*.kd", |path| {
        let (compiled, text) = compile_file(path);
        assert!(
            compiled.diagnostics.is_empty(),
            "{} has diagnostics:\n{}",
            path.display(),
            rendered(&compiled)
        );
        let program = compiled.program.as_ref().unwrap();
        if compiled.is_library() {
            // A library of functions (recipes/research/methods.kd): its syntax tree and
            // canonical layout; its functions are checked where recipes call them.
            assert!(compiled.recipe.is_none());
            insta::assert_snapshot!(
                "ast",
                kdc::explain::ast(&program.root().ast, &compiled.sources)
            );
            let formatted = kdc::format::format(&program.root().ast, &text);
            assert_eq!(
                formatted,
                text,
                "{} is not in canonical format",
                path.display()
            );
            return;
        }
        let recipe = compiled
            .recipe
            .as_ref()
            .expect("a recipe without errors compiles");
        assert!(!recipe.stages.is_empty());
        for stage in &recipe.stages {
            assert!(!stage.terms.is_empty());
            for term in &stage.terms {
                assert!(
                    stage.graph.nodes[term.node].shape.is_scalar(),
                    "term {} is not a scalar",
                    term.label
                );
            }
        }
        insta::assert_snapshot!("ir", kdc::explain::ir(recipe));
        insta::assert_snapshot!(
            "ast",
            kdc::explain::ast(&program.root().ast, &compiled.sources)
        );
        let formatted = kdc::format::format(&program.root().ast, &text);
        assert_eq!(
            formatted,
            text,
            "{} is not in canonical format (run `kdc fmt`)",
            path.display()
        );
        assert_eq!(
            ast_without_positions(&formatted),
            ast_without_positions(&text)
        );
    });
}

#[test]
fn the_standard_library_is_canonical_and_documented() {
    for (name, text) in kdc::check::STD_MODULES {
        let mut sources = kdc::source::SourceMap::new();
        let file = sources.add(format!("std/{name}.kd"), *text);
        let ast = kdc::syntax::parse(file, text).unwrap_or_else(|e| panic!("std/{name}.kd: {e:?}"));
        assert_eq!(
            &kdc::format::format(&ast, text),
            text,
            "std/{name}.kd is not in canonical format"
        );
        for item in &ast.items {
            if let kdc::syntax::ast::Item::Fn(f) = item {
                let public = !f.name.name.starts_with('_');
                let helper = f.name.name.starts_with("infonce_grad_contrast");
                assert!(
                    !public || helper || !f.doc.is_empty(),
                    "std/{name}.kd: fn {} has no `##` doc comment with its formula",
                    f.name.name
                );
            }
        }
    }
}

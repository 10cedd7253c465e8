//! The parser generated from `grammar/kdc.pest`, the only definition of kdc's syntax.
//!
//! The compiler builds its syntax tree from the pairs this parser returns; nothing else in the
//! project decides what is a syntactically valid recipe.

use pest_derive::Parser;

/// The recipe parser. Parse a whole file with `KdParser::parse(Rule::file, source)`.
#[derive(Parser)]
#[grammar = "../kdc.pest"]
pub struct KdParser;

pub use pest::Parser;

/// A plain-words name for a grammar rule, for syntax error messages ("expected an expression").
/// The match is exhaustive so that a new rule cannot be added without a name for users.
pub fn rule_words(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::WHITESPACE => "white space",
        Rule::COMMENT => "a comment",
        Rule::file => "a recipe",
        Rule::use_decl => "`use`",
        Rule::use_group => "`{` and a list of names",
        Rule::path => "a module path",
        Rule::fn_def => "`fn`",
        Rule::params => "parameters",
        Rule::param => "a parameter `name: Type`",
        Rule::type_name => "a type name",
        Rule::block => "`{`",
        Rule::let_stmt => "`let`",
        Rule::stage_def => "`stage`",
        Rule::binding => "a binding `name = value`",
        Rule::expr => "an expression",
        Rule::pipe => "`|`",
        Rule::add => "`+`",
        Rule::sub => "`-`",
        Rule::mul => "`*`",
        Rule::div => "`/`",
        Rule::matmul => "`@`",
        Rule::neg => "`-`",
        Rule::postfix_expr => "an expression",
        Rule::field => "`.`",
        Rule::call => "`(`",
        Rule::index => "`[`",
        Rule::index_item => "an index",
        Rule::index_range => "a range `a:b`",
        Rule::args => "arguments",
        Rule::named_arg => "a named argument `name: value`",
        Rule::paren => "`(`",
        Rule::list => "`[`",
        Rule::number => "a number",
        Rule::string => "a string",
        Rule::string_inner => "string characters",
        Rule::boolean => "`true` or `false`",
        Rule::ident => "a name",
        Rule::keyword => "a keyword",
        Rule::item => "`use`, `fn`, `stage` or a binding `name = value`",
        Rule::infix_op => "an operator",
        Rule::prefix_op => "`-`",
        Rule::postfix => "`.`, `(` or `[`",
        Rule::arg => "an argument",
        Rule::primary => "a value",
        Rule::ident_chars | Rule::ident_char => "a name",
        Rule::kw_use => "`use`",
        Rule::kw_fn => "`fn`",
        Rule::kw_let => "`let`",
        Rule::kw_stage => "`stage`",
        Rule::test_def => "`test`",
        Rule::kw_test => "`test`",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_small_recipe() {
        let source = "use std.clip_kd.{crd, fd}\n# a comment\nstudent = clip(preset: \"ViT-T-16\")\nloss = clip_loss(student) + 2000 * fd(student, teacher)\n";
        let pairs = KdParser::parse(Rule::file, source).expect("parses");
        let comments = pairs
            .flatten()
            .filter(|p| p.as_rule() == Rule::COMMENT)
            .count();
        assert_eq!(comments, 1);
    }

    #[test]
    fn rejects_a_keyword_as_a_name() {
        assert!(KdParser::parse(Rule::file, "fn = 3").is_err());
    }
}

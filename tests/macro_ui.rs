//! `#[cached_tier]`'s compile-time rules: what compiles, and the errors (with
//! their spans) for what does not. Regenerate the goldens with
//! `TRYBUILD=overwrite cargo test --test macro_ui` and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}

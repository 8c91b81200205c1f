//! `Pattern::matches` against a literal port of Redis's `stringmatchlen`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| tiered_fuzz::pattern(bytes));

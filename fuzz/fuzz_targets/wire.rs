//! Any bytes read from Redis as an entry: a value or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| tiered::fuzzing::wire(bytes));

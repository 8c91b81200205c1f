//! Any bytes received on the bus: a message or nothing, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| tiered::fuzzing::bus(bytes));

//! The checked-in corpus and the seeds, replayed through each target as a plain
//! test (no instrumentation needed), and the reference matcher checked on cases
//! whose answers come from Redis's own behaviour.
//!
//! `TIERED_WRITE_SEEDS=1 cargo test` writes the seeds into `corpus/` (once, when
//! the wire format changes).

use std::path::Path;

fn replay(target: &str, seeds: Vec<Vec<u8>>, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    if std::env::var_os("TIERED_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
        }
    }
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        run(&std::fs::read(entry.unwrap().path()).unwrap());
        files += 1;
    }
    assert!(files >= seeds.len(), "{target}: {files} corpus files");
    for seed in seeds {
        run(&seed);
    }
}

#[test]
fn wire_corpus() {
    replay("wire", tiered::fuzzing::wire_seeds(), tiered::fuzzing::wire);
}

#[test]
fn bus_corpus() {
    replay("bus", tiered::fuzzing::bus_seeds(), tiered::fuzzing::bus);
}

#[test]
fn pattern_corpus() {
    let seeds = [
        "user:*\0user:1",
        "[a-\0b",
        "\\\0x",
        "a[^b]c\0axc",
        "*?*\0\u{e9}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    replay("pattern", seeds, tiered_fuzz::pattern);
}

/// Answers read from redis-server 7.0 (`redis-cli --scan --pattern GLOB` with
/// only KEY in the database).
#[test]
fn the_reference_agrees_with_redis() {
    use tiered_fuzz::redis_stringmatch as m;
    let cases: &[(&str, &str, bool)] = &[
        ("a*", "abc", true),
        ("a?c", "abc", true),
        ("a[bc]d", "acd", true),
        ("a[^b]d", "abd", false),
        ("a[c-a]d", "abd", true),
        ("a\\*", "a*", true),
        ("a\\*", "ab", false),
        ("a[b", "ab", true),
        ("a[", "a[", false),
        ("a\\", "a\\", true),
    ];
    for &(glob, key, want) in cases {
        assert_eq!(m(glob.as_bytes(), key.as_bytes()), want, "{glob:?} {key:?}");
    }
}

//! Instructions per L1 hit: `TieredCache::get` against a bare moka `get`, counted
//! by callgrind, which is repeatable on a noisy machine where timings are not.
//!
//! Run: `scripts/callgrind-l1-hit` (builds this harness, runs each variant under
//! `valgrind --tool=callgrind` with 0 and with N hits, and prints the instructions
//! per hit: the difference divided by N). Directly:
//! `target/release/deps/overhead-* <bare|tiered|tiered-tagged|tiered-adaptive|tiered-prometheus> <hits>`.
//! The fixture is `l1_hit`'s: 100k `String` keys and `Arc<User>` values, read in a
//! seeded random order through `now_or_never` (no executor).

#[path = "support/users.rs"]
mod users;

use std::hint::black_box;

use futures_util::FutureExt;

const LOOKUPS: usize = 1 << 18;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list" || a == "--bench") {
        return; // `cargo bench` runs every harness: this one is run by the script.
    }
    let variant = args.get(1).map_or("tiered", String::as_str);
    let hits: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
    // The same keys for every run (0 hits included), so that building them is
    // setup, not counted per hit.
    let keys = users::lookups(LOOKUPS);
    let keys = keys.iter().cycle().take(hits);
    match variant {
        "bare" => {
            let bare = users::bare();
            for key in keys.clone() {
                black_box(bare.get(key).now_or_never().unwrap().expect("present"));
            }
        }
        "tiered" => {
            let tiered = users::tiered(|b| b);
            for key in keys.clone() {
                let hit = tiered.get(key).now_or_never().unwrap();
                black_box(hit.expect("no error").expect("present"));
            }
        }
        "tiered-tagged" => {
            // Every entry carries two tags, and a tag nobody carries was
            // invalidated once: each entry's first hit checks its tags (in
            // setup), the hits counted take the fast path (nothing invalidated
            // since).
            let tiered = users::tiered(|b| b);
            for id in 0..users::ENTRIES {
                let team = format!("team:{}", id % 100);
                let tags = ["users", team.as_str()];
                let insert = tiered.insert_with_tags(users::key(id), users::user(id), &tags);
                insert.now_or_never().unwrap();
            }
            tiered.invalidate_tag("nobody").now_or_never().unwrap();
            // Setup, not counted: each entry's first hit after the invalidation
            // (the full check against the tags' stamps).
            for id in 0..users::ENTRIES {
                black_box(tiered.get(&users::key(id)).now_or_never().unwrap().unwrap());
            }
            for key in keys.clone() {
                let hit = tiered.get(key).now_or_never().unwrap();
                black_box(hit.expect("no error").expect("present"));
            }
        }
        "tiered-adaptive" => {
            let tiered = users::tiered(|b| b.l1_eviction(tiered::L1Eviction::Adaptive));
            for key in keys.clone() {
                let hit = tiered.get(key).now_or_never().unwrap();
                black_box(hit.expect("no error").expect("present"));
            }
        }
        #[cfg(feature = "metrics")]
        "tiered-prometheus" => {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let observer =
                metrics::with_local_recorder(&recorder, || tiered::MetricsObserver::new("bench"));
            let tiered = users::tiered(|b| b.observer(observer));
            for key in keys.clone() {
                let hit = tiered.get(key).now_or_never().unwrap();
                black_box(hit.expect("no error").expect("present"));
            }
        }
        other => {
            panic!(
                "unknown variant {other} (bare, tiered, tiered-tagged, tiered-adaptive, \
                 tiered-prometheus)"
            )
        }
    }
}

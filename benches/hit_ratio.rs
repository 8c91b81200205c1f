//! L1 hit ratio against the optimum, for each eviction policy the builder offers.
//!
//! Seeded traces over 1M keys: Zipf with s = 0.8, 0.99 and 1.2; a drifting hot set
//! (Zipf 0.99 whose ranking is drawn anew every 200k requests); and Zipf 0.99 mixed
//! with one-touch scans (blocks of 80k Zipf requests, then 20k keys never asked for
//! again). For L1 capacities of 0.1%, 1% and 10% of the keys, each trace is replayed
//! through `TieredCache::get_with` with `L1Eviction::TinyLfu`, `L1Eviction::Lru` and
//! `L1Eviction::Adaptive` (which also reports how often it switched),
//! next to Belady's optimum for the same trace and capacity (offline: on a miss,
//! keep the keys asked for again soonest, and bypass a key asked for later than
//! all of them). "L1+L2" is the ratio with an L2 that keeps every key (Redis with
//! a TTL longer than the trace): only first requests miss.
//!
//! Run: `cargo bench --bench hit_ratio` (2M requests per trace), or
//! `-- --requests 5000000`, or one trace with `-- --trace drifting-0.99`. It writes `target/hit_ratio.csv`;
//! `scripts/plot-hit-ratio` turns that into `docs/hit-ratio.png`.

#[path = "support/zipf.rs"]
mod zipf;

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt::Write as _;

use tiered::{BoxError, L1Eviction, TieredCache};
use zipf::Zipf;

const KEYS: usize = 1_000_000;
const SEED: u64 = 20_261_122;

fn shuffled(rng: &mut fastrand::Rng) -> Vec<u64> {
    let mut keys: Vec<u64> = (0..KEYS as u64).collect();
    rng.shuffle(&mut keys);
    keys
}

/// The named traces.
fn traces(requests: usize) -> Vec<(&'static str, Vec<u64>)> {
    let mut out = Vec::new();
    let mut rng = fastrand::Rng::with_seed(SEED);
    for (name, s) in [("zipf-0.8", 0.8), ("zipf-0.99", 0.99), ("zipf-1.2", 1.2)] {
        let zipf = Zipf::new(KEYS, s);
        let ranking = shuffled(&mut rng);
        let trace = (0..requests)
            .map(|_| ranking[zipf.sample(&mut rng)])
            .collect();
        out.push((name, trace));
    }
    let zipf = Zipf::new(KEYS, 0.99);
    let mut ranking = shuffled(&mut rng);
    let drifting = (0..requests)
        .map(|i| {
            if i > 0 && i % 200_000 == 0 {
                ranking = shuffled(&mut rng);
            }
            ranking[zipf.sample(&mut rng)]
        })
        .collect();
    out.push(("drifting-0.99", drifting));
    let ranking = shuffled(&mut rng);
    let mut scanned = KEYS as u64;
    let with_scans = (0..requests)
        .map(|i| {
            if i % 100_000 < 80_000 {
                ranking[zipf.sample(&mut rng)]
            } else {
                scanned += 1;
                scanned
            }
        })
        .collect();
    out.push(("zipf-0.99+scans", with_scans));
    out
}

/// Belady's optimum (with bypass): hits of a cache of `capacity` keys.
fn belady(trace: &[u64], capacity: usize) -> usize {
    const NEVER: usize = usize::MAX;
    let mut next = vec![NEVER; trace.len()];
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, key) in trace.iter().enumerate().rev() {
        next[i] = last.insert(*key, i).unwrap_or(NEVER);
    }
    let mut cached: HashMap<u64, usize> = HashMap::with_capacity(capacity);
    let mut furthest: BinaryHeap<(usize, u64)> = BinaryHeap::new();
    let mut hits = 0;
    for (i, &key) in trace.iter().enumerate() {
        let next_use = next[i];
        if let Some(at) = cached.get_mut(&key) {
            hits += 1;
            *at = next_use;
            furthest.push((next_use, key));
            continue;
        }
        if next_use == NEVER {
            continue;
        }
        if cached.len() < capacity {
            cached.insert(key, next_use);
            furthest.push((next_use, key));
            continue;
        }
        // Drop heap entries that are out of date, then compare with the furthest.
        while let Some(&(at, k)) = furthest.peek() {
            if cached.get(&k) == Some(&at) {
                break;
            }
            furthest.pop();
        }
        if let Some(&(at, victim)) = furthest.peek() {
            if at > next_use {
                furthest.pop();
                cached.remove(&victim);
                cached.insert(key, next_use);
                furthest.push((next_use, key));
            }
        }
    }
    hits
}

/// The hit ratio of `trace` replayed through a bare moka cache (TinyLFU) with
/// `try_get_with`: what `tiered`'s L1 should match.
async fn replay_moka(trace: &[u64], capacity: u64) -> Result<f64, BoxError> {
    let cache: moka::future::Cache<u64, u64> = moka::future::Cache::new(capacity);
    let mut misses = 0u64;
    for &key in trace {
        let load = async {
            misses += 1;
            Ok::<_, BoxError>(key)
        };
        cache
            .try_get_with(key, load)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(1.0 - misses as f64 / trace.len() as f64)
}

/// The L1 hit ratio of `trace` replayed through a cache of `capacity` entries.
async fn replay(trace: &[u64], capacity: u64, policy: L1Eviction) -> Result<(f64, u64), BoxError> {
    let cache = TieredCache::<u64, u64>::builder("hit-ratio")
        .l1_max_entries(capacity)
        .l1_eviction(policy)
        .l1_ttl(tiered::Ttl::VERY_LONG)
        .build()?;
    for &key in trace {
        let load = std::future::ready(Ok::<_, BoxError>(Some(key)));
        cache.get_with(&key, load).await?;
    }
    let stats = cache.stats();
    Ok((stats.l1.hit_ratio(), stats.l1_policy_switches))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let requests: usize = args
        .iter()
        .position(|a| a == "--requests")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(2_000_000), |s| s.parse())?;
    println!("{requests} requests per trace over {KEYS} keys (seed {SEED})\n");
    println!(
        "{:<17} {:>9} {:>8} {:>8} {:>12} {:>10} {:>8} {:>8}  {:>12}",
        "trace",
        "capacity",
        "TinyLFU",
        "LRU",
        "adaptive",
        "bare moka",
        "optimum",
        "L1+L2",
        "adaptive/best"
    );
    let mut csv = String::from("trace,capacity,policy,hit_ratio\n");
    let only = args
        .iter()
        .position(|a| a == "--trace")
        .and_then(|i| args.get(i + 1));
    for (name, trace) in traces(requests) {
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let distinct = trace.iter().collect::<HashSet<_>>().len();
        let combined = 1.0 - distinct as f64 / trace.len() as f64;
        for fraction in [0.001, 0.01, 0.1] {
            let capacity = (KEYS as f64 * fraction) as usize;
            let (tiny_lfu, _) = replay(&trace, capacity as u64, L1Eviction::TinyLfu).await?;
            let (lru, _) = replay(&trace, capacity as u64, L1Eviction::Lru).await?;
            let (adaptive, switches) =
                replay(&trace, capacity as u64, L1Eviction::Adaptive).await?;
            let moka = replay_moka(&trace, capacity as u64).await?;
            let optimum = belady(&trace, capacity) as f64 / trace.len() as f64;
            println!(
                "{name:<17} {:>8.1}% {tiny_lfu:>8.3} {lru:>8.3} {adaptive:>7.3} ({switches}) {moka:>10.3} {optimum:>8.3} {combined:>8.3}  {:>12.2}",
                fraction * 100.0,
                adaptive / tiny_lfu.max(lru)
            );
            for (policy, ratio) in [
                ("TinyLFU", tiny_lfu),
                ("LRU", lru),
                ("adaptive", adaptive),
                ("bare moka", moka),
                ("optimum", optimum),
                ("L1+L2", combined),
            ] {
                writeln!(csv, "{name},{fraction},{policy},{ratio:.4}")?;
            }
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hit_ratio.csv");
    std::fs::write(&path, csv)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

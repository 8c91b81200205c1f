//! A seeded simulation of a fleet: 2 to 4 instances of one cache over one
//! `MemoryStore` and one `MemoryBus`, each through handles of its own, driven by a
//! seeded schedule of reads (`get`, `get_many`, `get_or_load`, `get_many_with`,
//! in tasks of their own, so that loads are in flight across the writes: the
//! loader reads the database, then takes up to 5 ms), writes, cancelled writes
//! (invalidations, inserts and patterns or tags whose callers give up; on odd
//! seeds every entry is tagged with its key's group, and groups are invalidated
//! by tag instead of by pattern) and faults (store calls failing, hanging or
//! slowed past the L2 timeout, an instance cut off from the store or the bus,
//! publishes failing, hanging or lost, deliveries held, loads failing or
//! panicking), on a single-threaded runtime with paused time. A read whose load
//! failed may answer an error; any value it answers is checked.
//!
//! The oracle checks the fleet rules of docs/GUIDE.md:
//!
//! 1. An instance reads its own writes: once its `invalidate`, `invalidate_many`,
//!    `insert_many`, pattern, tag,
//!    `invalidate_all` or `insert` returned, its reads that begin after return
//!    that version or a newer one (whatever faults are on, whatever loads were
//!    in flight).
//! 2. Once faults stop and the fleet is quiet (owed work replayed, kept messages
//!    sent, held deliveries released), every instance reads the database's
//!    version of every key, from L1 as it is (unless a message was lost: then
//!    L1 may keep an old value until its TTL), and after the L1 TTL in any case:
//!    no owed deletion was dropped, and Redis holds nothing an invalidation removed.
//! 3. No panic, and no hang (a watchdog on simulated time).
//!
//! `SIM_SEEDS=n` runs n seeds (default 2,000) from `SIM_FROM` (default 0);
//! `SIM_SEED=s` replays one seed. A failing seed is printed with the schedule that
//! led to it. A long soak: `SIM_SEEDS=1000000 cargo test --release --features
//! testing --test simulation`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use tiered::{
    loader_with_context_fn, BoxError, EntryOptions, LoadContext, Loaded, ManualClock, MemoryBus,
    MemoryStore, StoreOp, TieredCache,
};

const KEYS: [&str; 6] = ["a:0", "a:1", "a:2", "b:0", "b:1", "b:2"];
const STEPS: usize = 80;
const L1_TTL: Duration = Duration::from_secs(60);
const L2_TIMEOUT: Duration = Duration::from_millis(50);

/// Over all seeds of a run: loads, and loads the fence refused (a change of
/// their key, or of too many keys of their shard, during the load).
static LOADS: AtomicU64 = AtomicU64::new(0);
static SUPERSEDED: AtomicU64 = AtomicU64::new(0);

type Db = Arc<Mutex<HashMap<String, u64>>>;

/// Load faults on one instance: how many of its next loads fail, and panic.
#[derive(Default)]
struct LoadFaults {
    fail: u32,
    panic: u32,
    /// How many fired: a read may answer an error only after one did.
    fired: u32,
}

/// Per instance, key → the version it must at least read (its own writes).
type Floors = Arc<Mutex<Vec<HashMap<String, u64>>>>;

/// An instance's query, as its configured loader and its cache-aside calls
/// (`get_or_load`, `get_many_with`) make it.
type Load = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Option<u64>, BoxError>> + Send + Sync>;

struct Instance {
    cache: TieredCache<String, u64>,
    store: MemoryStore,
    bus: MemoryBus,
    loads: Arc<Mutex<LoadFaults>>,
    load: Load,
}

struct Fleet {
    db: Db,
    clock: ManualClock,
    instances: Vec<Instance>,
    floors: Floors,
    /// Reads in flight.
    reads: Vec<tokio::task::JoinHandle<()>>,
    /// A message was lost: L1 may keep an old value until its TTL.
    lossy: bool,
    /// Every entry is tagged with its key's group (`a` or `b`), and groups are
    /// invalidated by tag instead of by pattern (odd seeds); reads go through
    /// the configured loader, whose entries are the tagged ones.
    tagged: bool,
    log: Arc<Mutex<Vec<String>>>,
}

impl Fleet {
    fn new(rng: &mut fastrand::Rng, tagged: bool) -> Fleet {
        let (db, clock) = (Db::default(), ManualClock::new());
        // The loaders' durations come from the seed too, so that a seed replays.
        let durations = Arc::new(Mutex::new(fastrand::Rng::with_seed(rng.u64(..))));
        let (store, bus) = (MemoryStore::new(), MemoryBus::new());
        let instances = (0..rng.usize(2..=4))
            .map(|_| {
                let (store, bus) = (store.connect(), bus.connect());
                let (rows, durations) = (Arc::clone(&db), Arc::clone(&durations));
                let loads = Arc::new(Mutex::new(LoadFaults::default()));
                let faults = Arc::clone(&loads);
                let load: Load = Arc::new(move |key: String| {
                    // The query reads the row, then takes a while.
                    let version = rows.lock().unwrap().get(&key).copied().unwrap_or(0);
                    let takes = Duration::from_micros(durations.lock().unwrap().u64(0..5_000));
                    let fate = {
                        let mut faults = faults.lock().unwrap();
                        if faults.panic > 0 {
                            faults.panic -= 1;
                            faults.fired += 1;
                            Some(true)
                        } else if faults.fail > 0 {
                            faults.fail -= 1;
                            faults.fired += 1;
                            Some(false)
                        } else {
                            None
                        }
                    };
                    async move {
                        tokio::time::sleep(takes).await;
                        match fate {
                            Some(true) => panic!("the simulated loader panics"),
                            Some(false) => {
                                Err::<Option<u64>, BoxError>("the database is down".into())
                            }
                            None => Ok(Some(version)),
                        }
                    }
                    .boxed()
                });
                let cache = TieredCache::<String, u64>::builder("sim")
                    .l2(store.clone())
                    .bus(bus.clone())
                    .clock(clock.clone())
                    .jitter(0.0)
                    .l1_ttl(L1_TTL)
                    .l2_ttl(Duration::from_secs(3600))
                    .l2_timeout(L2_TIMEOUT)
                    .loader({
                        let load = Arc::clone(&load);
                        loader_with_context_fn(move |key: String, _: LoadContext<u64>| {
                            let tag = group(&key).filter(|_| tagged);
                            load(key).map(move |loaded| {
                                let loaded = Loaded::from(loaded?);
                                Ok::<_, BoxError>(match tag {
                                    Some(tag) => loaded.with_tags([tag]),
                                    None => loaded,
                                })
                            })
                        })
                    })
                    .build()
                    .expect("build");
                Instance {
                    cache,
                    store,
                    bus,
                    loads,
                    load,
                }
            })
            .collect::<Vec<_>>();
        Fleet {
            db,
            clock,
            floors: Arc::new(Mutex::new(vec![HashMap::new(); instances.len()])),
            instances,
            reads: Vec::new(),
            lossy: false,
            tagged,
            log: Arc::default(),
        }
    }

    /// Bumps the versions of `keys` in the database; returns them.
    fn bump(&self, keys: &[&str]) -> Vec<(String, u64)> {
        let mut rows = self.db.lock().unwrap();
        keys.iter()
            .map(|k| {
                let row = rows.entry((*k).to_owned()).or_insert(0);
                *row += 1;
                ((*k).to_owned(), *row)
            })
            .collect()
    }

    fn version(&self, key: &str) -> u64 {
        self.db.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    async fn step(&mut self, rng: &mut fastrand::Rng) {
        let i = rng.usize(..self.instances.len());
        let key = KEYS[rng.usize(..KEYS.len())];
        match rng.u32(..100) {
            0..=29 => {
                let after = Duration::from_micros(rng.u64(0..3_000));
                self.read(i, vec![key.to_owned()], after);
            }
            30..=39 => {
                let keys: Vec<String> = (0..rng.usize(2..=4))
                    .map(|_| KEYS[rng.usize(..KEYS.len())].to_owned())
                    .collect();
                let after = Duration::from_micros(rng.u64(0..3_000));
                self.read(i, keys, after);
            }
            40..=49 => {
                let written = self.bump(&[key]);
                self.note(format!("{i}: invalidate {key} (v{})", written[0].1));
                self.instances[i].cache.invalidate(&key.to_owned()).await;
                self.raise(i, written);
            }
            50..=54 => {
                let many: Vec<&str> = (0..rng.usize(2..=3))
                    .map(|_| KEYS[rng.usize(..KEYS.len())])
                    .collect();
                let mut unique = many.clone();
                unique.sort_unstable();
                unique.dedup();
                let written = self.bump(&unique);
                self.note(format!("{i}: invalidate_many {many:?}"));
                let keys: Vec<String> = many.iter().map(|k| (*k).to_owned()).collect();
                self.instances[i].cache.invalidate_many(&keys).await;
                self.raise(i, written);
            }
            55..=59 => {
                let written = self.bump(&[key]);
                let version = written[0].1;
                self.note(format!("{i}: insert {key} = {version}"));
                self.insert(i, key, version).await;
                self.raise(i, written);
            }
            60..=62 => {
                let mut keys: Vec<&str> = (0..rng.usize(2..=3))
                    .map(|_| KEYS[rng.usize(..KEYS.len())])
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                let written = self.bump(&keys);
                self.note(format!("{i}: insert_many {written:?}"));
                if self.tagged {
                    for (key, version) in &written {
                        self.insert(i, key, *version).await;
                    }
                } else {
                    let entries = written.clone();
                    self.instances[i].cache.insert_many(entries).await;
                }
                self.raise(i, written);
            }
            63..=67 => {
                let prefix = &key[..2];
                let written = self.bump(&matching(prefix));
                let cache = &self.instances[i].cache;
                if self.tagged {
                    self.note(format!("{i}: invalidate_tag {}", &key[..1]));
                    cache.invalidate_tag(&key[..1]).await;
                } else {
                    self.note(format!("{i}: invalidate_pattern {prefix}*"));
                    cache.invalidate_pattern(&format!("{prefix}*")).await;
                }
                self.raise(i, written);
            }
            68..=70 => {
                let written = self.bump(&KEYS);
                self.note(format!("{i}: invalidate_all"));
                self.instances[i].cache.invalidate_all().await;
                self.raise(i, written);
            }
            71..=76 => {
                // A caller that gives up: no promise to it, but nothing is lost.
                let after = Duration::from_millis(rng.u64(0..3));
                let cache = &self.instances[i].cache;
                match rng.u32(..5) {
                    4 => {
                        self.bump(&KEYS);
                        self.note(format!("{i}: invalidate_all, cancelled after {after:?}"));
                        let _ = tokio::time::timeout(after, cache.invalidate_all()).await;
                    }
                    0 => {
                        self.bump(&[key]);
                        self.note(format!("{i}: invalidate {key}, cancelled after {after:?}"));
                        let _ =
                            tokio::time::timeout(after, cache.invalidate(&key.to_owned())).await;
                    }
                    3 => {
                        let other = KEYS[rng.usize(..KEYS.len())];
                        let many = [key.to_owned(), other.to_owned()];
                        let mut unique = vec![key, other];
                        unique.dedup();
                        self.bump(&unique);
                        self.note(format!(
                            "{i}: invalidate_many {many:?}, cancelled after {after:?}"
                        ));
                        let _ = tokio::time::timeout(after, cache.invalidate_many(&many)).await;
                    }
                    1 => {
                        let version = self.bump(&[key])[0].1;
                        self.note(format!(
                            "{i}: insert {key} = {version}, cancelled after {after:?}"
                        ));
                        let tags = group(key).filter(|_| self.tagged);
                        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                        let insert = cache.insert_with_tags(key.to_owned(), version, &tags);
                        let _ = tokio::time::timeout(after, insert).await;
                    }
                    _ if self.tagged => {
                        self.bump(&matching(&key[..2]));
                        let tag = &key[..1];
                        self.note(format!(
                            "{i}: invalidate_tag {tag}, cancelled after {after:?}"
                        ));
                        let _ = tokio::time::timeout(after, cache.invalidate_tag(tag)).await;
                    }
                    _ => {
                        let prefix = &key[..2];
                        self.bump(&matching(prefix));
                        self.note(format!(
                            "{i}: invalidate_pattern {prefix}*, cancelled after {after:?}"
                        ));
                        let glob = format!("{prefix}*");
                        let _ = tokio::time::timeout(after, cache.invalidate_pattern(&glob)).await;
                    }
                }
            }
            77..=99 => self.fault(i, rng),
            _ => unreachable!(),
        }
        let pause = Duration::from_millis(rng.u64(0..20));
        tokio::time::sleep(pause).await;
    }

    /// A read of `keys` on instance `i` (`get` for one key, `get_many` for
    /// more) in a task of its own that starts `after`: every value it answers
    /// is at least the version of the instance's own last write of its key, and
    /// an error (a failed load: no fail-safe here) only follows a load fault.
    fn read(&mut self, i: usize, keys: Vec<String>, after: Duration) {
        let (cache, floors, log, loads, load) = (
            self.instances[i].cache.clone(),
            Arc::clone(&self.floors),
            Arc::clone(&self.log),
            Arc::clone(&self.instances[i].loads),
            Arc::clone(&self.instances[i].load),
        );
        // Half the reads are cache-aside calls with the same query (picked by
        // the start time's parity, so that the schedule draws no more numbers).
        let aside = after.as_micros() % 2 == 1 && !self.tagged;
        // A quarter of the plain single-key reads skip L1, a quarter skip L2's
        // answer (a forced reload that still fills L2).
        let options = match (after.as_micros() / 2) % 4 {
            0 => Some(EntryOptions::new().skip_l1_reads()),
            1 => Some(EntryOptions::new().skip_l2_reads()),
            _ => None,
        };
        self.reads.push(tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let floor: HashMap<String, u64> = floors.lock().unwrap()[i].clone();
            let got = match (&keys[..], aside) {
                ([key], false) => match &options {
                    Some(options) => cache.with_options(options).get(key).await,
                    None => cache.get(key).await,
                }
                .map(|v| v.map(|v| (key.clone(), v)).into_iter().collect()),
                ([key], true) => cache
                    .get_or_load(key, move |key| load(key))
                    .await
                    .map(|v| v.map(|v| (key.clone(), v)).into_iter().collect()),
                (_, false) => cache.get_many(&keys).await,
                (_, true) => {
                    let batch = |missing: Vec<String>| {
                        let loads = missing.into_iter().map(|key| {
                            let load = load(key.clone());
                            async move { Ok::<_, BoxError>(load.await?.map(|v| (key, v))) }
                        });
                        futures_util::future::try_join_all(loads)
                            .map(|rows| rows.map(|rows| rows.into_iter().flatten().collect()))
                    };
                    cache.get_many_with(&keys, batch).await
                }
            };
            let call = match (keys.len(), aside) {
                (1, false) if options.is_some() => "get (with options)",
                (1, false) => "get",
                (1, true) => "get_or_load",
                (_, false) => "get_many",
                (_, true) => "get_many_with",
            };
            log.lock()
                .unwrap()
                .push(format!("{i}: {call} {keys:?} -> {got:?}"));
            let Ok(got) = got else {
                assert!(
                    loads.lock().unwrap().fired > 0,
                    "instance {i}: a read failed with no load fault injected"
                );
                return;
            };
            for key in &keys {
                let got = *got.get(key).expect("every row exists");
                let floor = floor.get(key).copied().unwrap_or(0);
                assert!(
                    got >= floor,
                    "instance {i} read {got} of {key} after writing {floor}"
                );
            }
        }));
    }

    /// `insert` on instance `i`, tagged with the key's group in tagged mode.
    async fn insert(&self, i: usize, key: &str, version: u64) -> tiered::Written {
        let cache = &self.instances[i].cache;
        match group(key).filter(|_| self.tagged) {
            Some(tag) => {
                cache
                    .insert_with_tags(key.to_owned(), version, &[&tag])
                    .await
            }
            // A third of the untagged inserts skip L2 (its old entry is
            // deleted instead).
            None if version.is_multiple_of(3) => {
                let no_l2 = EntryOptions::new().skip_l2_writes();
                cache
                    .with_options(&no_l2)
                    .insert(key.to_owned(), version)
                    .await
            }
            None => cache.insert(key.to_owned(), version).await,
        }
    }

    fn raise(&mut self, i: usize, written: Vec<(String, u64)>) {
        let mut floors = self.floors.lock().unwrap();
        for (key, version) in written {
            let floor = floors[i].entry(key).or_insert(0);
            *floor = (*floor).max(version);
        }
    }

    fn note(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    /// Waits for the reads in flight (a failed one fails the seed).
    async fn settle(&mut self) {
        for read in self.reads.drain(..) {
            if let Err(error) = read.await {
                std::panic::resume_unwind(error.into_panic());
            }
        }
    }

    fn fault(&mut self, i: usize, rng: &mut fastrand::Rng) {
        const OPS: [StoreOp; 8] = [
            StoreOp::Get,
            StoreOp::GetMany,
            StoreOp::Reserve,
            StoreOp::Set,
            StoreOp::Replace,
            StoreOp::Delete,
            StoreOp::Scan,
            StoreOp::StampTags,
        ];
        let instance = &self.instances[i];
        let op = OPS[rng.usize(..OPS.len())];
        let n = rng.u32(1..4);
        let fault = match rng.u32(..13) {
            0 | 1 => {
                instance.store.fail_next(op, n);
                format!("store fails next {n} {op}")
            }
            2 => {
                instance.store.hang_next(op, 1);
                format!("store hangs next {op}")
            }
            3 => {
                instance.store.disconnect();
                "store disconnected".to_owned()
            }
            4 => {
                instance.store.reconnect();
                instance.bus.reconnect();
                "store and bus reconnected".to_owned()
            }
            5 => {
                instance.bus.disconnect();
                "bus disconnected".to_owned()
            }
            6 => {
                instance.bus.fail_next_publishes(n);
                format!("bus fails next {n} publishes")
            }
            7 => {
                instance.bus.hang_next_publishes(1);
                "bus hangs next publish".to_owned()
            }
            8 => {
                if instance.bus.held() > 0 || rng.bool() {
                    instance.bus.release_held();
                    "held deliveries released".to_owned()
                } else {
                    instance.bus.hold_deliveries();
                    "deliveries held".to_owned()
                }
            }
            10 => {
                instance.loads.lock().unwrap().fail += n;
                format!("the next {n} loads fail")
            }
            11 => {
                instance.loads.lock().unwrap().panic += 1;
                "the next load panics".to_owned()
            }
            9 => {
                // Up to twice the L2 timeout: some calls are given up on.
                let latency = Duration::from_millis(rng.u64(0..100));
                instance.store.set_latency(latency);
                format!("store latency {latency:?}")
            }
            _ => {
                instance.bus.lose_next_published(1);
                self.lossy = true;
                "the next message is lost".to_owned()
            }
        };
        self.note(format!("{i}: fault: {fault}"));
    }

    /// Faults stop, and the fleet has time to replay and send what it owes.
    async fn heal(&mut self) {
        for instance in &self.instances {
            *instance.loads.lock().unwrap() = LoadFaults::default();
            instance.store.clear_faults();
            instance.store.reconnect();
            instance.bus.clear_faults();
            instance.bus.reconnect();
            instance.bus.release_held();
        }
        // Longer than the longest backoff (5 s) several times over.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            for instance in &self.instances {
                instance.bus.release_held();
            }
        }
    }

    /// Every instance reads the database's version of every key.
    async fn check_all(&self, when: &str) {
        for (i, instance) in self.instances.iter().enumerate() {
            for key in KEYS {
                let got = instance.cache.get(&key.to_owned()).await.unwrap().unwrap();
                let want = self.version(key);
                assert_eq!(
                    got, want,
                    "{when}: instance {i} reads {key} as {got}, the database has {want}"
                );
            }
        }
    }
}

/// The tag of a key's group: `a` for `a:0`.
fn group(key: &str) -> Option<String> {
    key.split(':').next().map(str::to_owned)
}

/// The keys that the pattern `{prefix}*` matches.
fn matching(prefix: &str) -> Vec<&'static str> {
    KEYS.iter()
        .copied()
        .filter(|k| k.starts_with(prefix))
        .collect()
}

async fn run(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut fleet = Fleet::new(&mut rng, seed % 2 == 1);
    let schedule = {
        let fleet = &mut fleet;
        async move {
            for _ in 0..STEPS {
                fleet.step(&mut rng).await;
            }
            fleet.settle().await;
            fleet.heal().await;
            if !fleet.lossy {
                fleet.check_all("quiet").await;
            }
            fleet.clock.advance(L1_TTL + Duration::from_secs(1));
            fleet.check_all("past the L1 TTL").await;
            for instance in &fleet.instances {
                let stats = instance.cache.stats();
                LOADS.fetch_add(stats.loads, Ordering::Relaxed);
                SUPERSEDED.fetch_add(stats.superseded, Ordering::Relaxed);
            }
        }
    };
    let watched = tokio::time::timeout(Duration::from_secs(600), schedule);
    let outcome =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(watched)).await;
    let failure = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(_)) => "a hang: the watchdog fired after 600 s of simulated time".to_owned(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    };
    panic!(
        "seed {seed} failed (replay: SIM_SEED={seed} cargo test --features testing --test simulation): {failure}\nschedule:\n  {}",
        fleet.log.lock().unwrap().join("\n  ")
    );
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse().ok());
    let (from, n) = (
        var("SIM_FROM").unwrap_or(0u64),
        var("SIM_SEEDS").unwrap_or(2_000),
    );
    (from..from + n).collect()
}

#[test]
fn the_fleet_rules_hold_over_seeded_schedules() {
    let seeds = seeds();
    // The loaders' injected panics are expected: keep them off the output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"the simulated loader panics") {
            default_hook(info);
        }
    }));
    let started = std::time::Instant::now();
    for &seed in &seeds {
        // The crate's own draws (jitter, backoff) come from this thread's
        // generator: seeded too, so that a seed replays alone as in a sweep.
        fastrand::seed(seed);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run(seed));
    }
    println!(
        "{} seeds in {:?} ({:?} per seed); {} loads, {} refused by the fence",
        seeds.len(),
        started.elapsed(),
        started.elapsed() / seeds.len().max(1) as u32,
        LOADS.load(Ordering::Relaxed),
        SUPERSEDED.load(Ordering::Relaxed),
    );
}

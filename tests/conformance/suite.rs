//! The conformance suite of [`RemoteStore`] and [`Backplane`]: one body of checks
//! that `MemoryStore`/`MemoryBus` (`tests/conformance/memory.rs`), a Redis server
//! and a Redis Cluster (`tests/servers/conformance.rs`) must all pass. Where Redis and
//! the memory doubles disagree, the doubles are wrong.
//!
//! Every check writes under a prefix of its own with a random part, and its globs
//! start with that prefix (escaped), so that checks can share one server, run in
//! any order and run again. TTLs are real and short, waited out with sleeps.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tiered::{escape_glob, Backplane, Delivery, Pattern, RemoteStore, ScanCursor};

/// A TTL that runs out within a check, and how long to wait for it to.
const SHORT: Duration = Duration::from_millis(250);
const PAST_SHORT: Duration = Duration::from_millis(550);
/// A TTL that outlives every check.
const LONG: Duration = Duration::from_secs(600);
/// How many callers race for one key.
const RACERS: usize = 50;
/// Longest wait for a pub/sub delivery.
const DELIVERY_WAIT: Duration = Duration::from_secs(10);
/// More steps than any walk here may take.
const MAX_STEPS: usize = 100_000;

/// A key prefix unique to one run of one check.
fn prefix(check: &str) -> String {
    format!("conf:{check}:{:016x}:", fastrand::u64(..))
}

fn keys(prefix: &str, suffixes: impl IntoIterator<Item = impl AsRef<str>>) -> Vec<String> {
    suffixes
        .into_iter()
        .map(|s| format!("{prefix}{}", s.as_ref()))
        .collect()
}

async fn set_all(store: &dyn RemoteStore, keys: &[String], value: &[u8], ttl: Duration) {
    for batch in keys.chunks(200) {
        for result in join_all(batch.iter().map(|k| store.set(k, value, ttl))).await {
            result.expect("set");
        }
    }
}

/// Which of `keys` are live.
async fn live(store: &dyn RemoteStore, keys: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for batch in keys.chunks(500) {
        let found = store.get_many(batch).await.expect("get_many");
        assert_eq!(found.len(), batch.len(), "one answer per key");
        for (key, value) in batch.iter().zip(found) {
            if value.is_some() {
                out.insert(key.clone());
            }
        }
    }
    out
}

/// Runs a `delete_matching` walk to its end: (keys deleted, steps).
pub async fn walk(store: &dyn RemoteStore, glob: &str) -> (u64, usize) {
    let mut cursor = ScanCursor::default();
    let (mut deleted, mut steps) = (0, 0);
    loop {
        let step = store
            .delete_matching(glob, cursor)
            .await
            .unwrap_or_else(|e| panic!("delete_matching({glob:?}, {cursor:?}): {e}"));
        deleted += step.deleted;
        steps += 1;
        assert!(steps < MAX_STEPS, "the walk of {glob:?} does not end");
        match step.next {
            Some(next) => cursor = next,
            None => return (deleted, steps),
        }
    }
}

/// Removes everything a check left under `prefix`.
async fn clean(store: &dyn RemoteStore, prefix: &str) {
    walk(store, &format!("{}*", escape_glob(prefix))).await;
}

/// `get` and `set`: absent keys, overwrites, binary and empty values, expiry,
/// and an overwrite's new TTL.
pub async fn get_set_and_expiry(store: &dyn RemoteStore) {
    let p = prefix("get_set");
    let k = |s: &str| format!("{p}{s}");
    assert_eq!(store.get(&k("absent")).await.unwrap(), None);

    store.set(&k("a"), b"one", LONG).await.unwrap();
    assert_eq!(store.get(&k("a")).await.unwrap(), Some(b"one".to_vec()));
    store.set(&k("a"), b"two", LONG).await.unwrap();
    assert_eq!(store.get(&k("a")).await.unwrap(), Some(b"two".to_vec()));

    let binary: Vec<u8> = (0..=255).collect();
    store.set(&k("binary"), &binary, LONG).await.unwrap();
    assert_eq!(store.get(&k("binary")).await.unwrap(), Some(binary));
    store.set(&k("empty"), b"", LONG).await.unwrap();
    assert_eq!(
        store.get(&k("empty")).await.unwrap(),
        Some(Vec::new()),
        "an empty value is a value"
    );

    store.set(&k("short"), b"v", SHORT).await.unwrap();
    store.set(&k("extended"), b"v", SHORT).await.unwrap();
    store.set(&k("extended"), b"w", LONG).await.unwrap();
    store.set(&k("shortened"), b"v", LONG).await.unwrap();
    store.set(&k("shortened"), b"w", SHORT).await.unwrap();
    store
        .set(&k("sub-ms"), b"v", Duration::from_micros(10))
        .await
        .unwrap();
    assert_eq!(store.get(&k("short")).await.unwrap(), Some(b"v".to_vec()));
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(store.get(&k("short")).await.unwrap(), None, "expired");
    assert_eq!(store.get(&k("sub-ms")).await.unwrap(), None, "expired");
    assert_eq!(
        store.get(&k("extended")).await.unwrap(),
        Some(b"w".to_vec()),
        "an overwrite sets the new TTL"
    );
    assert_eq!(store.get(&k("shortened")).await.unwrap(), None);
    clean(store, &p).await;
}

/// `get_many`: one answer per key, in the order asked, duplicates included.
pub async fn get_many_in_order(store: &dyn RemoteStore) {
    let p = prefix("get_many");
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    let all = keys(&p, (0..60).map(|n| n.to_string()));
    for (n, key) in all.iter().enumerate() {
        if !n.is_multiple_of(3) {
            store
                .set(key, n.to_string().as_bytes(), LONG)
                .await
                .unwrap();
        }
    }
    let mut asked: Vec<String> = all.iter().rev().cloned().collect();
    asked.push(all[1].clone());
    asked.push(all[0].clone());
    asked.push(all[1].clone());
    let expected: Vec<Option<Vec<u8>>> = asked
        .iter()
        .map(|key| {
            let n: usize = key.strip_prefix(&p).unwrap().parse().unwrap();
            (!n.is_multiple_of(3)).then(|| n.to_string().into_bytes())
        })
        .collect();
    assert_eq!(store.get_many(&asked).await.unwrap(), expected);
    clean(store, &p).await;
}

/// `get_or_reserve`: a value is returned and left alone; an empty key gets the
/// reservation (for its TTL), and of many callers racing for it exactly one does.
pub async fn get_or_reserve_is_atomic(store: &dyn RemoteStore) {
    let p = prefix("reserve");
    let k = |s: &str| format!("{p}{s}");

    store.set(&k("value"), b"v", LONG).await.unwrap();
    let found = store.get_or_reserve(&k("value"), b"r", LONG).await.unwrap();
    assert_eq!(found, Some(b"v".to_vec()));
    assert_eq!(store.get(&k("value")).await.unwrap(), Some(b"v".to_vec()));
    store.set(&k("empty"), b"", LONG).await.unwrap();
    let found = store.get_or_reserve(&k("empty"), b"r", LONG).await.unwrap();
    assert_eq!(
        found,
        Some(Vec::new()),
        "an empty value is found, not reserved"
    );

    let tokens: Vec<Vec<u8>> = (0..RACERS)
        .map(|n| format!("token-{n}").into_bytes())
        .collect();
    let key = k("raced");
    let results = join_all(
        tokens
            .iter()
            .map(|token| store.get_or_reserve(&key, token, LONG)),
    )
    .await;
    let results: Vec<Option<Vec<u8>>> = results.into_iter().map(Result::unwrap).collect();
    let winners: Vec<usize> = (0..RACERS).filter(|&n| results[n].is_none()).collect();
    assert_eq!(winners.len(), 1, "exactly one reserves: {results:?}");
    let winner = &tokens[winners[0]];
    for (n, result) in results.iter().enumerate() {
        if n != winners[0] {
            assert_eq!(
                result.as_ref(),
                Some(winner),
                "the others find the reservation"
            );
        }
    }
    assert_eq!(store.get(&key).await.unwrap().as_ref(), Some(winner));

    let short = k("short");
    assert_eq!(
        store.get_or_reserve(&short, b"r1", SHORT).await.unwrap(),
        None
    );
    let found = k("found");
    store.set(&found, b"v", SHORT).await.unwrap();
    let got = store.get_or_reserve(&found, b"r", LONG).await.unwrap();
    assert_eq!(got, Some(b"v".to_vec()));
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(
        store.get(&found).await.unwrap(),
        None,
        "finding a value leaves its TTL alone"
    );
    assert_eq!(
        store.get(&short).await.unwrap(),
        None,
        "the reservation expired"
    );
    assert_eq!(
        store.get_or_reserve(&short, b"r2", LONG).await.unwrap(),
        None
    );
    assert_eq!(store.get(&short).await.unwrap(), Some(b"r2".to_vec()));
    clean(store, &p).await;
}

/// `replace`: writes only over exactly the expected bytes, with its own TTL; of
/// many callers expecting the same bytes, exactly one writes.
pub async fn replace_is_compare_and_set(store: &dyn RemoteStore) {
    let p = prefix("replace");
    let k = |s: &str| format!("{p}{s}");

    assert!(!store.replace(&k("absent"), b"x", b"v", LONG).await.unwrap());
    assert!(!store.replace(&k("absent"), b"", b"v", LONG).await.unwrap());
    assert_eq!(store.get(&k("absent")).await.unwrap(), None, "not created");

    let key = k("cas");
    store.set(&key, b"ab", LONG).await.unwrap();
    for wrong in [&b"b"[..], b"a", b"", b"abc", b"AB"] {
        assert!(!store.replace(&key, wrong, b"new", LONG).await.unwrap());
        assert_eq!(
            store.get(&key).await.unwrap(),
            Some(b"ab".to_vec()),
            "unchanged"
        );
    }
    assert!(store.replace(&key, b"ab", b"cd", LONG).await.unwrap());
    assert_eq!(store.get(&key).await.unwrap(), Some(b"cd".to_vec()));
    assert!(
        !store.replace(&key, b"ab", b"ef", LONG).await.unwrap(),
        "stale"
    );
    store.set(&k("empty"), b"", LONG).await.unwrap();
    assert!(store.replace(&k("empty"), b"", b"v", LONG).await.unwrap());

    let values: Vec<Vec<u8>> = (0..RACERS)
        .map(|n| format!("value-{n}").into_bytes())
        .collect();
    let results = join_all(values.iter().map(|v| store.replace(&key, b"cd", v, LONG))).await;
    let won: Vec<usize> = (0..RACERS)
        .filter(|&n| *results[n].as_ref().unwrap())
        .collect();
    assert_eq!(won.len(), 1, "exactly one replaces");
    assert_eq!(store.get(&key).await.unwrap(), Some(values[won[0]].clone()));

    let short = k("short");
    store.set(&short, b"old", LONG).await.unwrap();
    assert!(store.replace(&short, b"old", b"new", SHORT).await.unwrap());
    let refused = k("refused");
    store.set(&refused, b"old", SHORT).await.unwrap();
    assert!(!store
        .replace(&refused, b"other", b"new", LONG)
        .await
        .unwrap());
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(
        store.get(&refused).await.unwrap(),
        None,
        "a refused replace leaves the TTL alone"
    );
    assert_eq!(
        store.get(&short).await.unwrap(),
        None,
        "the replacement's TTL"
    );
    clean(store, &p).await;
}

/// `lease` and `release`: one holder at a time (of many racing), only its token
/// gives the lease back, and an expired lease can be taken by another.
pub async fn leases_are_exclusive(store: &dyn RemoteStore) {
    let p = prefix("lease");
    let k = |s: &str| format!("{p}{s}");

    let key = k("raced");
    let tokens: Vec<Vec<u8>> = (0..RACERS)
        .map(|n| format!("token-{n}").into_bytes())
        .collect();
    let results = join_all(tokens.iter().map(|t| store.lease(&key, t, LONG))).await;
    let held: Vec<usize> = (0..RACERS)
        .filter(|&n| *results[n].as_ref().unwrap())
        .collect();
    assert_eq!(held.len(), 1, "exactly one takes the lease");
    let holder = &tokens[held[0]];
    let other = &tokens[(held[0] + 1) % RACERS];

    store.release(&key, other).await.unwrap();
    store.release(&key, b"").await.unwrap();
    assert_eq!(
        store.get(&key).await.unwrap().as_ref(),
        Some(holder),
        "still held"
    );
    assert!(!store.lease(&key, other, LONG).await.unwrap());
    assert!(
        !store.lease(&key, holder, LONG).await.unwrap(),
        "not reentrant"
    );
    store.release(&key, holder).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None, "given back");
    assert!(store.lease(&key, other, LONG).await.unwrap());
    store.release(&k("never-taken"), b"t").await.unwrap();

    store.set(&k("value"), b"v", LONG).await.unwrap();
    assert!(
        !store.lease(&k("value"), b"t", LONG).await.unwrap(),
        "NX: any value"
    );

    let short = k("short");
    assert!(store.lease(&short, b"first", SHORT).await.unwrap());
    assert!(!store.lease(&short, b"second", LONG).await.unwrap());
    tokio::time::sleep(PAST_SHORT).await;
    assert!(
        store.lease(&short, b"second", LONG).await.unwrap(),
        "expired"
    );
    store.release(&short, b"first").await.unwrap();
    assert_eq!(
        store.get(&short).await.unwrap(),
        Some(b"second".to_vec()),
        "a late holder does not free another's lease"
    );
    clean(store, &p).await;
}

/// `delete`: the keys named, present or not, and nothing else; none at all; many
/// (across slots on a cluster).
pub async fn delete_removes_keys(store: &dyn RemoteStore) {
    let p = prefix("delete");
    let all = keys(&p, ["a", "b", "c", "d", "e"]);
    set_all(store, &all, b"v", LONG).await;
    store.delete(&[]).await.unwrap();
    let doomed = vec![all[0].clone(), all[2].clone(), format!("{p}absent")];
    store.delete(&doomed).await.unwrap();
    assert_eq!(
        live(store, &all).await,
        BTreeSet::from([all[1].clone(), all[3].clone(), all[4].clone()])
    );

    let many = keys(&p, (0..2500).map(|n| format!("many:{n}")));
    set_all(store, &many, b"v", LONG).await;
    store.delete(&many).await.unwrap();
    assert!(live(store, &many).await.is_empty());
    clean(store, &p).await;
}

/// The key suffixes the glob check writes: glob characters, escapes, sets,
/// multi-byte characters, hash tags.
const GLOB_KEYS: &[&str] = &[
    "", "a", "b", "c", "d", "A", "aa", "ab", "abc", "ba", "cab", "a*", "a?", "*", "?", "**", "[a]",
    "[", "]", "[]", "\\", "\\*", "a\\b", "a-c", "-", "^", "^a", "x*y", "xay", "xy", "é", "éa",
    "hello", "hallo", "hllo", "heeello", "{tag}a", "a{tag}", "a b", "a:b", "a:b:c", "a:c",
];

/// The globs the check walks with (each after the check's escaped prefix).
const GLOBS: &[&str] = &[
    "*",
    "?",
    "??",
    "???",
    "a*",
    "*a",
    "*a*",
    "**a**",
    "[a-c]",
    "[a-c]*",
    "[c-a]",
    "[^a]",
    "[^a]*",
    "[^a-c]*",
    "[abc]?",
    "[a-c][a-c]",
    "\\*",
    "a\\*",
    "a\\?",
    "*\\**",
    "\\**",
    "\\?",
    "[*]*",
    "[?]",
    "\\[a\\]",
    "[[]",
    "[[]*",
    "[]]",
    "[]a]",
    "[\\]]*",
    "\\\\",
    "[\\\\]*",
    "*\\\\",
    "h?llo",
    "h*llo",
    "h[ae]llo",
    "h[^e]llo",
    "x\\*y",
    "x*y",
    "[a",
    "[a-",
    "[^",
    "a[bc",
    "[a-]",
    "^*",
    "\\^*",
    "-",
    "*-*",
    "[-]",
    "é",
    "??*",
    "é*",
    "*{tag}*",
    "\\{tag\\}*",
    "a:*",
    "a:*:c",
    "*:*",
    "",
    "a\\",
    "\\",
];

/// `delete_matching` with Redis globs: for each glob, the keys a walk removes are
/// exactly those [`Pattern::matches`] (a port of Redis's matcher) says, and the
/// steps' `deleted` add up to their number.
pub async fn delete_matching_follows_redis_globs(store: &dyn RemoteStore) {
    let p = prefix("globs");
    let all = keys(&p, GLOB_KEYS);
    for glob in GLOBS {
        set_all(store, &all, b"v", LONG).await;
        let full = format!("{}{glob}", escape_glob(&p));
        let (deleted, _) = walk(store, &full).await;
        let left = live(store, &all).await;
        let gone: BTreeSet<String> = all.iter().filter(|k| !left.contains(*k)).cloned().collect();
        let pattern = Pattern::new(full.clone());
        let expected: BTreeSet<String> =
            all.iter().filter(|k| pattern.matches(k)).cloned().collect();
        assert_eq!(gone, expected, "glob {glob:?} (in full {full:?})");
        assert_eq!(deleted, expected.len() as u64, "glob {glob:?}: deleted");
    }
    clean(store, &p).await;
}

/// The empty key: Redis's `SCAN MATCH` takes it with the empty glob (and `*`, which
/// is not tried here: it would take every key of the server).
pub async fn delete_matching_the_empty_key(store: &dyn RemoteStore) {
    store.set("", b"v", LONG).await.unwrap();
    let (deleted, _) = walk(store, "").await;
    assert_eq!(deleted, 1);
    assert_eq!(store.get("").await.unwrap(), None);
}

/// `delete_matching` over more keys than one step takes: several steps, every
/// matching key that lives through the walk (overwritten or not) removed, no
/// other key touched, keys created during the walk removed or not but counted if
/// removed, and the walk ends.
pub async fn delete_matching_walks_many_keys(store: &dyn RemoteStore) {
    let p = prefix("walk");
    let matching = keys(&p, (0..3300).map(|n| format!("{n}:x")));
    let others = keys(&p, (0..300).map(|n| format!("{n}:y")));
    set_all(store, &matching, b"v", LONG).await;
    set_all(store, &others, b"v", LONG).await;
    let glob = format!("{}*:x", escape_glob(&p));

    let first = store
        .delete_matching(&glob, ScanCursor::default())
        .await
        .unwrap();
    let mut cursor = first.next.expect("3600 keys take more than one step");
    let mut deleted = first.deleted;
    let mut steps = 1;
    // During the walk: the matching keys still there are overwritten (they live on
    // through the walk), and new matching keys come.
    let survivors: Vec<String> = live(store, &matching).await.into_iter().collect();
    assert_eq!(
        survivors.len() as u64,
        matching.len() as u64 - first.deleted,
        "the first step's count"
    );
    set_all(store, &survivors, b"w", LONG).await;
    let created = keys(&p, (0..500).map(|n| format!("new{n}:x")));
    set_all(store, &created, b"v", LONG).await;
    loop {
        let step = store.delete_matching(&glob, cursor).await.unwrap();
        deleted += step.deleted;
        steps += 1;
        assert!(steps < MAX_STEPS, "the walk does not end");
        match step.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert!(steps >= 3, "{steps} steps for 3600 keys");
    assert!(
        live(store, &matching).await.is_empty(),
        "every matching key"
    );
    assert_eq!(
        live(store, &others).await.len(),
        others.len(),
        "no other key"
    );
    let created_left = live(store, &created).await.len();
    assert_eq!(
        deleted,
        (matching.len() + created.len() - created_left) as u64,
        "deleted counts each removed key once"
    );
    let (again, _) = walk(store, &glob).await;
    assert_eq!(again as usize, created_left, "a second walk takes the rest");
    clean(store, &p).await;
}

/// `delete_matching` with nothing to remove.
pub async fn delete_matching_nothing(store: &dyn RemoteStore) {
    let p = prefix("nothing");
    store.set(&format!("{p}kept"), b"v", LONG).await.unwrap();
    let (deleted, _) = walk(store, &format!("{}absent*", escape_glob(&p))).await;
    assert_eq!(deleted, 0);
    assert_eq!(
        store.get(&format!("{p}kept")).await.unwrap(),
        Some(b"v".to_vec())
    );
    clean(store, &p).await;
}

/// `delete_matching` does not count keys that expired (`SCAN` skips them).
pub async fn delete_matching_skips_expired_keys(store: &dyn RemoteStore) {
    let p = prefix("expired");
    set_all(store, &keys(&p, ["a", "b", "c"]), b"v", SHORT).await;
    set_all(store, &keys(&p, ["d", "e"]), b"v", LONG).await;
    tokio::time::sleep(PAST_SHORT).await;
    let (deleted, _) = walk(store, &format!("{}*", escape_glob(&p))).await;
    assert_eq!(deleted, 2);
}

/// `ping` answers.
/// `stamp_tags`: one clock that moves forward on every call, atomically, its
/// value written to every tag key given (no expiry), past any value the clock
/// held; a clock that is not a number counts as 0. The keys share a hash
/// slot, as a namespace's tag keys do.
pub async fn stamp_tags_moves_one_clock(store: &dyn RemoteStore) {
    let p = format!("{{{}}}", prefix("stamp_tags"));
    let k = |s: &str| format!("{p}{s}");
    let read = |key: String| async move {
        let bytes = store.get(&key).await.unwrap()?;
        String::from_utf8(bytes).unwrap().parse::<u64>().ok()
    };
    let (clock, t1, t2) = (k("clock"), k("t1"), k("t2"));
    let both = [t1.clone(), t2.clone()];
    let first = store.stamp_tags(&clock, &both).await.unwrap();
    assert_eq!(read(t1.clone()).await, Some(first));
    assert_eq!(read(t2.clone()).await, Some(first));
    let second = store.stamp_tags(&clock, &both[1..]).await.unwrap();
    assert!(second > first);
    assert_eq!(read(t1.clone()).await, Some(first), "not stamped again");
    assert_eq!(read(t2.clone()).await, Some(second));
    assert_eq!(read(clock.clone()).await, Some(second));
    let stamps =
        futures_util::future::join_all((0..20).map(|_| store.stamp_tags(&clock, &both[..1]))).await;
    let mut stamps: Vec<u64> = stamps.into_iter().map(Result::unwrap).collect();
    stamps.sort_unstable();
    stamps.dedup();
    assert_eq!(stamps.len(), 20, "each call its own stamp");
    assert!(stamps[0] > second);
    assert_eq!(read(t1.clone()).await, stamps.last().copied());
    // A clock ahead of the store's time: one past it.
    let ahead = u64::pow(10, 15) * 8;
    store
        .set(&clock, ahead.to_string().as_bytes(), LONG)
        .await
        .unwrap();
    assert_eq!(store.stamp_tags(&clock, &both).await.unwrap(), ahead + 1);
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(read(t2.clone()).await, Some(ahead + 1), "no expiry");
    assert!(store.stamps_tags());
    store.set(&k("word"), b"not a number", LONG).await.unwrap();
    let repaired = store.stamp_tags(&k("word"), &both).await.unwrap();
    assert!(repaired > 0 && repaired < ahead, "from the store's time");
    clean(store, &p).await;
}

pub async fn ping_answers(store: &dyn RemoteStore) {
    store.ping().await.expect("ping");
}

/// Every store check, in turn, on one store (as they share a server).
pub async fn every_store_check(store: &dyn RemoteStore) {
    get_set_and_expiry(store).await;
    get_many_in_order(store).await;
    get_or_reserve_is_atomic(store).await;
    replace_is_compare_and_set(store).await;
    leases_are_exclusive(store).await;
    delete_removes_keys(store).await;
    delete_matching_follows_redis_globs(store).await;
    delete_matching_the_empty_key(store).await;
    delete_matching_walks_many_keys(store).await;
    delete_matching_nothing(store).await;
    delete_matching_skips_expired_keys(store).await;
    stamp_tags_moves_one_clock(store).await;
    ping_answers(store).await;
}

/// The next delivery, or a test failure after [`DELIVERY_WAIT`].
async fn next(stream: &mut BoxStream<'static, Delivery>, what: &str) -> Delivery {
    match tokio::time::timeout(DELIVERY_WAIT, stream.next()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing within {DELIVERY_WAIT:?}"),
    }
}

/// A subscription, once established (its first delivery is `Subscribed`).
async fn subscribed(bus: &dyn Backplane, channel: &str) -> BoxStream<'static, Delivery> {
    let mut stream = bus.subscribe(channel);
    assert_eq!(
        next(&mut stream, channel).await,
        Delivery::Subscribed,
        "first delivery on {channel}"
    );
    stream
}

/// The next message (a re-subscription on the way is skipped).
async fn message(stream: &mut BoxStream<'static, Delivery>, what: &str) -> Vec<u8> {
    loop {
        match next(stream, what).await {
            Delivery::Message(bytes) => return bytes,
            Delivery::Subscribed | Delivery::Lost => continue,
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// Pub/sub on one backplane: a subscription yields `Subscribed` first; a message
/// reaches every subscription of its channel, in order, bytes intact, and none of
/// another channel; a dropped subscription does not stop the others.
pub async fn pubsub(bus: &dyn Backplane) {
    let p = prefix("pubsub");
    let (c, d) = (format!("{p}c"), format!("{p}d"));
    let mut c1 = subscribed(bus, &c).await;
    let mut c2 = subscribed(bus, &c).await;
    let mut d1 = subscribed(bus, &d).await;

    let binary: Vec<u8> = (0..=255).rev().collect();
    bus.publish(&c, b"first").await.unwrap();
    bus.publish(&c, &binary).await.unwrap();
    bus.publish(&c, b"").await.unwrap();
    for (stream, name) in [(&mut c1, "c1"), (&mut c2, "c2")] {
        assert_eq!(message(stream, name).await, b"first");
        assert_eq!(message(stream, name).await, binary);
        assert_eq!(message(stream, name).await, b"");
    }

    // Messages on one connection arrive in order: what comes after a marker proves
    // what did not come before it.
    bus.publish(&d, b"for d").await.unwrap();
    bus.publish(&c, b"c marker").await.unwrap();
    assert_eq!(message(&mut c1, "c1").await, b"c marker", "nothing from d");
    assert_eq!(message(&mut c2, "c2").await, b"c marker", "nothing from d");
    assert_eq!(message(&mut d1, "d1").await, b"for d", "nothing from c");

    drop(c2);
    bus.publish(&c, b"after drop").await.unwrap();
    assert_eq!(message(&mut c1, "c1").await, b"after drop");
    bus.publish(&d, b"d marker").await.unwrap();
    assert_eq!(message(&mut d1, "d1").await, b"d marker", "nothing from c");

    // A publish on a channel nobody listens to succeeds.
    bus.publish(&format!("{p}nobody"), b"x").await.unwrap();
}

/// Pub/sub across two connections: what one publishes reaches the other's
/// subscriptions and its own.
pub async fn pubsub_across(publisher: &dyn Backplane, subscriber: &dyn Backplane) {
    let p = prefix("across");
    let c = format!("{p}c");
    let mut theirs = subscribed(subscriber, &c).await;
    let mut own = subscribed(publisher, &c).await;
    publisher.publish(&c, b"from publisher").await.unwrap();
    subscriber.publish(&c, b"from subscriber").await.unwrap();
    assert_eq!(message(&mut theirs, "theirs").await, b"from publisher");
    assert_eq!(message(&mut own, "own").await, b"from publisher");
    // The second publish was sent once the first was done: it comes second.
    assert_eq!(message(&mut theirs, "theirs").await, b"from subscriber");
    assert_eq!(message(&mut own, "own").await, b"from subscriber");
}

//! `get_many`: L1 answers what it has, L2 the rest with one `MGET` (then a
//! reservation for each key it does not have, when there is a loader), and what
//! is still missing is loaded in one batch (the configured loader's
//! `load_many`, or the caller's batch load), while each key still shares the
//! flight of any concurrent `get` of it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use futures_util::future::{join_all, Either};
use futures_util::FutureExt;

use crate::engine::flight::outcome::{shared, Failure, Fetched, Job};
use crate::engine::lookup::{Configured, Lookup};
use crate::engine::Core;
use crate::entry::Entry;
use crate::error::{BoxError, Error};
use crate::key::{CacheKey, CacheValue};
use crate::policy::Plan;
use crate::remote::L2Read;
use crate::source::{loaded_values, Loaded, NOT_MODIFIED_WITHOUT_STALE};

/// A key's share of a batch: its value (with its TTLs and tags), or its
/// absence.
fn fetched<V: Clone>(loaded: Option<&Loaded<V>>) -> Result<Fetched<V>, Failure> {
    match loaded {
        None => Ok(Fetched::cached(None)),
        Some(loaded) => Fetched::from_loaded(loaded.clone(), None)
            .ok_or_else(|| shared(NOT_MODIFIED_WITHOUT_STALE.into())),
    }
}

/// The type of "no batch load of the caller's own" (the configured loader is used).
type NoBatch<K, V> = fn(Vec<K>) -> std::future::Ready<Result<HashMap<K, V>, BoxError>>;

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// The values of `keys` that exist (duplicates looked up once), loaded with
    /// the configured loader.
    pub(crate) async fn get_many(self: &Arc<Self>, keys: &[K]) -> Result<HashMap<K, V>, Error> {
        self.get_many_from(keys, None::<&NoBatch<K, V>>, None).await
    }

    /// The values of `keys` that exist (duplicates looked up once), loaded with
    /// `given` (the caller's batch load) if there is one, else with the
    /// configured loader. A key L2 answered stale, which must load after all,
    /// is loaded on its own with a batch of one. `plan`: the call's options
    /// (`None`: the cache's settings).
    pub(crate) async fn get_many_from<B, Fut>(
        self: &Arc<Self>,
        keys: &[K],
        given: Option<&B>,
        plan: Option<&Arc<Plan>>,
    ) -> Result<HashMap<K, V>, Error>
    where
        B: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, BoxError>>,
    {
        let mut found = HashMap::with_capacity(keys.len());
        let mut seen = HashSet::with_capacity(keys.len());
        let mut missing = Vec::new();
        let mut fallbacks = Vec::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            match self.lookup_from(key, Configured, plan).await {
                Lookup::Hit(Entry { value: Some(v), .. }) => {
                    found.insert(key.clone(), v);
                }
                Lookup::Hit(_) => {}
                Lookup::Stale(fallback) => {
                    missing.push(key.clone());
                    fallbacks.push(Some(fallback));
                }
                Lookup::Miss => {
                    missing.push(key.clone());
                    fallbacks.push(None);
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        self.start_bus(true).await;
        self.sync_tag_clock().await;
        let tickets: Vec<_> = missing.iter().map(|k| self.fence.ticket(k)).collect();
        // Where the batch's loads begin on the tag clock (read with the tickets).
        let born = self.tags.clock();
        // As a flight reads (see `run.rs`): no read when the call skips both
        // L2 reads and writes, no reservations when it skips writes, and a
        // hit it skips is loaded in the batch.
        let skip = self.plan(plan).skip;
        let from_l2: Vec<Option<L2Read<V>>> = match &self.remote {
            Some(remote) if !(skip.l2_reads && skip.l2_writes) => {
                let l2_keys: Vec<String> = missing.iter().map(|k| remote.key(k)).collect();
                let reserve = (given.is_some() || self.loader.is_some()) && !skip.l2_writes;
                let reads = remote.get_many(&l2_keys, reserve).await;
                reads.into_iter().map(Some).collect()
            }
            _ => missing.iter().map(|_| None).collect(),
        };
        let loader = self.loader.as_deref();
        let can_load = given.is_some() || loader.is_some();
        // Keys L2 answered are not in the batch: if their flight must load after
        // all (a stale entry, a refused commit), it asks the loader itself (or
        // the caller's batch load, for that key alone) — the batch's "not
        // found" for them would be cached as an absence.
        let in_batch: Vec<bool> = from_l2
            .iter()
            .map(|read| skip.l2_reads || !matches!(read, Some(L2Read::Hit(..))))
            .collect();
        let to_load: Vec<K> = missing
            .iter()
            .zip(&in_batch)
            .filter(|(_, loads)| **loads)
            .map(|(k, _)| k.clone())
            .collect();
        // Polled only if some key still needs loading after L2, by the first such flight.
        let batch = async {
            let load = match (given, loader) {
                (Some(given), _) => {
                    Either::Left(given(to_load.clone()).map(|r| r.map(loaded_values)))
                }
                (None, Some(loader)) => Either::Right(loader.load_many(&to_load)),
                (None, None) => return Ok(Arc::new(HashMap::new())),
            };
            let load = load.map(|r| r.map_err(shared));
            Ok::<_, Failure>(Arc::new(self.timed(to_load.len(), load).await?))
        }
        .shared();
        let flights = missing
            .iter()
            .zip(tickets)
            .zip(from_l2)
            .zip(fallbacks)
            .zip(in_batch)
            .map(|((((key, ticket), read), fallback), in_batch)| {
                let batch = batch.clone();
                let first =
                    match (in_batch, given) {
                        (true, _) if can_load => Some(Either::Left(batch.map(move |values| {
                            values.and_then(|values| fetched(values.get(key)))
                        }))),
                        (false, Some(given)) => Some(Either::Right(async move {
                            let mut values = given(vec![key.clone()]).await.map_err(shared)?;
                            Ok(Fetched::cached(values.remove(key)))
                        })),
                        _ => None,
                    };
                let job = Job {
                    prepared: read.map(|read| (ticket, read)),
                    own_load: !in_batch,
                    fallback,
                    born: Some(born),
                    plan: plan.cloned(),
                    ..Job::default()
                };
                self.fly(key, first, job)
            });
        for (key, result) in missing.iter().zip(join_all(flights).await) {
            if let Some(value) = result? {
                found.insert(key.clone(), value);
            }
        }
        Ok(found)
    }
}

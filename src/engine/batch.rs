//! `get_many`: L1 answers what it has, L2 the rest with one `MGET` (then a
//! reservation for each key it does not have, when there is a loader), and what
//! is still missing is loaded in one batch, while each key still shares the
//! flight of any concurrent `get` of it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::future::join_all;
use futures_util::FutureExt;

use crate::engine::flight::outcome::{shared, Failure, Fetched, Job};
use crate::engine::lookup::Lookup;
use crate::engine::Core;
use crate::entry::Entry;
use crate::error::Error;
use crate::key::{CacheKey, CacheValue};
use crate::remote::L2Read;

impl<K: CacheKey, V: CacheValue> Core<K, V> {
    /// The values of `keys` that exist (duplicates looked up once).
    pub(crate) async fn get_many(self: &Arc<Self>, keys: &[K]) -> Result<HashMap<K, V>, Error> {
        let mut found = HashMap::with_capacity(keys.len());
        let mut seen = HashSet::with_capacity(keys.len());
        let mut missing = Vec::new();
        let mut fallbacks = Vec::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            match self.lookup(key).await {
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
        let tickets: Vec<_> = missing.iter().map(|k| self.fence.ticket(k)).collect();
        let from_l2: Vec<Option<L2Read<V>>> = match &self.remote {
            Some(remote) => {
                let l2_keys: Vec<String> = missing.iter().map(|k| remote.key(k)).collect();
                let reads = remote.get_many(&l2_keys, self.loader.is_some()).await;
                reads.into_iter().map(Some).collect()
            }
            None => missing.iter().map(|_| None).collect(),
        };
        let loader = self.loader.as_deref();
        // Keys L2 answered are not in the batch: if their flight must load after
        // all (a stale entry, a refused commit), it asks the loader itself —
        // the batch's "not found" for them would be cached as an absence.
        let in_batch: Vec<bool> = from_l2
            .iter()
            .map(|read| !matches!(read, Some(L2Read::Hit(..))))
            .collect();
        let to_load: Vec<K> = missing
            .iter()
            .zip(&in_batch)
            .filter(|(_, loads)| **loads)
            .map(|(k, _)| k.clone())
            .collect();
        // Polled only if some key still needs loading after L2, by the first such flight.
        let batch = async {
            let Some(loader) = loader else {
                return Ok(Arc::new(HashMap::new()));
            };
            let load = loader.load_many(&to_load).map(|r| r.map_err(shared));
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
                let first = loader.filter(|_| in_batch).map(|_| {
                    batch.map(move |values| {
                        values.map(|values| Fetched::cached(values.get(key).cloned()))
                    })
                });
                let job = Job {
                    prepared: read.map(|read| (ticket, read)),
                    own_load: !in_batch,
                    fallback,
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

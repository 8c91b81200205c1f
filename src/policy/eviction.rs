//! L1's eviction policies.

/// Which entry L1 evicts when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum L1Eviction {
    /// moka's TinyLFU: a new entry is admitted only if it has been asked for more
    /// often than the entry it would evict (a frequency sketch remembers), and the
    /// least recently used admitted entry goes first. Best when popularity is
    /// stable (Zipf-like traffic) and with one-off scans, which it keeps out.
    #[default]
    TinyLfu,
    /// Least recently used: every new entry is admitted. Best when the hot set
    /// moves (yesterday's popular keys are cold today).
    Lru,
    /// Whichever of the two does better on this cache's own traffic: a miniature
    /// simulation of both (two key-only caches of about a thousand keys, fed a
    /// fixed hash-sampled share of the keys) runs beside L1, and L1 switches
    /// policy when the other one's simulated hit ratio leads by more than two
    /// points for a while. L1 then holds one moka cache per policy, and a switch
    /// moves the entries from one to the other (invalidations stay exact
    /// throughout). It starts with TinyLFU. A read costs more than with a fixed
    /// policy (an allocation and a key hash, and two small cache lookups on
    /// sampled reads: docs/BENCHMARKS.md, "Instructions per L1 hit"). Needs an
    /// entry-bounded L1 (`l1_max_entries`).
    Adaptive,
}

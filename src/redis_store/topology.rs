//! Which cluster node a `delete_matching` walk scans next, and whether it still
//! may, read from `CLUSTER NODES`.
//!
//! A walk covers hash slots in order. Each step finds the master that serves the
//! first slot not yet covered and the run of consecutive slots it serves from
//! there, stopping before a slot in migration. Where to find it comes from any
//! node's view; the run itself, and the fingerprint that names it in the cursor
//! (its id and run), come from that master's own view, the only one that shows
//! its migrations. If a failover, a resharding or a migration changes either
//! between two steps, the fingerprint differs and the node's scan starts again
//! from 0, so that a `SCAN` cursor is never applied to another node; and a run
//! counts as covered only if the master's own view names the same run after its
//! last `SCAN` as before its first. A master only suspected down (`fail?`) is
//! scanned like any other; one marked failed, a slot nobody serves, or a slot in
//! migration is an error (the walk stays owed and is retried), never a skipped
//! node.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::error::BoxError;

/// The number of hash slots in a Redis Cluster.
pub(super) const SLOTS: u32 = 16384;

/// The node to scan for the run of slots starting at some slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    /// Where to reach it: the announced hostname, else the IP; `None` when the
    /// view gives neither (a node that never met another prints `:port`): then
    /// the host of the node that answered.
    pub(super) host: Option<String>,
    pub(super) port: u16,
    /// Whether the view is this node's own (its `myself` line).
    pub(super) myself: bool,
    /// Stands for the node's id and `[first, last]`: the cursor's `node`.
    pub(super) fingerprint: u64,
    /// The last slot of the run this node covers once its scan completes.
    pub(super) last: u16,
}

struct Master<'a> {
    id: &'a str,
    address: &'a str,
    myself: bool,
    failed: bool,
    ranges: Vec<(u32, u32)>,
}

fn slot_number(text: &str) -> Result<u32, BoxError> {
    let slot: u32 = text.parse()?;
    if slot >= SLOTS {
        return Err(format!("CLUSTER NODES names slot {slot}").into());
    }
    Ok(slot)
}

/// The master that serves `slot`, from the text of `CLUSTER NODES`.
pub(super) fn owner(nodes: &str, slot: u16) -> Result<Owner, BoxError> {
    let slot = u32::from(slot);
    let mut migrating = Vec::new();
    let mut masters = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [id, address, flags, ..] = fields[..] else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        let mut ranges = Vec::new();
        for field in fields.iter().skip(8) {
            if let Some(moving) = field.strip_prefix('[') {
                // `[slot->-target]` on the source, `[slot-<-source]` on the target.
                let digits: String = moving.chars().take_while(char::is_ascii_digit).collect();
                migrating.push(slot_number(&digits)?);
            } else if let Some((first, last)) = field.split_once('-') {
                let (first, last) = (slot_number(first)?, slot_number(last)?);
                if first > last {
                    return Err(format!("CLUSTER NODES names the range {field}").into());
                }
                ranges.push((first, last));
            } else {
                let one = slot_number(field)?;
                ranges.push((one, one));
            }
        }
        if flags.contains(&"master") {
            masters.push(Master {
                id,
                address,
                myself: flags.contains(&"myself"),
                failed: flags.contains(&"fail") || flags.contains(&"noaddr"),
                ranges,
            });
        }
    }
    if migrating.contains(&slot) {
        return Err(
            format!("slot {slot} is being migrated; the walk resumes when it settles").into(),
        );
    }
    let Some((master, end)) = masters.iter().find_map(|m| {
        m.ranges
            .iter()
            .find(|(first, last)| (*first..=*last).contains(&slot))
            .map(|&(_, last)| (m, last))
    }) else {
        return Err(format!("no master serves slot {slot}").into());
    };
    if master.failed {
        return Err(format!("the master of slot {slot} ({}) is marked failed", master.id).into());
    }
    // The run goes on through adjacent ranges of the same node (each step moves
    // `last` up, so this ends), and stops before a slot in migration.
    let mut last = end;
    while let Some(&(_, next)) = master.ranges.iter().find(|(first, _)| *first == last + 1) {
        last = next;
    }
    if let Some(stop) = migrating.iter().filter(|m| **m > slot && **m <= last).min() {
        last = stop - 1;
    }
    // `ip:port@cport[,hostname]`
    let (endpoint, hostname) = match master.address.split_once(',') {
        Some((endpoint, rest)) => (endpoint, rest.split(',').next().filter(|h| !h.is_empty())),
        None => (master.address, None),
    };
    let endpoint = endpoint.split('@').next().unwrap_or_default();
    let Some((ip, port)) = endpoint.rsplit_once(':') else {
        return Err(format!("CLUSTER NODES gave no address for {}", master.id).into());
    };
    let host = hostname.or((!ip.is_empty()).then_some(ip));
    let mut hasher = DefaultHasher::new();
    (master.id, slot, last).hash(&mut hasher);
    Ok(Owner {
        host: host.map(str::to_owned),
        port: port.parse()?,
        myself: master.myself,
        fingerprint: hasher.finish() | 1,
        last: u16::try_from(last)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7003@17003 master - 0 0 3 connected 10923-16383
d4 127.0.0.1:7004@17004 slave a1 0 0 1 connected
";

    #[test]
    fn the_owner_of_a_slot_and_its_run() {
        let first = owner(THREE, 0).unwrap();
        assert_eq!(
            (first.host.as_deref(), first.port, first.last, first.myself),
            (Some("127.0.0.1"), 7001, 5460, true)
        );
        assert!(!owner(THREE, 5461).unwrap().myself);
        let second = owner(THREE, 5461).unwrap();
        assert_eq!((second.port, second.last), (7002, 10922));
        assert_eq!(owner(THREE, 16383).unwrap().last, 16383);
    }

    #[test]
    fn a_failover_changes_the_fingerprint() {
        let before = owner(THREE, 0).unwrap();
        let after = owner(
            &THREE
                .replace(
                    "myself,master - 0 0 1 connected 0-5460",
                    "myself,slave d4 0 0 1 connected",
                )
                .replace(
                    "slave a1 0 0 1 connected",
                    "master - 0 0 4 connected 0-5460",
                ),
            0,
        )
        .unwrap();
        assert_eq!(after.port, 7004);
        assert_ne!(before.fingerprint, after.fingerprint);
        // Resuming in the middle of a run is a different run, too.
        assert_ne!(owner(THREE, 1).unwrap().fingerprint, before.fingerprint);
    }

    #[test]
    fn suspected_masters_are_scanned_and_failed_ones_are_errors() {
        let suspected = THREE.replace("7002@17002 master", "7002@17002 master,fail?");
        assert_eq!(owner(&suspected, 6000).unwrap().port, 7002);
        let failed = THREE.replace("7002@17002 master", "7002@17002 master,fail");
        assert!(owner(&failed, 6000).is_err());
        let unserved = THREE.replace(" 5461-10922", "");
        assert!(owner(&unserved, 6000).is_err());
    }

    #[test]
    fn split_ranges_and_migrations_end_a_run() {
        let split = THREE
            .replace("connected 0-5460", "connected 0-100 200-5460")
            .replace("connected 5461-10922", "connected 101-199 5461-10922");
        assert_eq!(owner(&split, 0).unwrap().last, 100);
        assert_eq!(owner(&split, 101).unwrap().port, 7002);
        assert_eq!(owner(&split, 101).unwrap().last, 199);
        let adjacent = THREE.replace("connected 0-5460", "connected 0-99 100 101-5460");
        assert_eq!(owner(&adjacent, 0).unwrap().last, 5460);
        let moving = THREE.replace("connected 0-5460", "connected 0-5460 [300->-b2]");
        assert_eq!(owner(&moving, 0).unwrap().last, 299);
        assert!(owner(&moving, 300).is_err());
    }

    #[test]
    fn hostnames_and_missing_addresses() {
        let named = THREE.replace("7002@17002 ", "7002@17002,redis-b.internal ");
        assert_eq!(
            owner(&named, 6000).unwrap().host.as_deref(),
            Some("redis-b.internal")
        );
        let empty = THREE.replace("7002@17002 ", "7002@17002,,shard-id=x ");
        assert_eq!(
            owner(&empty, 6000).unwrap().host.as_deref(),
            Some("127.0.0.1")
        );
        let alone = THREE.replace("127.0.0.1:7002", ":7002");
        assert_eq!(owner(&alone, 6000).unwrap().host, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "a 1:2 master - 0 0 1 connected 0-4294967295",
            "a 1:2 master - 0 0 1 connected 0-10 11-3 4-10",
            "a 1:2 master - 0 0 1 connected 0-20000",
            "a 1:2 master - 0 0 1 connected [99999->-b]",
            "",
            "x",
            "a 1:2 master - 0 0 1 connected zz",
            "a :x master - 0 0 1 connected 0-16383",
        ] {
            assert!(owner(text, 0).is_err(), "{text:?}");
        }
    }
}

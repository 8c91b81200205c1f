//! Which cluster node a `delete_matching` walk scans next, read from
//! `CLUSTER NODES` at every step.
//!
//! A walk covers hash slots in order. Each step finds the master that owns the
//! first slot not yet covered and the run of consecutive slots it owns from there
//! (stopping before a slot that is being migrated), and scans that node. The
//! cursor names the node by a fingerprint of its id and that run: if a failover,
//! a resharding or a migration changes either between two steps, the fingerprint
//! differs and the node's scan starts again from 0, so that a `SCAN` cursor is
//! never applied to another node and a run of slots counts as covered only when
//! one node held all of it for the whole of one complete scan. A master that is
//! only suspected down (`fail?`) is scanned like any other; one marked failed,
//! a slot nobody serves, or a slot in migration is an error (the walk stays owed
//! and is retried), never a skipped node.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::error::BoxError;

/// The number of hash slots in a Redis Cluster.
pub(super) const SLOTS: u32 = 16384;

/// The node to scan for the run of slots starting at some slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) host: String,
    pub(super) port: u16,
    /// Stands for the node's id and `[first, last]`: the cursor's `node`.
    pub(super) fingerprint: u64,
    /// The last slot of the run this node covers once its scan completes.
    pub(super) last: u16,
}

struct Master<'a> {
    id: &'a str,
    address: &'a str,
    failed: bool,
    ranges: Vec<(u32, u32)>,
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
                migrating.push(digits.parse::<u32>()?);
            } else if let Some((first, last)) = field.split_once('-') {
                ranges.push((first.parse::<u32>()?, last.parse::<u32>()?));
            } else {
                let one = field.parse::<u32>()?;
                ranges.push((one, one));
            }
        }
        if flags.contains(&"master") {
            masters.push(Master {
                id,
                address,
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
    // The run goes on through adjacent ranges of the same node, and stops before
    // a slot in migration.
    let mut last = end;
    while let Some(&(_, next)) = master.ranges.iter().find(|(first, _)| *first == last + 1) {
        last = next;
    }
    if let Some(stop) = migrating.iter().filter(|m| **m > slot && **m <= last).min() {
        last = stop - 1;
    }
    let address = master.address.split(['@', ',']).next().unwrap_or_default();
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("CLUSTER NODES gave no address for {}", master.id).into());
    };
    let mut hasher = DefaultHasher::new();
    (master.id, slot, last).hash(&mut hasher);
    Ok(Owner {
        host: host.to_owned(),
        port: port.parse()?,
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
            (first.host.as_str(), first.port, first.last),
            ("127.0.0.1", 7001, 5460)
        );
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
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "x",
            "a 1:2 master - 0 0 1 connected zz",
            "a :x master - 0 0 1 connected 0-16383",
        ] {
            assert!(owner(text, 0).is_err(), "{text:?}");
        }
    }
}

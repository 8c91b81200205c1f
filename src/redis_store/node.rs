//! A cluster walk's steps, each on the one master that `topology` names, through
//! plain connections of the walk's own: the cluster client routes by address only
//! to nodes it already knows as masters, which after a failover it learns late.
//!
//! A step is given the cluster's view (`CLUSTER NODES` through the cluster
//! client, which follows the topology), reads the chosen master's own view, and
//! scans only if that master still serves the slot. The keys it finds are
//! removed on that master, one `UNLINK` each in one pipeline (they lie in many
//! slots); a node that is no longer their master answers `MOVED`, the step
//! fails, and it is retried against the new topology. When the master's scan is
//! complete, its own view is read again: the run counts as covered only if it is
//! unchanged. The fingerprint of a run also covers the server's `run_id`, so a
//! master restarted in place (a new process, a new hash seed) starts over too.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo};

use crate::error::BoxError;
use crate::remote::store::{ScanCursor, ScanStep};

use super::topology::{self, Owner, SLOTS};

/// How long connecting to a node, or one command on it, may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(1);

type Address = (String, u16);

/// Connections to single nodes with the cluster's credentials and TLS.
pub(super) struct Nodes {
    base: ConnectionInfo,
    /// The host of a node whose view lists no IP for it (a cluster of one node
    /// that never met another): the first configured node's.
    fallback_host: String,
    conns: Arc<Mutex<HashMap<Address, MultiplexedConnection>>>,
}

impl Nodes {
    /// Nodes reached like `base` (the first configured node).
    pub(super) fn new(base: ConnectionInfo) -> Self {
        let fallback_host = match base.addr() {
            ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
            _ => String::new(),
        };
        Nodes {
            base,
            fallback_host,
            conns: Arc::default(),
        }
    }

    /// One step of removing the keys that match `pattern`, from `cursor`, given
    /// the cluster's view (`CLUSTER NODES` from any node).
    pub(super) async fn step(
        &self,
        view: &str,
        pattern: &str,
        cursor: ScanCursor,
    ) -> Result<ScanStep, BoxError> {
        let candidate = topology::owner(view, cursor.slot)?;
        let host = candidate.host.unwrap_or_else(|| self.fallback_host.clone());
        let address = (host, candidate.port);
        let mut conn = self.connect(&address).await?;
        let result = async {
            let owner = own_run(&mut conn, cursor.slot).await?;
            // Another node, or the same node with another run: its scan starts over.
            let position = if owner.fingerprint == cursor.node {
                cursor.position
            } else {
                0
            };
            let (next, keys) = super::scan(&mut conn, pattern, position).await?;
            let mut deleted = 0;
            if !keys.is_empty() {
                let mut unlink = redis::pipe();
                for key in &keys {
                    unlink.cmd("UNLINK").arg(key);
                }
                let each: Vec<u64> = unlink.query_async(&mut conn).await?;
                deleted = each.iter().sum();
            }
            let next = if next != 0 {
                Some(ScanCursor {
                    slot: cursor.slot,
                    node: owner.fingerprint,
                    position: next,
                })
            } else if own_run(&mut conn, cursor.slot).await?.fingerprint != owner.fingerprint {
                // The run changed during the scan: scan whoever serves it now.
                Some(ScanCursor {
                    slot: cursor.slot,
                    node: 0,
                    position: 0,
                })
            } else if u32::from(owner.last) + 1 < SLOTS {
                Some(ScanCursor {
                    slot: owner.last + 1,
                    node: 0,
                    position: 0,
                })
            } else {
                None
            };
            Ok::<_, BoxError>(ScanStep { deleted, next })
        };
        result.await.inspect_err(|_| self.forget(&address))
    }

    /// A connection to `address`, made in a task of its own: a step that gives
    /// up (its call timed out) leaves the attempt running, and the next step
    /// finds the connection made.
    async fn connect(&self, address: &Address) -> Result<MultiplexedConnection, BoxError> {
        if let Some(conn) = self.lock().get(address) {
            return Ok(conn.clone());
        }
        let (host, port) = address.clone();
        let addr = match self.base.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let client = Client::open(self.base.clone().set_addr(addr))?;
        let (conns, address) = (Arc::clone(&self.conns), address.clone());
        let made = tokio::spawn(async move {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(NODE_TIMEOUT))
                .set_response_timeout(Some(NODE_TIMEOUT));
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(address, conn.clone());
            Ok::<_, redis::RedisError>(conn)
        });
        Ok(made.await??)
    }

    /// Drops the connection to `address` (after it failed: a multiplexed
    /// connection does not reconnect by itself).
    fn forget(&self, address: &Address) {
        self.lock().remove(address);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Address, MultiplexedConnection>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The run from `slot` that the node on `conn` serves, by its own view, with a
/// fingerprint that also covers its process (`run_id`): an error if it does not
/// serve `slot` (it was demoted, or the slot moved).
async fn own_run(conn: &mut MultiplexedConnection, slot: u16) -> Result<Owner, BoxError> {
    let (view, server): (String, String) = redis::pipe()
        .cmd("CLUSTER")
        .arg("NODES")
        .cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await?;
    let mut owner = topology::owner(&view, slot)?;
    if !owner.myself {
        return Err(format!("the node scanned no longer serves slot {slot}").into());
    }
    let run_id = server
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .ok_or("INFO server gave no run_id")?;
    let mut hasher = DefaultHasher::new();
    (owner.fingerprint, run_id.trim()).hash(&mut hasher);
    owner.fingerprint = hasher.finish() | 1;
    Ok(owner)
}

//! A cluster walk's steps, each on the one node that `CLUSTER NODES` names
//! (see `topology`), through a plain connection to that node: the cluster client
//! only routes by address to nodes it already knows as masters, which after a
//! failover it learns late. The keys a step finds are removed on the node that
//! holds them, one `UNLINK` each in one pipeline (they lie in many slots); a node
//! that is no longer their master answers `MOVED`, and the step fails and is
//! retried against the new topology.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo};

use crate::error::BoxError;
use crate::remote::store::{ScanCursor, ScanStep};

use super::topology::{self, SLOTS};

/// How long connecting to a node, or one command on it, may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections to single nodes with the cluster's credentials and TLS, the last
/// one kept (a walk scans one node for many steps, then the next).
pub(super) struct Nodes {
    base: ConnectionInfo,
    last: Mutex<Option<((String, u16), MultiplexedConnection)>>,
}

impl Nodes {
    pub(super) fn new(base: ConnectionInfo) -> Self {
        Nodes {
            base,
            last: Mutex::new(None),
        }
    }

    /// One step of removing the keys that match `pattern`, from `cursor`, given
    /// the text of `CLUSTER NODES`.
    pub(super) async fn step(
        &self,
        nodes: &str,
        pattern: &str,
        cursor: ScanCursor,
    ) -> Result<ScanStep, BoxError> {
        let owner = topology::owner(nodes, cursor.slot)?;
        // Another node, or the same node with other slots: its scan starts over.
        let position = if owner.fingerprint == cursor.node {
            cursor.position
        } else {
            0
        };
        let mut conn = self.connect(&owner.host, owner.port).await?;
        let scanned = async {
            let (next, keys) = super::scan(&mut conn, pattern, position).await?;
            let mut removed = 0;
            if !keys.is_empty() {
                let mut unlink = redis::pipe();
                for key in &keys {
                    unlink.cmd("UNLINK").arg(key);
                }
                let each: Vec<u64> = unlink.query_async(&mut conn).await?;
                removed = each.iter().sum();
            }
            Ok::<_, BoxError>((next, removed))
        };
        let (next, deleted) = scanned.await.inspect_err(|_| self.forget())?;
        let next = if next != 0 {
            Some(ScanCursor {
                slot: cursor.slot,
                node: owner.fingerprint,
                position: next,
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
        Ok(ScanStep { deleted, next })
    }

    /// A connection to `host:port`.
    async fn connect(&self, host: &str, port: u16) -> Result<MultiplexedConnection, BoxError> {
        let address = (host.to_owned(), port);
        if let Some((at, conn)) = &*self.lock() {
            if *at == address {
                return Ok(conn.clone());
            }
        }
        let addr = match self.base.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let client = Client::open(self.base.clone().set_addr(addr))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(NODE_TIMEOUT))
            .set_response_timeout(Some(NODE_TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.lock() = Some((address, conn.clone()));
        Ok(conn)
    }

    /// Drops the kept connection (after it failed: a multiplexed connection does
    /// not reconnect by itself).
    fn forget(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<((String, u16), MultiplexedConnection)>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

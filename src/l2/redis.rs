//! [`RemoteStore`] on Redis: standalone through a reconnecting `ConnectionManager`,
//! or a Redis Cluster through the async cluster client.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Client, Cmd};
use tokio::sync::OnceCell;

use crate::error::{BoxError, Error};
use crate::l2::RemoteStore;

/// How many keys one `SCAN` step asks for, and one `UNLINK` removes.
const SCAN_BATCH: usize = 1000;

/// Redis as the shared tier.
///
/// Connections are made on first use, in the background of a read: a server that
/// is down (or a wrong password) is an L2 failure like any other — counted in
/// [`Stats::l2_errors`](crate::Stats::l2_errors), logged with the server's reason
/// at debug level, and subject to the circuit breaker — never a failed read. Call
/// [`RedisStore::ping`] at start-up to fail fast on a bad URL or credentials.
/// AUTH comes from the URL (`redis://user:password@host:port/db`). With the `tls`
/// feature, `rediss://` URLs connect over TLS, verified against the system's roots;
/// for a private CA, build the `redis::Client` yourself
/// (`Client::build_with_tls`) and use [`RedisStore::from_client`].
pub struct RedisStore {
    target: Target,
}

enum Target {
    Standalone {
        client: Box<Client>,
        conn: OnceCell<ConnectionManager>,
    },
    Cluster {
        client: Box<ClusterClient>,
        conn: OnceCell<ClusterConnection>,
    },
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.target {
            Target::Standalone { .. } => "standalone",
            Target::Cluster { .. } => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A standalone server (`redis://[user:password@]host:port[/db]`). Only the URL is
    /// checked here; the connection is made on first use.
    pub fn standalone(url: &str) -> Result<Self, Error> {
        install_tls_provider();
        let client = Client::open(url).map_err(|e| Error::Config(format!("redis url: {e}")))?;
        Ok(Self::from_client(client))
    }

    /// A standalone server through a client you configured (TLS certificates, ...).
    pub fn from_client(client: Client) -> Self {
        install_tls_provider();
        RedisStore {
            target: Target::Standalone {
                client: Box::new(client),
                conn: OnceCell::new(),
            },
        }
    }

    /// A Redis Cluster, from the URLs of some of its nodes.
    pub fn cluster<S: AsRef<str>>(urls: &[S]) -> Result<Self, Error> {
        install_tls_provider();
        let urls: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        let client = ClusterClient::builder(urls)
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .retries(1)
            .build()
            .map_err(|e| Error::Config(format!("redis cluster urls: {e}")))?;
        Ok(RedisStore {
            target: Target::Cluster {
                client: Box::new(client),
                conn: OnceCell::new(),
            },
        })
    }

    /// Connects (if not yet connected) and sends `PING`: the server's error, such as
    /// a refused connection or a wrong password, comes back as it is.
    pub async fn ping(&self) -> Result<(), BoxError> {
        match self.connection().await? {
            Conn::Standalone(mut c) => redis::cmd("PING").query_async::<()>(&mut c).await?,
            Conn::Cluster(mut c) => redis::cmd("PING").query_async::<()>(&mut c).await?,
        }
        Ok(())
    }

    async fn connection(&self) -> Result<Conn, BoxError> {
        Ok(match &self.target {
            Target::Standalone { client, conn } => {
                let manager = conn
                    .get_or_try_init(|| {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(Duration::from_secs(1)))
                            .set_response_timeout(Some(Duration::from_secs(1)))
                            .set_number_of_retries(1)
                            .set_max_delay(Duration::from_millis(500));
                        ConnectionManager::new_with_config(Client::clone(client), config)
                    })
                    .await?;
                Conn::Standalone(manager.clone())
            }
            Target::Cluster { client, conn } => {
                let connection = conn
                    .get_or_try_init(|| client.get_async_connection())
                    .await?;
                Conn::Cluster(connection.clone())
            }
        })
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BoxError> {
        Ok(match self.connection().await? {
            Conn::Standalone(mut c) => cmd.query_async(&mut c).await?,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await?,
        })
    }

    async fn unlink(&self, keys: &[String]) -> Result<(), BoxError> {
        for batch in keys.chunks(SCAN_BATCH) {
            self.query::<()>(redis::cmd("UNLINK").arg(batch)).await?;
        }
        Ok(())
    }

    /// `SCAN` + `UNLINK` over one node's keyspace.
    async fn delete_matching_on<C: ConnectionLike>(
        &self,
        conn: &mut C,
        pattern: &str,
    ) -> Result<u64, BoxError> {
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(conn)
                .await?;
            if !keys.is_empty() {
                self.unlink(&keys).await?;
                deleted += keys.len() as u64;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    async fn delete_matching_all(&self, pattern: &str) -> Result<u64, BoxError> {
        match self.connection().await? {
            Conn::Standalone(mut c) => self.delete_matching_on(&mut c, pattern).await,
            Conn::Cluster(c) => {
                let mut deleted = 0;
                for (host, port) in masters(&mut c.clone()).await? {
                    let mut node = NodeConn {
                        conn: c.clone(),
                        route: RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host,
                            port,
                        }),
                    };
                    deleted += self.delete_matching_on(&mut node, pattern).await?;
                }
                Ok(deleted)
            }
        }
    }
}

/// rustls needs a process-wide crypto provider; install ring's unless the
/// application already chose one.
fn install_tls_provider() {
    #[cfg(feature = "tls")]
    {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The masters of a cluster, from `CLUSTER NODES`.
async fn masters(conn: &mut ClusterConnection) -> Result<Vec<(String, u16)>, BoxError> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    let mut out = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
            continue;
        }
        let address = address.split(['@', ',']).next().unwrap_or_default();
        if let Some((host, port)) = address.rsplit_once(':') {
            out.push((host.to_owned(), port.parse()?));
        }
    }
    if out.is_empty() {
        return Err("CLUSTER NODES listed no reachable master".into());
    }
    Ok(out)
}

/// A cluster connection whose commands all go to one node (for `SCAN`).
struct NodeConn {
    conn: ClusterConnection,
    route: RoutingInfo,
}

impl ConnectionLike for NodeConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, redis::Value> {
        let route = self.route.clone();
        Box::pin(async move { self.conn.route_command(cmd.clone(), route).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.conn.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl RemoteStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        async move { self.query(redis::cmd("GET").arg(key)).await }.boxed()
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, BoxError>> {
        async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            // The cluster client splits MGET by slot and reassembles the order.
            self.query(redis::cmd("MGET").arg(keys)).await
        }
        .boxed()
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            self.query::<()>(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(millis))
                .await
        }
        .boxed()
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), BoxError>> {
        self.unlink(keys).boxed()
    }

    fn delete_matching<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<u64, BoxError>> {
        self.delete_matching_all(pattern).boxed()
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            self.query::<()>(redis::cmd("PUBLISH").arg(channel).arg(message))
                .await
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Vec<u8>>, BoxError>> {
        async move {
            let Target::Standalone { client, .. } = &self.target else {
                return Err("subscribing through a Redis Cluster is not supported yet".into());
            };
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            let messages = pubsub
                .into_on_message()
                .map(|msg| msg.get_payload_bytes().to_vec());
            Ok(messages.boxed())
        }
        .boxed()
    }
}

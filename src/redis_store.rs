//! [`RemoteStore`] on Redis: standalone through a reconnecting `ConnectionManager`,
//! or a Redis Cluster through the async cluster client.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::future::Shared as SharedFuture;
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Client, Cmd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{BoxError, ConfigError};
use crate::remote::store::{new_identity, RemoteStore, ScanCursor, ScanStep};

mod node;
mod pubsub;
mod scripts;
mod tls;
mod topology;

use self::node::Nodes;
use self::pubsub::RedisHub;
use self::scripts::{GET_OR_RESERVE, RELEASE, REPLACE, STAMP_TAGS};

/// How many keys one `SCAN` step asks for, and one `UNLINK` removes.
const SCAN_BATCH: usize = 1000;

/// Redis as the shared tier, and as the invalidation bus.
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
///
/// Cloning is cheap, and clones share one connection and one pub/sub
/// subscription: build one store per Redis and hand it to every cache with
/// [`TieredCacheBuilder::redis`](crate::TieredCacheBuilder::redis).
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    target: Target,
    /// The connection in use, with the number of the attempt that made it.
    conn: Mutex<Option<(u64, Conn)>>,
    connecting: Mutex<Option<(u64, Attempt)>>,
    /// Where pub/sub connections go: the server, or each node of a cluster in turn
    /// (a cluster forwards every `PUBLISH` to all its nodes).
    pubsub: Vec<Client>,
    hub: RedisHub,
    /// A cluster's nodes one by one, for walks.
    nodes: Option<Nodes>,
    /// This store's identity: the caches on it (and its clones) share one
    /// circuit breaker.
    identity: u64,
}

#[derive(Clone)]
enum Target {
    Standalone(Box<Client>),
    Cluster(Box<ClusterClient>),
}

/// How long a connection attempt may take (TLS and AUTH across a network
/// included); it runs apart from the calls waiting for it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Numbers connection attempts, so that a failed one forgets only itself.
static CONNECT_ATTEMPTS: AtomicU64 = AtomicU64::new(0);

type Attempt = SharedFuture<BoxFuture<'static, Result<Conn, Arc<str>>>>;

/// Makes the connection of `target`.
async fn connect(target: Target) -> Result<Conn, Arc<str>> {
    let made = match target {
        Target::Standalone(client) => {
            tls::ready_for(&client)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(Duration::from_secs(1)))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let connect = ConnectionManager::new_with_config(*client, config);
            tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map(|r| r.map(Conn::Standalone))
        }
        Target::Cluster(client) => {
            tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
                .await
                .map(|r| r.map(Conn::Cluster))
        }
    };
    match made {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(Arc::from(error.to_string())),
        Err(_) => Err(Arc::from(format!(
            "connecting took longer than {CONNECT_TIMEOUT:?}"
        ))),
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.shared.target {
            Target::Standalone(_) => "standalone",
            Target::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    fn new(target: Target, pubsub: Vec<Client>) -> Self {
        let nodes = match (&target, pubsub.first()) {
            (Target::Cluster(_), Some(any)) => Some(Nodes::new(any.get_connection_info().clone())),
            _ => None,
        };
        RedisStore {
            shared: Arc::new(Shared {
                target,
                conn: Mutex::new(None),
                connecting: Mutex::new(None),
                pubsub,
                hub: RedisHub::default(),
                nodes,
                identity: new_identity(),
            }),
        }
    }

    /// A standalone server (`redis://[user:password@]host:port[/db]`). Only the URL is
    /// checked here; the connection is made on first use.
    ///
    /// A `rediss://` URL (feature `tls`) needs a rustls crypto provider for
    /// the process, which `tiered` never installs (see
    /// [`install_ring_provider`](Self::install_ring_provider)): without one,
    /// this is an error that says so.
    pub fn standalone(url: &str) -> Result<Self, ConfigError> {
        let client = Client::open(url).map_err(|e| ConfigError::new(format!("redis url: {e}")))?;
        tls::ready_for(&client).map_err(ConfigError::new)?;
        Ok(Self::from_client(client))
    }

    /// Installs ring as the process's rustls crypto provider, for `rediss://`
    /// (feature `tls-ring`). `tiered` never installs a provider itself: an
    /// application on aws-lc-rs (rustls's default) installs that one, or has
    /// it picked by rustls when it is the only one enabled. Returns `false`
    /// if the process already has a provider (which stays).
    #[cfg(feature = "tls-ring")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls-ring")))]
    pub fn install_ring_provider() -> bool {
        rustls::crypto::ring::default_provider()
            .install_default()
            .is_ok()
    }

    /// A standalone server through a client you configured (TLS certificates, ...).
    /// A TLS client without a crypto provider for the process fails each
    /// connection with an error that says so (see
    /// [`standalone`](Self::standalone)).
    pub fn from_client(client: Client) -> Self {
        let pubsub = vec![client.clone()];
        Self::new(Target::Standalone(Box::new(client)), pubsub)
    }

    /// A Redis Cluster, from the URLs of some of its nodes.
    pub fn cluster<S: AsRef<str>>(urls: &[S]) -> Result<Self, ConfigError> {
        let urls: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        let client = ClusterClient::builder(urls.clone())
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1))
            .retries(1)
            .build()
            .map_err(|e| ConfigError::new(format!("redis cluster urls: {e}")))?;
        let pubsub = urls
            .iter()
            .map(|url| Client::open(*url))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::new(format!("redis cluster urls: {e}")))?;
        for client in &pubsub {
            tls::ready_for(client).map_err(ConfigError::new)?;
        }
        Ok(Self::new(Target::Cluster(Box::new(client)), pubsub))
    }

    /// Connects (if not yet connected) and sends `PING`: the server's error, such as
    /// a refused connection or a wrong password, comes back as it is.
    ///
    /// A cluster answers only when every master `CLUSTER SLOTS` names answers
    /// (each pinged by its address) and every slot is served.
    ///
    /// A cluster's client learns a failover's new master only from a
    /// slot-routed command that finds no connection, which a dead master's
    /// half-open one does not give: a cluster `PING` that fails (or is given
    /// up on) forgets its connection, and the next call makes a new one, which
    /// reads the topology afresh. A breaker held open by a dead master, whose
    /// probes are its only calls, thus sees the replica take over.
    pub async fn ping(&self) -> Result<(), BoxError> {
        match self.numbered_connection().await? {
            (_, Conn::Standalone(mut c)) => redis::cmd("PING").query_async::<()>(&mut c).await?,
            (id, Conn::Cluster(mut c)) => {
                let forget = ForgetOnDrop(self, Some(id));
                ping_every_master(&mut c).await?;
                forget.disarm();
            }
        }
        Ok(())
    }

    /// The connection, made once in a task of its own: a caller whose call times
    /// out stops waiting, but the connection attempt goes on (under its own
    /// [`CONNECT_TIMEOUT`]) and the next call finds it made. A failed attempt is
    /// forgotten, and the next call starts another.
    async fn connection(&self) -> Result<Conn, BoxError> {
        self.numbered_connection().await.map(|(_, conn)| conn)
    }

    /// [`connection`](Self::connection), with the number of the attempt that
    /// made it (for [`forget`](Self::forget)).
    async fn numbered_connection(&self) -> Result<(u64, Conn), BoxError> {
        if let Some(made) = lock(&self.shared.conn).clone() {
            return Ok(made);
        }
        let (id, attempt) = {
            let mut slot = lock(&self.shared.connecting);
            if let Some(made) = lock(&self.shared.conn).clone() {
                return Ok(made);
            }
            match &*slot {
                Some((id, attempt)) => (*id, attempt.clone()),
                None => {
                    let id = CONNECT_ATTEMPTS.fetch_add(1, Ordering::Relaxed);
                    let task = tokio::spawn(connect(self.shared.target.clone()));
                    let attempt = task
                        .map(|joined| match joined {
                            Ok(result) => result,
                            Err(panic) => Err(Arc::from(panic.to_string())),
                        })
                        .boxed()
                        .shared();
                    *slot = Some((id, attempt.clone()));
                    (id, attempt)
                }
            }
        };
        let made = attempt.await;
        let mut slot = lock(&self.shared.connecting);
        let current = slot.as_ref().is_some_and(|(current, _)| *current == id);
        match made {
            Ok(conn) => {
                // Kept unless forgotten meanwhile (a newer attempt's, then).
                let mut kept = lock(&self.shared.conn);
                if current && kept.is_none() {
                    *kept = Some((id, conn.clone()));
                }
                Ok((id, conn))
            }
            Err(error) => {
                if current {
                    *slot = None;
                }
                Err(error.to_string().into())
            }
        }
    }

    /// Forgets connection `id` (and its attempt), if it is still the one in
    /// use: the next call makes a new one.
    fn forget(&self, id: u64) {
        let mut slot = lock(&self.shared.connecting);
        if slot.as_ref().is_some_and(|(current, _)| *current == id) {
            *slot = None;
        }
        let mut kept = lock(&self.shared.conn);
        if kept.as_ref().is_some_and(|(current, _)| *current == id) {
            *kept = None;
        }
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, BoxError> {
        Ok(match self.connection().await? {
            Conn::Standalone(mut c) => cmd.query_async(&mut c).await?,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await?,
        })
    }

    /// Runs a script (`EVALSHA`, loading it first where the server lacks it).
    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BoxError> {
        Ok(match self.connection().await? {
            Conn::Standalone(mut c) => script.invoke_async(&mut c).await?,
            Conn::Cluster(mut c) => script.invoke_async(&mut c).await?,
        })
    }

    /// `UNLINK`s `keys` (any bytes); returns how many existed.
    ///
    /// On a cluster, one `UNLINK` per slot, sent together: redis-rs splits a
    /// multi-slot `UNLINK` by node and, for a slot whose master it has no
    /// connection to (in a failover), silently leaves that part out and
    /// answers with the sum of the rest, so a deletion that missed a node
    /// would count as done. A single-slot command has one node, or fails.
    async fn unlink<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<u64, BoxError> {
        let mut removed = 0;
        if matches!(self.shared.target, Target::Cluster(_)) {
            let mut by_slot: HashMap<Slot, Vec<&[u8]>> = HashMap::new();
            for key in keys {
                let key = key.as_ref();
                by_slot.entry(Slot::for_key(key)).or_default().push(key);
            }
            // A slot's keys in batches too (hash-tagged keys share one).
            let batches: Vec<&[&[u8]]> = by_slot
                .values()
                .flat_map(|keys| keys.chunks(SCAN_BATCH))
                .collect();
            for slots in batches.chunks(SCAN_BATCH) {
                let unlinks = slots.iter().map(|keys| async move {
                    self.query::<u64>(redis::cmd("UNLINK").arg(keys)).await
                });
                removed += futures_util::future::try_join_all(unlinks)
                    .await?
                    .into_iter()
                    .sum::<u64>();
            }
            return Ok(removed);
        }
        for batch in keys.chunks(SCAN_BATCH) {
            let mut unlink = redis::cmd("UNLINK");
            for key in batch {
                unlink.arg(key.as_ref());
            }
            removed += self.query::<u64>(&unlink).await?;
        }
        Ok(removed)
    }

    async fn delete_matching_step(
        &self,
        pattern: &str,
        cursor: ScanCursor,
    ) -> Result<ScanStep, BoxError> {
        let (next, keys) = match self.connection().await? {
            Conn::Standalone(mut c) => scan(&mut c, pattern, cursor.position).await?,
            Conn::Cluster(mut c) => {
                let view: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut c)
                    .await?;
                let walker = self
                    .shared
                    .nodes
                    .as_ref()
                    .ok_or("a cluster store without its nodes")?;
                return walker.step(&view, pattern, cursor).await;
            }
        };
        Ok(ScanStep {
            deleted: self.unlink(&keys).await?,
            next: (next != 0).then_some(ScanCursor::at(next)),
        })
    }
}

/// One `SCAN MATCH` step on one server: the next position and the keys found,
/// as bytes (another client may have written a key that is not UTF-8).
async fn scan<C: ConnectionLike>(
    conn: &mut C,
    pattern: &str,
    position: u64,
) -> Result<(u64, Vec<Vec<u8>>), BoxError> {
    Ok(redis::cmd("SCAN")
        .arg(position)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_BATCH)
        .query_async(conn)
        .await?)
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
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

    fn get_or_reserve<'a>(
        &'a self,
        key: &'a str,
        reservation: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        async move {
            let mut script = GET_OR_RESERVE.prepare_invoke();
            script.key(key).arg(reservation).arg(millis(ttl));
            self.eval(&script).await
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
            self.query::<()>(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(millis(ttl)),
            )
            .await
        }
        .boxed()
    }

    fn replace<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        async move {
            let mut script = REPLACE.prepare_invoke();
            script.key(key).arg(expected).arg(value).arg(millis(ttl));
            Ok(self.eval::<i64>(&script).await? == 1)
        }
        .boxed()
    }

    fn lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        async move {
            let set = redis::cmd("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .clone();
            let reply: Option<String> = self.query(&set).await?;
            Ok(reply.is_some())
        }
        .boxed()
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a [u8]) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            let mut script = RELEASE.prepare_invoke();
            script.key(key).arg(token);
            self.eval::<i64>(&script).await.map(|_| ())
        }
        .boxed()
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), BoxError>> {
        async move { self.unlink(keys).await.map(drop) }.boxed()
    }

    fn stamp_tags<'a>(
        &'a self,
        clock: &'a str,
        tags: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BoxError>> {
        async move {
            let mut script = STAMP_TAGS.prepare_invoke();
            script.key(clock);
            for tag in tags {
                script.key(tag);
            }
            self.eval::<u64>(&script).await
        }
        .boxed()
    }

    fn stamps_tags(&self) -> bool {
        true
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        RedisStore::ping(self).boxed()
    }

    fn identity(&self) -> Option<u64> {
        Some(self.shared.identity)
    }

    fn delete_matching<'a>(
        &'a self,
        pattern: &'a str,
        cursor: ScanCursor,
    ) -> BoxFuture<'a, Result<ScanStep, BoxError>> {
        self.delete_matching_step(pattern, cursor).boxed()
    }
}

/// A TTL as Redis `PX` milliseconds: at least 1, at most [`Ttl::MAX`](crate::policy::Ttl::MAX)
/// (Redis refuses an expiry past `i64` milliseconds).
fn millis(ttl: Duration) -> u64 {
    let ttl = ttl.min(crate::policy::Ttl::MAX);
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `PING` on a cluster, answered only when every master answers and every
/// slot is served: one `PING` to each master `CLUSTER SLOTS` names, by its
/// address, on the client's connection to it. redis-rs's own `PING` fans out
/// to the masters it has a connection to, leaving out silently one it has
/// lost; a slot-routed command whose node has no connection goes to some
/// other node (which answers `PING`); a command by address has that node's
/// connection, or fails.
async fn ping_every_master(conn: &mut ClusterConnection) -> Result<(), BoxError> {
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut served = 0;
    let mut masters: Vec<(String, u16)> = Vec::new();
    // Masters named without a usable host (a node that never learned its own
    // address, an unknown endpoint): redis-rs keys their connections by the
    // answering node's host, which this does not know. They are pinged by
    // their first slot instead, which redis-rs may send elsewhere when it has
    // no connection: a weaker check, but not one that fails forever.
    let mut unnamed: Vec<u16> = Vec::new();
    for range in &ranges {
        let redis::Value::Array(fields) = range else {
            continue;
        };
        let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end))) =
            (fields.first(), fields.get(1))
        else {
            continue;
        };
        served += end - start + 1;
        let master = match fields.get(2) {
            Some(redis::Value::Array(node)) => match (node.first(), node.get(1)) {
                (Some(redis::Value::BulkString(host)), Some(redis::Value::Int(port))) => {
                    String::from_utf8(host.clone())
                        .ok()
                        .filter(|host| !matches!(host.as_str(), "" | "?" | "0.0.0.0" | "::"))
                        .zip(u16::try_from(*port).ok())
                }
                _ => None,
            },
            _ => None,
        };
        match master {
            Some(master) if !masters.contains(&master) => masters.push(master),
            Some(_) => {}
            None => unnamed.extend(u16::try_from(*start).ok()),
        }
    }
    if served != i64::from(topology::SLOTS) {
        return Err(format!("the cluster serves {served} of {} slots", topology::SLOTS).into());
    }
    let by_slot = unnamed.into_iter().filter_map(|slot| {
        let route = Route::with_slot(Slot::new(slot)?, SlotAddr::Master);
        Some(SingleNodeRoutingInfo::SpecificNode(route))
    });
    let targets = masters
        .into_iter()
        .map(|(host, port)| SingleNodeRoutingInfo::ByAddress { host, port })
        .chain(by_slot);
    let pings = targets.map(|master| {
        let mut conn = conn.clone();
        async move {
            conn.route_command(redis::cmd("PING"), RoutingInfo::SingleNode(master))
                .await
        }
    });
    futures_util::future::try_join_all(pings).await?;
    Ok(())
}

/// Forgets a cluster connection whose `PING` failed or was given up on.
struct ForgetOnDrop<'a>(&'a RedisStore, Option<u64>);

impl ForgetOnDrop<'_> {
    fn disarm(mut self) {
        self.1 = None;
    }
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.1 {
            self.0.forget(id);
        }
    }
}

/// `mutex`'s guard, whether or not a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

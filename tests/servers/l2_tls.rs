//! Redis over TLS (feature `tls`), against a redis-server that only speaks TLS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use redis::TlsCertificates;
use tiered::{BoxError, RedisStore, TieredCache};

use crate::support::Redis;

#[tokio::test]
async fn rediss_with_a_private_ca_serves_l2_hits_and_plain_urls_fail_softly() {
    let (redis, ca) = Redis::start_tls();
    let store = || {
        let certs = TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        };
        RedisStore::from_client(redis::Client::build_with_tls(redis.url(), certs).unwrap())
    };
    store()
        .ping()
        .await
        .expect("a TLS connection verified against the test CA");

    let loads = Arc::new(AtomicUsize::new(0));
    let instance = |store: RedisStore| {
        let loads = loads.clone();
        TieredCache::<String, u64>::builder("tls")
            .l2(store)
            .loader_fn(move |_k: String| {
                loads.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, BoxError>(Some(42)) }
            })
            .build()
            .unwrap()
    };
    let writer = instance(store());
    let reader = instance(store());
    assert_eq!(writer.get("k").await.unwrap(), Some(42));
    assert_eq!(reader.get("k").await.unwrap(), Some(42));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(reader.stats().l2.hits, 1);

    // The system roots do not know the test CA: the handshake fails, the read does not.
    let untrusted = instance(RedisStore::standalone(redis.url()).unwrap());
    assert_eq!(untrusted.get("k").await.unwrap(), Some(42));
    assert!(untrusted.stats().l2_errors >= 1);
}

//! TLS to Redis needs a rustls crypto provider for the process. `tiered`
//! never installs one: the application chooses (ring, aws-lc-rs, or another),
//! and with `tls-ring`, [`RedisStore::install_ring_provider`](super::RedisStore::install_ring_provider)
//! is the one-line choice of ring. What this module adds is a clear error, in
//! place of rustls's panic, when a TLS connection is made and no provider
//! can be found.

use redis::{Client, ConnectionAddr};

/// Whether `client` connects over TLS.
pub(crate) fn is_tls(client: &Client) -> bool {
    matches!(
        client.get_connection_info().addr(),
        ConnectionAddr::TcpTls { .. }
    )
}

/// What a TLS connection needs of the process: `Err` says what is missing.
/// rustls takes the installed provider, else installs the one its features
/// enable if exactly one is, else panics. This runs that choice once, where
/// the panic is caught (its message still goes to the panic hook), before
/// redis-rs runs it where it would not be; a failed probe is not repeated
/// (rustls's features do not change), but a provider installed later is
/// found. Built with `panic = "abort"`, nothing is probed: TLS needs a
/// provider installed beforehand.
#[cfg(feature = "tls")]
pub(crate) fn ready() -> Result<(), String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static PROBE_FAILED: AtomicBool = AtomicBool::new(false);
    if rustls::crypto::CryptoProvider::get_default().is_some() {
        return Ok(());
    }
    let missing = || {
        "TLS to Redis needs a rustls crypto provider, and none is installed (and rustls \
         cannot pick one: none or several of its providers are enabled). Install one \
         before connecting: `rustls::crypto::ring::default_provider().install_default()`, \
         aws-lc-rs's, or `RedisStore::install_ring_provider()` with feature `tls-ring`"
            .to_owned()
    };
    if cfg!(panic = "abort") || PROBE_FAILED.load(Ordering::Relaxed) {
        return Err(missing());
    }
    std::panic::catch_unwind(|| drop(rustls::ClientConfig::builder())).map_err(|_| {
        PROBE_FAILED.store(true, Ordering::Relaxed);
        missing()
    })
}

/// Without the `tls` feature, redis-rs refuses `rediss://` itself.
#[cfg(not(feature = "tls"))]
pub(crate) fn ready() -> Result<(), String> {
    Ok(())
}

/// [`ready`], for a client that may not use TLS.
pub(crate) fn ready_for(client: &Client) -> Result<(), String> {
    if is_tls(client) {
        ready()
    } else {
        Ok(())
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use rustls::crypto::CryptoProvider;

    use crate::redis_store::RedisStore;

    /// Plain stores leave the process without a provider (one test: the
    /// provider is process-wide).
    fn plain_stores_install_no_provider() {
        RedisStore::standalone("redis://127.0.0.1:1").unwrap();
        RedisStore::cluster(&["redis://127.0.0.1:1", "redis://127.0.0.1:2"]).unwrap();
        RedisStore::from_client(redis::Client::open("redis://127.0.0.1:1").unwrap());
        assert!(
            CryptoProvider::get_default().is_none(),
            "the application chooses the process's provider"
        );
    }

    /// Without a provider rustls can pick (`tls` alone: no provider enabled),
    /// a `rediss://` store is a clear error, not a panic.
    #[cfg(not(feature = "tls-ring"))]
    #[tokio::test]
    async fn tiered_installs_no_provider_and_says_when_one_is_missing() {
        plain_stores_install_no_provider();
        let error = RedisStore::standalone("rediss://127.0.0.1:1").unwrap_err();
        assert!(error.message().contains("crypto provider"), "{error}");
        let cluster = RedisStore::cluster(&["rediss://127.0.0.1:1"]).unwrap_err();
        assert!(cluster.message().contains("crypto provider"), "{cluster}");
        let client = redis::Client::open("rediss://127.0.0.1:1").unwrap();
        let ping = RedisStore::from_client(client).ping().await.unwrap_err();
        assert!(ping.to_string().contains("crypto provider"), "{ping}");
    }

    /// With ring the only provider enabled, rustls picks it when the first
    /// TLS store is made; tiered installs none of its own choice.
    #[cfg(feature = "tls-ring")]
    #[test]
    fn tiered_installs_no_provider_and_rustls_picks_the_only_one() {
        plain_stores_install_no_provider();
        RedisStore::standalone("rediss://127.0.0.1:1").unwrap();
        assert!(CryptoProvider::get_default().is_some());
    }
}

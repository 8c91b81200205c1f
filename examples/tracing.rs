//! The cache's tracing spans, printed by `tracing-subscriber` as each closes:
//! `cargo run --example tracing --features testing`.
//!
//! Every span has target `tiered` and the attributes OpenTelemetry expects
//! (`otel.name`, `otel.kind`, `otel.status_code`, `error.type`,
//! `db.operation.name`): with `tracing-opentelemetry` as a layer instead of
//! the `fmt` one below, they become OTLP spans named `get users`,
//! `load users`, ... (see docs/GUIDE.md, "Tracing").

use std::time::Duration;

use tiered::{BoxError, MemoryStore, TieredCache};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_span_events(FmtSpan::CLOSE)
                .with_target(false),
        )
        // Reads, loads and writes at info; L2 calls at debug.
        .with(Targets::new().with_target("tiered", LevelFilter::DEBUG))
        .init();

    let users = TieredCache::<String, String>::builder("users")
        .l2(MemoryStore::new())
        .trace_keys(true) // off by default: keys may be personal data
        .loader_fn(|id: String| async move {
            tokio::time::sleep(Duration::from_millis(5)).await; // the query
            match id.as_str() {
                "broken" => Err::<Option<String>, BoxError>("the database is down".into()),
                id => Ok(Some(format!("user {id}"))),
            }
        })
        .build()?;

    users.get("7").await?; // cache.read (tier=loader) > cache.l2 + cache.load
    users.get("7").await?; // cache.read (tier=l1, hit=true)
    let _ = users.get("broken").await; // otel.status_code=ERROR
    users.invalidate("7").await; // cache.write (written=applied)
    Ok(())
}

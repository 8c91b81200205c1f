//! The cache's `tracing` spans, named and attributed after OpenTelemetry's
//! conventions (`otel.name`, `otel.kind`, `otel.status_code`, `error.type`,
//! `db.operation.name`, which `tracing-opentelemetry` maps to span names,
//! kinds, statuses and attributes). Every span has target `tiered`:
//!
//! | span | level | when | attributes |
//! |---|---|---|---|
//! | `cache.read` | info | `get`, `get_with`, `get_or_load`, `try_get_with`, `peek`, `get_many*`, `#[cached_tier]` calls | `cache.name`, `cache.operation`, `cache.tier` (`l1`, `l2`, `loader`, `stale`, `shared`, `none`), `cache.hit`, `cache.key` (opt-in) |
//! | `cache.write` | info | `insert*`, `invalidate*`, `flush` | `cache.name`, `cache.operation`, `cache.written` (`applied` or `queued`) |
//! | `cache.refresh` | info | a background refresh (early refresh, stale-while-revalidate) | `cache.name` |
//! | `cache.load` | info | a loader call | `cache.name`, `cache.load.keys`, `cache.load.outcome` |
//! | `cache.l2` | debug | a call to the L2 store | `db.operation.name`, `otel.kind = client` |
//!
//! With no subscriber, or one that filters `tiered` out at info, an L1 hit
//! costs one relaxed load of tracing's global level filter.

use std::fmt::Display;

use tracing::field::Empty;
use tracing::{Level, Span};

/// The target of every span and event of the crate.
pub(crate) const TARGET: &str = "tiered";

/// A read operation's span: `cache` is the cache's name, `op` the method.
#[inline]
pub(crate) fn read(cache: &str, op: &'static str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "cache.read",
        otel.name = %OtelName(op, cache),
        otel.kind = "internal",
        otel.status_code = Empty,
        error.type = Empty,
        cache.name = cache,
        cache.operation = op,
        cache.tier = Empty,
        cache.hit = Empty,
        cache.key = Empty,
    )
}

/// A write operation's span.
#[inline]
pub(crate) fn write(cache: &str, op: &'static str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "cache.write",
        otel.name = %OtelName(op, cache),
        otel.kind = "internal",
        cache.name = cache,
        cache.operation = op,
        cache.written = Empty,
    )
}

/// A background refresh's span: a root of its own (a refresh outlives the
/// read that started it), which follows from the span current when it starts.
pub(crate) fn refresh(cache: &str) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "cache.refresh",
        otel.name = %OtelName("refresh", cache),
        otel.kind = "internal",
        cache.name = cache,
        cache.tier = Empty,
        cache.hit = Empty,
    );
    span.follows_from(Span::current());
    span
}

/// A loader call's span.
#[inline]
pub(crate) fn load(cache: &str, keys: usize) -> Span {
    tracing::info_span!(
        target: TARGET,
        "cache.load",
        otel.name = %OtelName("load", cache),
        otel.kind = "internal",
        otel.status_code = Empty,
        cache.name = cache,
        cache.load.keys = keys,
        cache.load.outcome = Empty,
    )
}

/// An L2 store call's span.
#[inline]
pub(crate) fn l2(op: &'static str) -> Span {
    tracing::debug_span!(
        target: TARGET,
        "cache.l2",
        otel.name = op,
        otel.kind = "client",
        otel.status_code = Empty,
        error.type = Empty,
        db.operation.name = op,
    )
}

/// An L1 hit of a read: a span of its own, made only when a subscriber wants
/// it (the check is one load of tracing's level filter).
#[inline(always)]
pub(crate) fn l1_hit(cache: &str, op: &'static str, key: impl FnOnce() -> Option<String>) {
    if tracing::enabled!(target: TARGET, Level::INFO) {
        l1_hit_span(cache, op, key());
    }
}

#[cold]
#[inline(never)]
fn l1_hit_span(cache: &str, op: &'static str, key: Option<String>) {
    let span = read(cache, op);
    if let Some(key) = key {
        span.record("cache.key", key);
    }
    span.record("cache.tier", "l1");
    span.record("cache.hit", true);
}

/// Records where a read's answer came from on `span` (a no-op on a disabled
/// span).
#[inline]
pub(crate) fn tier(span: &Span, tier: &'static str, hit: bool) {
    if !span.is_disabled() {
        span.record("cache.tier", tier);
        span.record("cache.hit", hit);
    }
}

/// Records a failed operation on `span`: `kind` is its `error.type`.
pub(crate) fn failed(span: &Span, kind: &'static str) {
    if !span.is_disabled() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", kind);
    }
}

/// Records what a write did on `span`.
pub(crate) fn written(span: &Span, written: &crate::observe::Written) {
    if !span.is_disabled() {
        let label = match written {
            crate::observe::Written::Applied => "applied",
            _ => "queued",
        };
        span.record("cache.written", label);
    }
}

/// Records `key` on `span` (when keys are traced).
pub(crate) fn key(span: &Span, key: impl FnOnce() -> String) {
    if !span.is_disabled() {
        span.record("cache.key", key());
    }
}

/// `{op} {cache}`: OpenTelemetry's span name for an operation on a named
/// collection.
struct OtelName<'a>(&'static str, &'a str);

impl Display for OtelName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

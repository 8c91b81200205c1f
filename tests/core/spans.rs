//! The cache's tracing spans, as a subscriber sees them: one `cache.read` per
//! read with the tier it reached and whether it hit, `cache.load` under it,
//! `cache.l2` for store calls, `cache.write` with what a write did; keys only
//! when asked for; failures marked as OpenTelemetry errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tiered::{BoxError, MemoryStore, TieredCache};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A span as the subscriber saw it: its name, its fields (as recorded so
/// far), and its parent's name.
#[derive(Debug, Clone)]
struct Seen {
    id: u64,
    name: &'static str,
    fields: HashMap<String, String>,
    parent: Option<&'static str>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Records every span and every later `record` of its fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Seen>>>);

impl Spans {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|p| p.name());
        self.0.lock().unwrap().push(Seen {
            id: id.into_u64(),
            name: attrs.metadata().name(),
            fields,
            parent,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(span) = spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

thread_local! {
    /// The collector of the test running on this thread, if any.
    static COLLECTOR: std::cell::RefCell<Option<Spans>> = const { std::cell::RefCell::new(None) };
}

/// Hands each span to the collector of the thread it is made on.
struct ToThisThread;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for ToThisThread {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(spans) = COLLECTOR.with(|c| c.borrow().clone()) {
            spans.on_new_span(attrs, id, ctx);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(spans) = COLLECTOR.with(|c| c.borrow().clone()) {
            spans.on_record(id, values, ctx);
        }
    }
}

/// Stops collecting on this thread when dropped.
struct Collecting;

impl Drop for Collecting {
    fn drop(&mut self) {
        COLLECTOR.with(|c| c.borrow_mut().take());
    }
}

/// Records every span made on this thread until the guard drops (the tests
/// run on a current-thread runtime, spawned tasks included). The subscriber
/// is the process's global one, set once: scoped subscribers race with the
/// other tests' threads over tracing's global level filter.
fn recorded() -> (Spans, Collecting) {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(ToThisThread);
        tracing::subscriber::set_global_default(subscriber).expect("the first subscriber");
    });
    let spans = Spans::default();
    COLLECTOR.with(|c| *c.borrow_mut() = Some(spans.clone()));
    (spans, Collecting)
}

fn users(trace_keys: bool) -> TieredCache<String, String> {
    TieredCache::builder("users")
        .l2(MemoryStore::new())
        .trace_keys(trace_keys)
        .loader_fn(|id: String| async move {
            match id.as_str() {
                "broken" => Err::<Option<String>, BoxError>("the database is down".into()),
                id => Ok(Some(format!("user {id}"))),
            }
        })
        .build()
        .unwrap()
}

fn named<'a>(spans: &'a [Seen], name: &str) -> Vec<&'a Seen> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test]
async fn a_read_has_a_span_with_the_tier_it_reached_and_its_load_under_it() {
    let (spans, _guard) = recorded();
    let cache = users(false);
    cache.get("7").await.unwrap();
    let seen = spans.take();
    let reads = named(&seen, "cache.read");
    assert_eq!(reads.len(), 1, "{seen:#?}");
    let read = reads[0];
    assert_eq!(read.field("otel.name"), Some("get users"));
    assert_eq!(read.field("cache.name"), Some("users"));
    assert_eq!(read.field("cache.operation"), Some("get"));
    assert_eq!(read.field("cache.tier"), Some("loader"));
    assert_eq!(read.field("cache.hit"), Some("false"));
    assert_eq!(read.field("cache.key"), None, "no keys unless asked for");
    let loads = named(&seen, "cache.load");
    assert_eq!(loads.len(), 1, "{seen:#?}");
    assert_eq!(
        loads[0].parent,
        Some("cache.read"),
        "the load is under the read"
    );
    assert_eq!(loads[0].field("cache.load.outcome"), Some("value"));
    let l2 = named(&seen, "cache.l2");
    assert!(!l2.is_empty(), "the L2 read has its span: {seen:#?}");
    assert!(
        l2.iter().all(|s| s.parent.is_some()),
        "under the read or the load"
    );
    assert!(l2.iter().all(|s| s.field("otel.kind") == Some("client")));
    assert!(l2.iter().any(|s| s.field("db.operation.name").is_some()));

    cache.get("7").await.unwrap();
    let seen = spans.take();
    let reads = named(&seen, "cache.read");
    assert_eq!(reads.len(), 1, "{seen:#?}");
    assert_eq!(reads[0].field("cache.tier"), Some("l1"));
    assert_eq!(reads[0].field("cache.hit"), Some("true"));
    assert!(named(&seen, "cache.load").is_empty());
}

#[tokio::test]
async fn a_read_answered_by_l2_says_so() {
    let store = MemoryStore::new();
    let writer = TieredCache::<String, u64>::builder("l2read")
        .l2(store.connect())
        .build()
        .unwrap();
    let reader = TieredCache::<String, u64>::builder("l2read")
        .l2(store.connect())
        .build()
        .unwrap();
    writer.insert("k".into(), 1).await;
    let (spans, _guard) = recorded();
    assert_eq!(reader.get("k").await.unwrap(), Some(1));
    let seen = spans.take();
    let reads = named(&seen, "cache.read");
    assert_eq!(reads.len(), 1, "{seen:#?}");
    assert_eq!(reads[0].field("cache.tier"), Some("l2"));
    assert_eq!(reads[0].field("cache.hit"), Some("true"));
}

#[tokio::test]
async fn keys_are_recorded_only_when_asked_for() {
    let (spans, _guard) = recorded();
    let cache = users(true);
    cache.get("7").await.unwrap();
    cache.get("7").await.unwrap();
    let seen = spans.take();
    let reads = named(&seen, "cache.read");
    assert_eq!(reads.len(), 2, "{seen:#?}");
    for read in reads {
        assert_eq!(read.field("cache.key"), Some("7"), "miss and hit alike");
    }
}

#[tokio::test]
async fn a_failed_load_marks_its_spans_as_errors() {
    let (spans, _guard) = recorded();
    let cache = users(false);
    assert!(cache.get("broken").await.is_err());
    let seen = spans.take();
    let read = named(&seen, "cache.read")[0].clone();
    assert_eq!(read.field("otel.status_code"), Some("ERROR"));
    assert_eq!(read.field("error.type"), Some("load"));
    let load = named(&seen, "cache.load")[0].clone();
    assert_eq!(load.field("otel.status_code"), Some("ERROR"));
    assert_eq!(load.field("cache.load.outcome"), Some("error"));
}

#[tokio::test]
async fn writes_have_a_span_that_says_what_happened() {
    let store = MemoryStore::new();
    let cache = TieredCache::<String, u64>::builder("writes")
        .l2(store.clone())
        .build()
        .unwrap();
    let (spans, _guard) = recorded();
    cache.insert("k".into(), 1).await;
    cache.invalidate("k").await;
    store.disconnect();
    cache.invalidate_tag("t").await;
    let seen = spans.take();
    let writes: Vec<_> = named(&seen, "cache.write")
        .into_iter()
        .map(|s| (s.field("cache.operation"), s.field("cache.written")))
        .collect();
    assert_eq!(
        writes,
        [
            (Some("insert"), Some("applied")),
            (Some("invalidate"), Some("applied")),
            (Some("invalidate_tag"), Some("queued")),
        ]
    );
}

#[tokio::test]
async fn try_get_with_and_peek_have_read_spans_too() {
    let (spans, _guard) = recorded();
    let cache = users(false);
    let typed = cache
        .try_get_with("9", async {
            Ok::<_, std::io::Error>(Some("nine".to_owned()))
        })
        .await;
    assert_eq!(typed.unwrap().as_deref(), Some("nine"));
    assert_eq!(cache.peek("9").await.value().as_deref(), Some("nine"));
    let seen = spans.take();
    let ops: Vec<_> = named(&seen, "cache.read")
        .into_iter()
        .map(|s| s.field("cache.operation"))
        .collect();
    assert!(ops.contains(&Some("try_get_with")), "{ops:?}");
    assert!(ops.contains(&Some("peek")), "{ops:?}");
}

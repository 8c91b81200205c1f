//! Support for the code `#[cached_tier]` generates. Not a public API: nothing here
//! is covered by semver.

use std::convert::Infallible;
use std::fmt::{Display, Write};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::cache::{OwnLoad, TieredCache};
use crate::key::{CacheKey, CacheValue};
use crate::policy::EntryOptions;

/// The per-function options of the attribute.
#[derive(Debug)]
pub struct Options<U> {
    /// `options = ...`, with `ttl = "..."` and `tags = [...]` over them: the
    /// call's entry options.
    pub entry: EntryOptions,
    /// `negative = true`: cache `None` as absence.
    pub negative: bool,
    /// `unless = ...`: values for which this returns true are not cached.
    pub unless: U,
}

/// The cache of a function returning `V`: a type error here means the cache's
/// value type is not the function's.
pub fn typed_cache<K, V>(cache: &TieredCache<K, V>) -> &TieredCache<K, V> {
    cache
}

/// Gives an `unless = |v| ...` closure its signature.
pub fn unless<T, U: Fn(&T) -> bool>(unless: U) -> U {
    unless
}

/// The `unless` of functions that did not set one.
pub fn never<T>(_: &T) -> bool {
    false
}

/// Appends `:` and `part`'s `Display` form, with `:` and `\` escaped, so that the
/// default key (function name, then each argument) is one-to-one.
pub fn push_key_part(out: &mut String, part: &dyn Display) {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = write!(text, "{part}");
    out.push(':');
    for c in text.chars() {
        if c == ':' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
}

/// One argument of a default key. `(&KeyPart(&arg)).push(&mut key)` picks
/// [`OptionPart`] for `Option<T: Display>` arguments (`None` is written `\0`, which
/// no escaped value can be) and [`DisplayPart`] for every other `Display` argument.
#[derive(Debug)]
pub struct KeyPart<'a, T: ?Sized>(pub &'a T);

/// Key parts of `Option` arguments.
pub trait OptionPart {
    /// Appends this part.
    fn push(&self, out: &mut String);
}

impl<T: Display> OptionPart for KeyPart<'_, Option<T>> {
    fn push(&self, out: &mut String) {
        match self.0 {
            Some(value) => push_key_part(out, value),
            None => out.push_str(":\\0"),
        }
    }
}

/// Key parts of `Display` arguments.
pub trait DisplayPart {
    /// Appends this part.
    fn push(&self, out: &mut String);
}

impl<T: Display + ?Sized> DisplayPart for &KeyPart<'_, T> {
    fn push(&self, out: &mut String) {
        push_key_part(out, &self.0);
    }
}

/// Checks that a return type taken as a plain value is not a `Result` in disguise
/// (a type alias such as `io::Result<T>`): for those, `check` returns
/// [`ResultAliasMustBeSpelledOut`] instead of `()`, and the generated code does not
/// compile.
#[derive(Debug)]
pub struct Probe<T>(PhantomData<T>);

impl<T> Probe<T> {
    /// A probe of `T`.
    pub fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<T> Default for Probe<T> {
    fn default() -> Self {
        Probe::new()
    }
}

/// The check that passes: `T` is not a `Result`.
pub trait PlainReturn {
    /// Returns `()`.
    fn check(&self) {}
}

impl<T> PlainReturn for Probe<T> {}

/// The type a `Result` hidden behind an alias produces in the return-type check:
/// write the return type as `Result<T, E>` so that errors are not cached.
#[derive(Debug)]
pub struct ResultAliasMustBeSpelledOut;

impl<T, E> Probe<Result<T, E>> {
    /// Shadows [`PlainReturn::check`] for `Result`s.
    pub fn check(&self) -> ResultAliasMustBeSpelledOut {
        ResultAliasMustBeSpelledOut
    }
}

/// A function returning `Result<T, E>`: `Ok` is cached, `Err` goes back to every
/// caller waiting on the key.
pub async fn result<K, T, E, U, F>(
    cache: &TieredCache<K, T>,
    key: K,
    options: Options<U>,
    body: F,
) -> Result<T, E>
where
    K: CacheKey,
    T: CacheValue,
    E: Clone + Send + Sync + 'static,
    U: Fn(&T) -> bool,
    F: Future<Output = Result<T, E>>,
{
    let options = Options {
        negative: false,
        ..options
    };
    let found = fetch(cache, key, &options, false, body.map(|r| r.map(Some))).await?;
    Ok(found.expect("a value: absences are not cached for this function"))
}

/// A function returning `Option<T>`: `Some` is cached, `None` too with
/// `negative = true`.
pub async fn option<K, T, U, F>(
    cache: &TieredCache<K, T>,
    key: K,
    options: Options<U>,
    body: F,
) -> Option<T>
where
    K: CacheKey,
    T: CacheValue,
    U: Fn(&T) -> bool,
    F: Future<Output = Option<T>>,
{
    match fetch(cache, key, &options, true, body.map(Ok::<_, Infallible>)).await {
        Ok(found) => found,
        Err(never) => match never {},
    }
}

/// A function returning a plain `T`.
pub async fn plain<K, T, U, F>(cache: &TieredCache<K, T>, key: K, options: Options<U>, body: F) -> T
where
    K: CacheKey,
    T: CacheValue,
    U: Fn(&T) -> bool,
    F: Future<Output = T>,
{
    let options = Options {
        negative: false,
        ..options
    };
    match fetch(
        cache,
        key,
        &options,
        false,
        body.map(|v| Ok::<_, Infallible>(Some(v))),
    )
    .await
    {
        Ok(found) => found.expect("a value: absences are not cached for this function"),
        Err(never) => match never {},
    }
}

/// The value of `key` from the cache, or from `body` run as the key's one flight
/// (see [`TieredCache::try_get_with`]). Unless `options.negative`, an absence
/// found in the cache is not an answer: the body runs (uncached) instead, so
/// callers only see `None` when the body said so.
async fn fetch<K, T, E, U, F>(
    cache: &TieredCache<K, T>,
    key: K,
    options: &Options<U>,
    absence_possible: bool,
    body: F,
) -> Result<Option<T>, E>
where
    K: CacheKey,
    T: CacheValue,
    E: Clone + Send + Sync + 'static,
    U: Fn(&T) -> bool,
    F: Future<Output = Result<Option<T>, E>>,
{
    let defaults = cache.core().defaults();
    let plan = (options.entry != EntryOptions::default())
        .then(|| options.entry.plan(&defaults.freshness, &defaults.ttl));
    let how = OwnLoad {
        plan: plan.as_ref(),
        absence_answers: options.negative,
        absence_possible,
        unless: &options.unless,
        op: "cached_tier",
    };
    cache
        .own_load(&key, &how, body)
        .await
        .map_err(Arc::unwrap_or_clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_parts_are_escaped_one_to_one() {
        let key = |parts: &[&str]| {
            let mut out = String::from("f");
            for part in parts {
                push_key_part(&mut out, part);
            }
            out
        };
        assert_eq!(key(&["a", "b"]), "f:a:b");
        assert_ne!(key(&["a:b"]), key(&["a", "b"]));
        assert_eq!(key(&["a:b"]), "f:a\\:b");
        assert_ne!(key(&["a\\", "b"]), key(&["a\\:b"]));
    }

    #[test]
    fn options_are_one_to_one_with_their_values() {
        let key = |part: Option<&str>| {
            let mut out = String::from("f");
            KeyPart(&part).push(&mut out);
            out
        };
        assert_eq!(key(None), "f:\\0");
        assert_eq!(key(Some("x")), "f:x");
        assert_ne!(key(None), key(Some("\\0")));
        assert_ne!(key(None), key(Some("")));
        let mut plain = String::from("f");
        (&KeyPart(&7u64)).push(&mut plain);
        assert_eq!(plain, "f:7");
    }
}

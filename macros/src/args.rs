//! The attribute's options.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::{Expr, ExprArray, Ident, Lit, LitBool, LitStr};

/// `#[cached_tier(cache = EXPR, key = "..." | EXPR, skip(a, b), ttl = "30s",
/// negative = true, unless = EXPR, tags = ["user:{id}", ...], options = EXPR)]`
pub(crate) struct Args {
    pub(crate) cache: Expr,
    pub(crate) key: Option<Key>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) ttl_millis: Option<u64>,
    pub(crate) negative: bool,
    pub(crate) unless: Option<Expr>,
    /// Format strings over the arguments, as `key`'s.
    pub(crate) tags: Vec<LitStr>,
    /// An `EntryOptions` expression, evaluated per call (`ttl` and `tags` go
    /// over it).
    pub(crate) options: Option<Expr>,
}

/// The `key` option.
pub(crate) enum Key {
    /// A format string over the arguments: a `String` key.
    Format(LitStr),
    /// An expression of the cache's key type, evaluated per call.
    Expr(Expr),
}

const OPTIONS: &str = "`cache`, `key`, `skip`, `ttl`, `negative`, `unless`, `tags` or `options`";

impl Args {
    pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Args> {
        let mut cache = None;
        let mut key = None;
        let mut skip = None;
        let mut ttl = None;
        let mut negative = None;
        let mut unless = None;
        let mut tags = None;
        let mut options = None;
        let parser = syn::meta::parser(|meta| {
            let name = meta
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            let duplicate = || meta.error(format!("duplicate option `{name}`"));
            match name.as_str() {
                "cache" => {
                    if cache.is_some() {
                        return Err(duplicate());
                    }
                    cache = Some(meta.value()?.parse::<Expr>()?);
                }
                "key" => {
                    if key.is_some() {
                        return Err(duplicate());
                    }
                    key = Some(match meta.value()?.parse::<Expr>()? {
                        Expr::Lit(syn::ExprLit {
                            lit: Lit::Str(format),
                            ..
                        }) => Key::Format(format),
                        expr => Key::Expr(expr),
                    });
                }
                "skip" => {
                    if skip.is_some() {
                        return Err(duplicate());
                    }
                    let mut names = Vec::new();
                    meta.parse_nested_meta(|inner| {
                        let ident = inner
                            .path
                            .get_ident()
                            .cloned()
                            .ok_or_else(|| inner.error("expected an argument name"))?;
                        names.push(ident);
                        Ok(())
                    })?;
                    skip = Some(names);
                }
                "ttl" => {
                    if ttl.is_some() {
                        return Err(duplicate());
                    }
                    let lit = meta.value()?.parse::<LitStr>()?;
                    ttl = Some(parse_duration(&lit)?);
                }
                "negative" => {
                    if negative.is_some() {
                        return Err(duplicate());
                    }
                    negative = Some(meta.value()?.parse::<LitBool>()?.value);
                }
                "tags" => {
                    if tags.is_some() {
                        return Err(duplicate());
                    }
                    let array = meta.value()?.parse::<ExprArray>()?;
                    let mut formats = Vec::with_capacity(array.elems.len());
                    for elem in array.elems {
                        match elem {
                            Expr::Lit(syn::ExprLit {
                                lit: Lit::Str(format),
                                ..
                            }) => formats.push(format),
                            other => {
                                return Err(syn::Error::new_spanned(
                                    other,
                                    "a tag is a string literal, with `{argument}` placeholders as in `key`",
                                ))
                            }
                        }
                    }
                    tags = Some(formats);
                }
                "unless" => {
                    if unless.is_some() {
                        return Err(duplicate());
                    }
                    unless = Some(meta.value()?.parse::<Expr>()?);
                }
                "options" => {
                    if options.is_some() {
                        return Err(duplicate());
                    }
                    options = Some(meta.value()?.parse::<Expr>()?);
                }
                _ => {
                    return Err(meta.error(format!(
                        "unknown option `{}`: expected {OPTIONS}",
                        quote::ToTokens::to_token_stream(&meta.path)
                    )))
                }
            }
            Ok(())
        });
        parser.parse2(tokens)?;
        let cache = cache.ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                "missing `cache = ...`: an expression giving a `&TieredCache<String, V>`",
            )
        })?;
        Ok(Args {
            cache,
            key,
            skip: skip.unwrap_or_default(),
            ttl_millis: ttl,
            negative: negative.unwrap_or(false),
            unless,
            tags: tags.unwrap_or_default(),
            options,
        })
    }
}

/// `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"` → milliseconds.
fn parse_duration(lit: &LitStr) -> syn::Result<u64> {
    let text = lit.value();
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if scale > 0 && n > 0 => n
            .checked_mul(scale)
            .ok_or_else(|| syn::Error::new(lit.span(), "ttl is too long")),
        _ => Err(syn::Error::new(
            lit.span(),
            "ttl must be a positive whole number with a unit: ms, s, m, h or d (e.g. \"30s\")",
        )),
    }
}

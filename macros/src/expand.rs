//! The generated function.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    parse_quote, Error, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type,
};

use crate::args::{Args, Key};

/// What the function returns, and so what is cached.
enum Kind {
    /// `Result<T, E>`: `Ok(T)` is cached, `E` goes back to every waiting caller.
    Result { ok: Type },
    /// `Option<T>`: `Some(T)` is cached (`None` too with `negative = true`).
    Option { inner: Type },
    /// Anything else, cached as it is.
    Plain,
}

pub(crate) fn expand(args: Args, mut function: ItemFn) -> syn::Result<TokenStream> {
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(Error::new(
            sig.fn_token.span,
            "#[cached_tier] caches an `async fn`: add `async`",
        ));
    }
    let krate = crate_path();
    let (names, self_span) = argument_names(&sig.inputs)?;
    for skipped in &args.skip {
        if skipped != "self" && !names.contains(skipped) {
            return Err(Error::new(
                skipped.span(),
                format!(
                    "`skip` names `{skipped}`, which is not an argument of `{}`",
                    sig.ident
                ),
            ));
        }
    }
    let key = match &args.key {
        Some(Key::Format(format)) => {
            check_placeholders("`key`", format, &names, &sig.ident)?;
            quote!(::std::format!(#format))
        }
        Some(Key::Expr(expr)) => quote!(#expr),
        None => {
            let skips_self = args.skip.iter().any(|s| s == "self");
            if let (Some(span), false) = (self_span, skips_self) {
                return Err(Error::new(
                    span,
                    "`self` would be part of the default key: add `skip(self)`, or write a `key`",
                ));
            }
            // Mixed-site hygiene: an argument named like this cannot clash with it.
            let buffer = Ident::new("key", Span::mixed_site());
            let parts = names.iter().filter(|n| !args.skip.contains(n)).map(|name| {
                quote_spanned! {name.span()=>
                    (&#krate::__private::KeyPart(&#name)).push(&mut #buffer);
                }
            });
            quote!({
                #[allow(unused_imports)]
                use #krate::__private::{DisplayPart as _, OptionPart as _};
                // The function's full path (crate, module, and the type of an
                // inherent method): `users::find` and `admins::find` never share.
                let mut #buffer = {
                    fn __tiered_key_origin() {}
                    let path = ::std::any::type_name_of_val(&__tiered_key_origin);
                    let path = path.strip_suffix("::__tiered_key_origin").unwrap_or(path);
                    ::std::string::String::from(path)
                };
                #(#parts)*
                #buffer
            })
        }
    };

    let output: Type = match &sig.output {
        ReturnType::Default => parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let kind = classify(&output)?;
    let (value, support) = match &kind {
        Kind::Result { ok } => (ok.clone(), quote!(result)),
        Kind::Option { inner } => (inner.clone(), quote!(option)),
        Kind::Plain => (output.clone(), quote!(plain)),
    };
    if args.negative && !matches!(kind, Kind::Option { .. }) {
        return Err(Error::new_spanned(
            &output,
            "`negative = true` caches `None`: it needs a function returning `Option<T>`",
        ));
    }
    let plain_check = match kind {
        Kind::Plain => quote_spanned! {output.span()=>
            #[allow(unused_imports)]
            use #krate::__private::PlainReturn as _;
            let _: () = #krate::__private::Probe::<#output>::new().check();
        },
        _ => quote!(),
    };
    let cache = &args.cache;
    // A key made from a format string (or the default key) is a `String`;
    // a `key` expression is of the cache's key type.
    let key_type = match &args.key {
        Some(Key::Expr(_)) => quote!(_),
        _ => quote!(::std::string::String),
    };
    let cache =
        quote_spanned!(cache.span()=> #krate::__private::typed_cache::<#key_type, #value>(&#cache));
    // The entry's options: `options = ...` (else none), then `ttl` and
    // `tags` over them.
    let mut entry = match &args.options {
        Some(options) => {
            quote_spanned!(options.span()=> ::std::convert::identity::<#krate::EntryOptions>(#options))
        }
        None => quote!(#krate::EntryOptions::new()),
    };
    if let Some(ms) = args.ttl_millis {
        // For values and, with `negative = true`, absences alike.
        let ttl = quote!(::std::time::Duration::from_millis(#ms));
        entry = quote!(#entry.ttl(#ttl).negative_ttl(#ttl));
    }
    for tag in &args.tags {
        check_placeholders("a tag", tag, &names, &sig.ident)?;
    }
    if !args.tags.is_empty() {
        let tags = &args.tags;
        entry = quote!(#entry.tags([#(::std::format!(#tags)),*]));
    }
    let negative = args.negative;
    let unless = match &args.unless {
        Some(unless) => {
            quote_spanned!(unless.span()=> #krate::__private::unless::<#value, _>(#unless))
        }
        None => quote!(#krate::__private::never::<#value>),
    };
    let stmts = &function.block.stmts;
    let call = quote_spanned! {output.span()=>
        #krate::__private::#support(__tiered_cache, __tiered_key, __tiered_options, __tiered_body).await
    };
    let block: syn::Block = parse_quote! {
        {
            #plain_check
            // One tuple, so that the body sees none of these names.
            let (__tiered_cache, __tiered_key, __tiered_options, __tiered_body) = (
                #cache,
                #key,
                #krate::__private::Options {
                    entry: #entry,
                    negative: #negative,
                    unless: #unless,
                },
                async move {
                    // Fixes the body's type, so that `?` knows what to convert to.
                    #[allow(unreachable_code, clippy::diverging_sub_expression)]
                    if false {
                        let __tiered_output: #output = loop {};
                        return __tiered_output;
                    }
                    #(#stmts)*
                },
            );
            #call
        }
    };
    *function.block = block;
    Ok(quote!(#function))
}

/// The path of the `tiered` crate as the caller's `Cargo.toml` names it.
fn crate_path() -> TokenStream {
    match proc_macro_crate::crate_name("tiered") {
        Ok(proc_macro_crate::FoundCrate::Name(name)) => {
            let ident = Ident::new(&name, Span::call_site());
            quote!(::#ident)
        }
        _ => quote!(::tiered),
    }
}

/// The names of the typed arguments, and the span of `self` if there is one.
fn argument_names(
    inputs: &syn::punctuated::Punctuated<FnArg, syn::Token![,]>,
) -> syn::Result<(Vec<Ident>, Option<Span>)> {
    let mut names = Vec::new();
    let mut self_span = None;
    for input in inputs {
        match input {
            FnArg::Receiver(receiver) => self_span = Some(receiver.self_token.span),
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) => names.push(pat.ident.clone()),
                other => {
                    return Err(Error::new(
                        other.span(),
                        "#[cached_tier] needs a plain name for each argument (bind patterns inside the body)",
                    ))
                }
            },
        }
    }
    Ok((names, self_span))
}

/// Every `{name}` of the key's format string must be an argument.
fn check_placeholders(
    what: &str,
    format: &syn::LitStr,
    names: &[Ident],
    function: &Ident,
) -> syn::Result<()> {
    let text = format.value();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '{' => {
                let inside: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let name = inside.split(':').next().unwrap_or_default().trim();
                if name.is_empty() || name.chars().all(|c| c.is_ascii_digit()) {
                    return Err(Error::new(
                        format.span(),
                        format!(
                            "each `{{}}` of {what} must name an argument, e.g. \"user:{{id}}\""
                        ),
                    ));
                }
                if !names.iter().any(|n| n == name) {
                    return Err(Error::new(
                        format.span(),
                        format!("{what} names `{name}`, which is not an argument of `{function}`"),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn classify(output: &Type) -> syn::Result<Kind> {
    let Type::Path(path) = output else {
        return Ok(Kind::Plain);
    };
    let Some(last) = path.path.segments.last() else {
        return Ok(Kind::Plain);
    };
    let types: Vec<&Type> = match &last.arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|a| match a {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    match (last.ident.to_string().as_str(), types.as_slice()) {
        ("Result", [ok, _err]) => Ok(Kind::Result { ok: (*ok).clone() }),
        ("Result", _) => Err(Error::new_spanned(
            output,
            "this `Result` does not show its error type: write it as `Result<T, E>` \
             (only `Ok` is cached; `E` goes back to every caller waiting on the key, so it must be `Clone`)",
        )),
        ("Option", [inner]) => Ok(Kind::Option {
            inner: (*inner).clone(),
        }),
        _ => Ok(Kind::Plain),
    }
}

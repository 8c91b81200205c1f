//! The `#[cached_tier]` attribute of the `tiered` crate. Use it through
//! `tiered::cached_tier` (feature `macros`); its documentation lives there.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod args;
mod expand;

use proc_macro::TokenStream;

/// Caches an `async fn` through a `tiered::TieredCache`; see `tiered::cached_tier`.
#[proc_macro_attribute]
pub fn cached_tier(attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = syn::parse_macro_input!(item as syn::ItemFn);
    let args = match args::Args::parse(attr.into()) {
        Ok(args) => args,
        Err(error) => return with_function(error, &function),
    };
    match expand::expand(args, function.clone()) {
        Ok(tokens) => tokens.into(),
        Err(error) => with_function(error, &function),
    }
}

/// The error, plus the function unchanged, so that one mistake in the attribute does
/// not also make every call of the function an error.
fn with_function(error: syn::Error, function: &syn::ItemFn) -> TokenStream {
    let error = error.to_compile_error();
    quote::quote!(#error #function).into()
}

//! `Flavor`: which htmx a component's markup is for.

/// Which htmx the markup a component renders is for.
///
/// | | htmx 2 + htmx-ext-sse | htmx 4 |
/// | --- | --- | --- |
/// | connect | `hx-ext="sse" sse-connect="URL"` | `hx-sse:connect="URL"` |
/// | what is swapped | events named in `sse-swap` | unnamed events only |
/// | close | `sse-close="NAME"` | `hx-sse:close="NAME"` |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Flavor {
    /// htmx 2 with htmx-ext-sse 2.2 (the default).
    #[default]
    Htmx2,
    /// htmx 4 with its `hx-sse` extension.
    Htmx4,
}

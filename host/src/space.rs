//! The NAS-Bench-201 cell space: the `knas-nb201` crate, which the policy SDK shares, so
//! that host and policies agree on every string, index and edge by construction.

pub use knas_nb201::*;

//! Integration tests: they drive the real `knas` binary (and, for policies, real `.wasm`
//! components) on tiny settings so the suite stays quick on two cores.

mod common;
mod engine_cli;
mod katib;
mod languages;
mod policies;
mod serve;
mod deploy;

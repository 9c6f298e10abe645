//! knas: training-free neural architecture search with the gradient kernel.
//!
//! The pieces, in the order data flows through them:
//!
//! - [`space`]: the NAS-Bench-201 cell space (architectures, supernets, string form, index);
//! - [`data`]: datasets (embedded MNIST subset, CIFAR, IDX) and their seeded splits;
//! - [`model`]: NB201 networks built with tch;
//! - [`measures`]: the training-free measure suite (KNAS's gradient kernel, the published
//!   measures, AZ-NAS, MeCo…) and their rank aggregate;
//! - [`train`]: short training of finalists;
//! - [`run`]: a run's own types (experiment, search settings, requests, observations),
//!   shared by everything from here down that runs something;
//! - [`engine`]: one experiment on one device, tying the above together;
//! - [`stats`]: rank correlations;
//! - [`table`]: published benchmark tables (NAS-Bench-201's), the yardstick;
//! - [`policy`]: search policies as sandboxed WebAssembly components (contract, runtime,
//!   validation, building);
//! - [`store`]: the SQLite run store;
//! - [`search`]: the search loop that drives a policy against the engine and the store;
//! - [`config`]: YAML configuration files;
//! - [`service`]: `knas serve`, the watched-folder service with metrics and an HTTP API;
//! - [`katib`]: `knas katib`, the Kubeflow Katib suggestion service (coarse selection here,
//!   trials in Katib).

pub mod config;
pub mod data;
pub mod engine;
pub mod katib;
pub mod measures;
pub mod model;
pub mod policy;
pub mod run;
pub mod search;
pub mod service;
pub mod space;
pub mod stats;
pub mod store;
pub mod table;
pub mod train;

#[cfg(test)]
mod fuzz;

/// Fault injection for the tests (every command reads it at start): `FAILPOINTS="name=actions;name=actions"` (the `fail`
/// crate's syntax, e.g. `search::evaluate=2*off->1*panic(boom)`). Inert when unset; each
/// point costs one map lookup when reached.
pub fn configure_failpoints() -> anyhow::Result<()> {
    let Ok(points) = std::env::var("FAILPOINTS") else { return Ok(()) };
    for point in points.split(';').filter(|p| !p.trim().is_empty()) {
        let (name, actions) =
            point.split_once('=').ok_or_else(|| anyhow::anyhow!("FAILPOINTS: {point:?} is not NAME=ACTIONS"))?;
        fail::cfg(name.trim(), actions.trim()).map_err(|error| anyhow::anyhow!("FAILPOINTS: {}: {error}", name.trim()))?;
    }
    Ok(())
}

/// The message of a caught panic. Pass the payload (`&*boxed`), not the box: a
/// `&Box<dyn Any>` coerces to `&dyn Any` too, and then no message is ever found.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}

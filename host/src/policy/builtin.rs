//! Policies the `knas` binary carries: the random policy (`policies/random`, KNAS's own
//! protocol), compiled by `build.rs`. `knas select` is a run of it, and `knas search
//! --policy random` names it when no file has that name, so neither needs a policy built
//! first. (The service and `knas katib` load policies from their folders only.)

use super::runtime::{PolicyModule, PolicyRuntime};
use super::{LoadError, PolicyError, package};

/// The random policy as a core module; wrapped into a component when loaded.
const RANDOM_MODULE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/random.core.wasm"));

/// Names of the built-in policies.
pub const NAMES: &[&str] = &["random"];

/// The built-in policy `name` as a component, or `None` if there is none by that name.
pub fn component(name: &str) -> Option<Result<Vec<u8>, PolicyError>> {
    let module = match name {
        "random" => RANDOM_MODULE,
        _ => return None,
    };
    Some(package::component_of(module).map_err(|problem| PolicyError::Load { policy: name.to_owned(), source: LoadError::Malformed(problem) }))
}

/// Loads the built-in policy `name` into `runtime`, or `None` if there is none by that name.
pub fn load(runtime: &PolicyRuntime, name: &str) -> Option<Result<PolicyModule, PolicyError>> {
    Some(component(name)?.and_then(|bytes| runtime.load_bytes(name, &bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_random_policy_is_built_in_and_meets_the_contract() {
        let bytes = component("random").expect("built in").expect("wraps into a component");
        let info = crate::policy::contract::inspect(&bytes).expect("meets the contract");
        assert_eq!(info.contract_version, crate::policy::CONTRACT_VERSION);
        let runtime = PolicyRuntime::new().unwrap();
        let module = load(&runtime, "random").expect("built in").expect("loads");
        assert_eq!(module.name(), "random");
        assert!(component("evolution").is_none(), "only what NAMES lists is built in");
    }
}

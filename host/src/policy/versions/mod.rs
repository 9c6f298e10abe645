//! One adapter per contract version the host runs, each generated from that version's
//! WIT (`sdk/wit/policy.wit` for the current one, `sdk/wit/past/<version>/` for frozen
//! ones), as Zed keeps one set of bindings per extension API version.
//!
//! This is the only place that knows a version's records: each adapter converts the host's
//! types ([`Settings`], [`Observation`], [`RawProposal`]) to and from them, and implements
//! the version's `host` imports on [`PolicyState`]. [`Bindings`] dispatches a call to the
//! adapter of the version a component was built against.

/// Implements a contract version's `host` imports on [`PolicyState`]: every version's
/// `log` and `random` mean the same, only their generated types differ.
macro_rules! host_imports {
    () => {
        impl self::knas::policy::types::Host for PolicyState {}

        impl self::knas::policy::host::Host for PolicyState {
            fn log(&mut self, level: self::knas::policy::types::Level, message: String) {
                use self::knas::policy::types::Level;
                let level = match level {
                    Level::Trace => tracing::Level::TRACE,
                    Level::Debug => tracing::Level::DEBUG,
                    Level::Info => tracing::Level::INFO,
                    Level::Warn => tracing::Level::WARN,
                    Level::Error => tracing::Level::ERROR,
                };
                self.log(level, message);
            }

            fn random(&mut self) -> u64 {
                self.random()
            }
        }
    };
}

mod v0_1;
mod v0_2;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

use super::runtime::PolicyState;
use super::{RawProposal, Settings};
use crate::run::{Budget, Observation};

/// The frozen contract version 0.1.0.
pub const V0_1: &str = "0.1.0";

/// A live instance's exports, in the version it was built against.
pub enum Bindings {
    V0_1(v0_1::SearchPolicy),
    V0_2(v0_2::SearchPolicy),
}

/// Links the host imports of every supported version.
pub fn add_to_linker(linker: &mut Linker<PolicyState>) -> wasmtime::Result<()> {
    v0_1::SearchPolicy::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    v0_2::SearchPolicy::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    Ok(())
}

/// Result of a call: a trap (`Err`) or the guest's own answer.
pub type Call<T> = wasmtime::Result<Result<T, String>>;

impl Bindings {
    /// Instantiates `component`, built against contract `version`.
    pub fn instantiate(
        store: &mut Store<PolicyState>,
        component: &Component,
        linker: &Linker<PolicyState>,
        version: &str,
    ) -> wasmtime::Result<Bindings> {
        if version == V0_1 {
            Ok(Bindings::V0_1(v0_1::SearchPolicy::instantiate(store, component, linker)?))
        } else {
            Ok(Bindings::V0_2(v0_2::SearchPolicy::instantiate(store, component, linker)?))
        }
    }

    pub fn init(&self, store: &mut Store<PolicyState>, settings: &Settings) -> Call<()> {
        match self {
            Bindings::V0_1(b) => b.knas_policy_policy().call_init(store, &v0_1::settings(settings)),
            Bindings::V0_2(b) => b.knas_policy_policy().call_init(store, &v0_2::settings(settings)),
        }
    }

    pub fn observe(&self, store: &mut Store<PolicyState>, results: &[Observation]) -> Call<()> {
        match self {
            Bindings::V0_1(b) => {
                let results: Vec<_> = results.iter().map(v0_1::evaluation).collect();
                b.knas_policy_policy().call_observe(store, &results)
            }
            Bindings::V0_2(b) => {
                let results: Vec<_> = results.iter().map(v0_2::evaluation).collect();
                b.knas_policy_policy().call_observe(store, &results)
            }
        }
    }

    pub fn propose(&self, store: &mut Store<PolicyState>, remaining: Budget) -> Call<RawProposal> {
        Ok(match self {
            Bindings::V0_1(b) => b.knas_policy_policy().call_propose(store, v0_1::budget(remaining))?.map(v0_1::proposal),
            Bindings::V0_2(b) => b.knas_policy_policy().call_propose(store, v0_2::budget(remaining))?.map(v0_2::proposal),
        })
    }

    /// The policy's state; versions without checkpoints have none.
    pub fn checkpoint(&self, store: &mut Store<PolicyState>) -> Call<Option<Vec<u8>>> {
        match self {
            Bindings::V0_1(_) => Ok(Ok(None)),
            Bindings::V0_2(b) => b.knas_policy_policy().call_checkpoint(store),
        }
    }

    /// Resumes from a checkpoint; versions without checkpoints refuse.
    pub fn restore(&self, store: &mut Store<PolicyState>, state: &[u8]) -> Call<()> {
        match self {
            Bindings::V0_1(_) => Ok(Err("contract 0.1.0 has no checkpoints".into())),
            Bindings::V0_2(b) => b.knas_policy_policy().call_restore(store, state),
        }
    }

    /// Whether the version can checkpoint at all.
    pub fn checkpoints(&self) -> bool {
        matches!(self, Bindings::V0_2(_))
    }
}

//! Write knas search policies in Rust.
//!
//! A policy decides which candidates the knas host evaluates next. Implement [`Policy`] for
//! a type and register it with [`register_policy!`]; build the crate for
//! `wasm32-unknown-unknown` with `knas policy build`, and drop the `.wasm` into a policy
//! folder (or pass it to `knas search --policy`).
//!
//! ```no_run
//! use knas_policy_sdk::{Budget, Evaluation, Fidelity, Policy, Proposal, Settings, nb201::Arch};
//!
//! /// Scores random architectures until the budget runs out.
//! struct Sampler;
//!
//! impl Policy for Sampler {
//!     fn new(_settings: Settings) -> Result<Self, String> {
//!         Ok(Sampler)
//!     }
//!
//!     fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
//!         if remaining.scores == 0 {
//!             return Ok(Proposal::Done);
//!         }
//!         Ok(Proposal::Evaluate(vec![Arch::random().candidate(Fidelity::Score)]))
//!     }
//! }
//!
//! knas_policy_sdk::register_policy!(Sampler);
//! ```
//!
//! The contract itself is the WIT file `sdk/wit/policy.wit` (package `knas:policy`); this
//! crate is generated from it and hides the generated code behind the API above.

pub mod nb201;

use std::cell::RefCell;

// The generated code names this crate by its external name, also from inside it.
extern crate self as knas_policy_sdk;

/// Generated from `wit/policy.wit`; use the re-exports instead.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "search-policy",
        pub_export_macro: true,
        default_bindings_module: "knas_policy_sdk::__private::bindings",
        runtime_path: "knas_policy_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Clone],
    });
}

pub use bindings::knas::policy::types::{Budget, Candidate, Edge, Evaluation, Fidelity, Level, Proposal, Settings, Space};

/// The contract version this SDK implements (the WIT package version).
pub const CONTRACT_VERSION: &str = "0.1.0";

/// A search strategy. The host calls [`Policy::new`] once, then alternates
/// [`Policy::propose`] and [`Policy::observe`] until the policy answers
/// [`Proposal::Done`] or the budget is spent.
///
/// Errors (`Err(message)`) end the run; the host reports the message with the policy's
/// name. A panic does the same, with the panic message.
pub trait Policy: 'static {
    /// Creates the policy for a run. `settings.params` holds the policy's parameters as a
    /// JSON object; [`Settings::parse_params`] deserialises them.
    fn new(settings: Settings) -> Result<Self, String>
    where
        Self: Sized;

    /// Results for the last proposal's candidates, in order. Also receives a run's history
    /// when a fresh instance takes over a run (restart, hot swap), so results may be for
    /// candidates this instance never proposed. The default ignores results.
    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        let _ = results;
        Ok(())
    }

    /// The next candidates to evaluate, or [`Proposal::Done`].
    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String>;
}

impl Settings {
    /// Deserialises the policy's parameters; missing fields take their serde defaults.
    pub fn parse_params<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.params.trim().is_empty() { "{}" } else { &self.params };
        serde_json::from_str(text).map_err(|e| format!("invalid policy parameters {text}: {e}"))
    }
}

impl Evaluation {
    /// Whether this is a successful kernel score.
    pub fn is_score(&self) -> bool {
        self.candidate.fidelity == Fidelity::Score && self.score.is_some()
    }

    /// Whether this is a successful training result.
    pub fn is_trained(&self) -> bool {
        self.candidate.fidelity == Fidelity::Train && self.accuracy.is_some()
    }
}

/// Writes to the host's log, attributed to this policy.
pub fn log(level: Level, message: &str) {
    bindings::knas::policy::host::log(level, message);
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Random numbers from the run's seeded generator (runs are reproducible from one seed).
pub mod random {
    /// 64 random bits.
    pub fn u64() -> u64 {
        super::bindings::knas::policy::host::random()
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(n: u64) -> u64 {
        assert!(n > 0, "random::below(0)");
        // Lemire's multiply-shift with rejection.
        loop {
            let m = u128::from(u64()) * u128::from(n);
            if (m as u64) >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform float in [0, 1).
    pub fn unit() -> f64 {
        (u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, below(i as u64 + 1) as usize);
        }
    }
}

thread_local! {
    static POLICY: RefCell<Option<Box<dyn Policy>>> = RefCell::new(None);
}

/// Support for [`register_policy!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    pub use crate::bindings;
    pub use crate::bindings::exports::knas::policy::policy::Guest;
    use crate::{Budget, Evaluation, POLICY, Policy, Proposal, Settings};

    /// Embedded by `register_policy!` in a custom section, so tools can tell which SDK
    /// built a policy.
    pub const SDK_SECTION: [u8; 21] = *b"knas-policy-sdk 0.1.0";

    pub fn init<P: Policy>(settings: Settings) -> Result<(), String> {
        // Panics abort the instance; send their message to the host first, so the error
        // the host reports says what went wrong.
        std::panic::set_hook(Box::new(|info| crate::log(crate::Level::Error, &format!("policy panicked: {info}"))));
        let policy = P::new(settings)?;
        POLICY.with(|slot| *slot.borrow_mut() = Some(Box::new(policy)));
        Ok(())
    }

    fn with_policy<T>(f: impl FnOnce(&mut dyn Policy) -> Result<T, String>) -> Result<T, String> {
        POLICY.with(|slot| match slot.borrow_mut().as_mut() {
            Some(policy) => f(policy.as_mut()),
            None => Err("the host called the policy before `init`".into()),
        })
    }

    pub fn observe(results: Vec<Evaluation>) -> Result<(), String> {
        with_policy(|p| p.observe(results))
    }

    pub fn propose(remaining: Budget) -> Result<Proposal, String> {
        with_policy(|p| p.propose(remaining))
    }
}

/// Registers a [`Policy`] implementation as the component's exported policy. Use it once,
/// at the crate root of a `cdylib` crate.
#[macro_export]
macro_rules! register_policy {
    ($policy:ty) => {
        #[doc(hidden)]
        pub struct __KnasPolicyExport;

        impl $crate::__private::Guest for __KnasPolicyExport {
            fn init(settings: $crate::Settings) -> ::core::result::Result<(), ::std::string::String> {
                $crate::__private::init::<$policy>(settings)
            }
            fn observe(results: ::std::vec::Vec<$crate::Evaluation>) -> ::core::result::Result<(), ::std::string::String> {
                $crate::__private::observe(results)
            }
            fn propose(remaining: $crate::Budget) -> ::core::result::Result<$crate::Proposal, ::std::string::String> {
                $crate::__private::propose(remaining)
            }
        }

        $crate::__private::bindings::export!(__KnasPolicyExport with_types_in $crate::__private::bindings);

        #[doc(hidden)]
        #[used]
        #[unsafe(link_section = "knas-policy-sdk")]
        static __KNAS_POLICY_SDK: [u8; 21] = $crate::__private::SDK_SECTION;
    };
}

//! Write knas search policies in Rust.
//!
//! A policy decides which candidates the knas host evaluates next. Implement [`Policy`] for
//! a type and register it with [`register_policy!`]; build the crate for
//! `wasm32-unknown-unknown` with `knas policy build`, and drop the `.wasm` into a policy
//! folder (or pass it to `knas search --policy`).
//!
//! ```no_run
//! use knas_policy_sdk::nb201::Arch;
//! use knas_policy_sdk::{Budget, Candidate, Policy, Proposal, Settings, random};
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
//!         Ok(Proposal::Evaluate(vec![Candidate::score(Arch::random(&mut random::rng()))]))
//!     }
//! }
//!
//! knas_policy_sdk::register_policy!(Sampler);
//! ```
//!
//! What the host measures arrives in [`Evaluation`]s: the run's score (the rank aggregate
//! by default), every training-free measure by name, the network's size, and training
//! results. [`archive::Archive`] keeps them, ranks them, aggregates ranks and answers
//! "top k"; [`nb201`] is the search space, the same code the host runs. [`testing`] runs a
//! policy against a simulated host, so it can be unit-tested with `cargo test`.
//!
//! The contract itself is the WIT file `sdk/wit/policy.wit` (package `knas:policy`, whose
//! version is [`CONTRACT_VERSION`]); this crate is generated from it and hides the
//! generated code behind the API above.

// The guest-facing API: every public item is documented (policy authors read it on docs.rs
// or with `cargo doc`).
#![warn(missing_docs)]

pub mod archive;
pub mod nb201;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

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

pub use bindings::knas::policy::types::{
    Budget, Candidate, Edge, Evaluation, Fidelity, Level, MeasureInfo, MeasureValue, Proposal, Settings, Space, Training,
};

/// The contract version this SDK implements: the package version of `wit/policy.wit`.
pub const CONTRACT_VERSION: &str = env!("KNAS_CONTRACT_VERSION");

/// A search strategy. The host calls [`Policy::new`] once (then [`Policy::restore`] when
/// it resumes from a checkpoint), then alternates [`Policy::propose`] and
/// [`Policy::observe`] until the policy answers [`Proposal::Done`] or the budget is spent.
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
    /// (in several calls, oldest first) when a fresh instance takes over a run (restart,
    /// hot swap), so results may be for candidates this instance never proposed. The
    /// default ignores results.
    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        let _ = results;
        Ok(())
    }

    /// The next candidates to evaluate, or [`Proposal::Done`].
    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String>;

    /// The policy's state, so a fresh instance can resume without the whole history
    /// replayed into it. The default keeps none (the host replays the history instead).
    fn checkpoint(&self) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }

    /// Resumes from bytes an earlier [`Policy::checkpoint`] of this run returned (maybe of
    /// an earlier version of this policy); the results recorded since follow through
    /// [`Policy::observe`]. An error makes the host replay the whole history into a fresh
    /// instance instead. The default declines.
    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let _ = state;
        Err("this policy keeps no checkpoints".into())
    }
}

impl Settings {
    /// Deserialises the policy's parameters (the host hands a JSON object, and refuses
    /// anything else before a policy sees it); missing fields take their serde defaults.
    /// An error names the offending key (`population: invalid type: …`).
    pub fn parse_params<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let text = if self.params.trim().is_empty() { "{}" } else { &self.params };
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." { String::new() } else { format!("{path}: ") };
            format!("invalid policy parameters {text}: {at}{}", e.inner())
        })?;
        // Nothing may follow the object.
        deserializer.end().map_err(|e| format!("invalid policy parameters {text}: {e}"))?;
        Ok(value)
    }

    /// A policy's `epochs` parameter, checked against what the host trains (1 to
    /// `max_epochs`): refused at `init`, naming the key, rather than as an invalid proposal
    /// once the score budget is spent. `None` (the run's own epochs) passes.
    pub fn check_epochs(&self, epochs: Option<u32>) -> Result<Option<u32>, String> {
        match epochs {
            Some(e) if e == 0 || e > self.max_epochs => {
                Err(format!("invalid policy parameters: epochs: {e} is outside 1..={} (the host's max-epochs)", self.max_epochs))
            }
            _ => Ok(epochs),
        }
    }

    /// The aggregate's weights, by measure name (measures with weight 0 left out).
    pub fn weights(&self) -> Vec<(String, f64)> {
        self.measures.iter().filter(|m| m.weight > 0.0).map(|m| (m.name.clone(), m.weight)).collect()
    }
}

impl Fidelity {
    /// A training for the run's default epochs.
    pub fn train() -> Fidelity {
        Fidelity::Train(Training { epochs: None })
    }

    /// Whether this is a training.
    pub fn is_train(&self) -> bool {
        matches!(self, Fidelity::Train(_))
    }
}

impl Evaluation {
    /// Whether this is a successful training-free score.
    pub fn is_score(&self) -> bool {
        self.candidate.fidelity == Fidelity::Score && self.error.is_none()
    }

    /// Whether this is a successful training result.
    pub fn is_trained(&self) -> bool {
        self.candidate.fidelity.is_train() && self.accuracy.is_some()
    }

    /// The value of the measure called `name`, if computed and finite.
    pub fn measure(&self, name: &str) -> Option<f64> {
        self.measures.iter().find(|m| m.name == name).and_then(|m| m.value)
    }
}

/// Writes to the host's log, attributed to this policy. (In a native build, such as a
/// policy's unit tests, [`testing::Run::logs`] keeps the records.)
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::knas::policy::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    testing::log(level, message);
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
    /// The host's generator as a [`rand::RngCore`], for [`crate::nb201`] and the `rand`
    /// ecosystem: `Arch::random(&mut random::rng())`.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct HostRng;

    impl rand::RngCore for HostRng {
        fn next_u32(&mut self) -> u32 {
            (u64() >> 32) as u32
        }

        fn next_u64(&mut self) -> u64 {
            u64()
        }

        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for chunk in dest.chunks_mut(8) {
                let bytes = u64().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
    }

    /// The host's generator.
    pub fn rng() -> HostRng {
        HostRng
    }

    /// 64 random bits. (In a native build, from [`crate::testing`]'s copy of the host's
    /// generator.)
    pub fn u64() -> u64 {
        #[cfg(target_arch = "wasm32")]
        return super::bindings::knas::policy::host::random();
        #[cfg(not(target_arch = "wasm32"))]
        return crate::testing::random();
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

    const SDK_NAME: &str = concat!("knas-policy-sdk ", env!("CARGO_PKG_VERSION"));
    /// Bytes of the custom section `register_policy!` embeds, so tools can tell which SDK
    /// built a policy.
    pub const SDK_SECTION_LEN: usize = SDK_NAME.len();
    pub const SDK_SECTION: [u8; SDK_SECTION_LEN] = {
        let mut out = [0u8; SDK_SECTION_LEN];
        let bytes = SDK_NAME.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            out[i] = bytes[i];
            i += 1;
        }
        out
    };

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

    pub fn checkpoint() -> Result<Option<Vec<u8>>, String> {
        with_policy(|p| p.checkpoint())
    }

    pub fn restore(state: Vec<u8>) -> Result<(), String> {
        with_policy(|p| p.restore(&state))
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
            fn checkpoint() -> ::core::result::Result<::core::option::Option<::std::vec::Vec<u8>>, ::std::string::String> {
                $crate::__private::checkpoint()
            }
            fn restore(state: ::std::vec::Vec<u8>) -> ::core::result::Result<(), ::std::string::String> {
                $crate::__private::restore(state)
            }
        }

        $crate::__private::bindings::export!(__KnasPolicyExport with_types_in $crate::__private::bindings);

        #[doc(hidden)]
        #[used]
        #[unsafe(link_section = "knas-policy-sdk")]
        static __KNAS_POLICY_SDK: [u8; $crate::__private::SDK_SECTION_LEN] = $crate::__private::SDK_SECTION;
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(params: &str) -> Settings {
        Settings {
            space: Space { name: "nas-bench-201".into(), ops: vec![], edges: vec![] },
            budget: Budget { scores: 1, trainings: 1 },
            max_batch: 1,
            params: params.into(),
            score: "aggregate".into(),
            measures: vec![
                MeasureInfo { name: "zico".into(), family: "kernel".into(), summary: String::new(), weight: 1.0 },
                MeasureInfo { name: "params".into(), family: "size".into(), summary: String::new(), weight: 0.0 },
            ],
            epochs: 1,
            max_epochs: 10,
        }
    }

    #[test]
    fn parameter_errors_name_the_key() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Params {
            population: u32,
            limits: Option<Limits>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Limits {
            max_params: u64,
        }
        let err = settings(r#"{"population": "many"}"#).parse_params::<Params>().unwrap_err();
        assert!(err.contains("population: invalid type: string \"many\""), "{err}");
        let err = settings(r#"{"population": 1, "limits": {"max_params": -1}}"#).parse_params::<Params>().unwrap_err();
        assert!(err.contains("limits.max_params: invalid value"), "{err}");
        let err = settings(r#"{"population": 1, "popul": 2}"#).parse_params::<Params>().unwrap_err();
        assert!(err.contains("unknown field `popul`"), "{err}");
        assert!(settings("").parse_params::<Params>().unwrap_err().contains("missing field `population`"));
        let err = settings(r#"{"population": 1} junk"#).parse_params::<Params>().unwrap_err();
        assert!(err.contains("trailing characters"), "{err}");
        assert_eq!(settings("{}").weights(), vec![("zico".to_owned(), 1.0)]);
    }

    #[test]
    fn epochs_outside_what_the_host_trains_are_refused_naming_the_key() {
        let s = settings("{}");
        assert_eq!(s.check_epochs(None), Ok(None));
        assert_eq!(s.check_epochs(Some(10)), Ok(Some(10)));
        for bad in [0, 11] {
            let err = s.check_epochs(Some(bad)).unwrap_err();
            assert!(err.contains(&format!("epochs: {bad} is outside 1..=10")), "{err}");
        }
    }

    /// Parameters shaped like the built-in policies' (defaults, options, a nested table).
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)]
    struct PolicyLike {
        population: u32,
        rank_by: Option<String>,
        max_params: Option<u64>,
        weights: std::collections::BTreeMap<String, f64>,
    }

    impl Default for PolicyLike {
        fn default() -> PolicyLike {
            PolicyLike { population: 20, rank_by: None, max_params: None, weights: Default::default() }
        }
    }

    proptest::proptest! {
        #![proptest_config(testing::fuzz_config())]

        /// Any text as parameters: parsed, or an error that quotes the parameters.
        #[test]
        fn fuzz_params_parse_or_quote_the_input(
            text in proptest::prop_oneof![
                "\\PC{0,80}",
                "\\{(\"(population|rank_by|max_params|weights|x)\": ?(-?[0-9]{1,20}|\"[a-z]{0,5}\"|null|\\{\\}|\\[\\]|[0-9]\\.[0-9]e[0-9]{1,3})(, )?){0,4}\\}",
            ]
        ) {
            if let Err(error) = settings(&text).parse_params::<PolicyLike>() {
                let shown = if text.trim().is_empty() { "{}" } else { text.as_str() };
                proptest::prop_assert!(error.starts_with(&format!("invalid policy parameters {shown}")), "{}", error);
            }
        }
    }
}

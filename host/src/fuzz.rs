//! Property tests ("fuzzing") of the parsers that read outside input: NB201 strings and
//! indices, YAML configuration, benchmark tables (the data file formats are in
//! `data::fuzz`, Katib requests in `katib::mapping`; `.wasm` bytes and HTTP paths in the
//! integration tests). Each target
//! feeds random input and random edits of a valid input; the property is always the same:
//! no panic, and every rejection is an error (naming the input where it has a name).
//!
//! The suite runs a few hundred cases per target; `KNAS_FUZZ_CASES=10000 cargo test -p
//! knas --lib fuzz` runs more (the figures in the README come from that).

use std::path::Path;

use proptest::prelude::*;

/// Cases per target: `KNAS_FUZZ_CASES`, else 200. Failures are not persisted into the tree.
pub(crate) use knas_policy_sdk::testing::fuzz_config as config;

/// Edits: (position, kind, byte) — kind 0 replaces, 1 inserts, 2 deletes, 3 truncates.
pub(crate) fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), 0u8..4, any::<u8>()), 1..6)
}

/// `valid` with `edits` applied.
pub(crate) fn mutate(valid: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for &(at, kind, byte) in edits {
        let at = if bytes.is_empty() { 0 } else { at % (bytes.len() + 1) };
        match kind {
            0 if at < bytes.len() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            _ => {}
        }
    }
    bytes
}

/// A valid NB201 architecture string and some text built from NB201-like pieces.
fn nb201_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("|".to_owned()),
        Just("+".to_owned()),
        Just("~".to_owned()),
        Just("none".to_owned()),
        Just("skip_connect".to_owned()),
        Just("nor_conv_1x1".to_owned()),
        Just("nor_conv_3x3".to_owned()),
        Just("avg_pool_3x3".to_owned()),
        "[0-9]{1,3}",
        "\\PC{0,3}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn nb201_strings_parse_or_say_why(
        text in prop_oneof![nb201_like(), any::<String>()],
        // Indices in the space and just past it as often as any other.
        index in prop_oneof![0..crate::space::NUM_ARCHS + 10, any::<usize>()],
        edits in edits()
    ) {
        let valid = crate::space::Arch::from_index(index % crate::space::NUM_ARCHS).expect("in range").to_string();
        let edited = String::from_utf8_lossy(&mutate(valid.as_bytes(), &edits)).into_owned();
        for input in [&text, &edited] {
            match input.parse::<crate::space::Arch>() {
                // Whatever parses prints back as an architecture that parses to itself.
                Ok(arch) => prop_assert_eq!(arch.to_string().parse::<crate::space::Arch>().ok(), Some(arch)),
                Err(error) => prop_assert!(!error.to_string().is_empty()),
            }
            if let Err(error) = input.parse::<crate::space::Candidate>() {
                prop_assert!(!error.to_string().is_empty());
            }
        }
        match crate::space::Arch::from_index(index) {
            Ok(arch) => prop_assert_eq!(arch.index(), index),
            Err(error) => prop_assert!(error.to_string().contains(&index.to_string()), "{}", error),
        }
    }

    #[test]
    fn service_configs_load_or_name_the_file(text in "\\PC{0,200}", edits in edits()) {
        let example = include_str!("../../examples/knas.yaml");
        let edited = mutate(example.as_bytes(), &edits);
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("knas.yaml");
        for input in [text.as_bytes(), &edited] {
            std::fs::write(&path, input).expect("written");
            if let Err(error) = crate::config::ServiceConfig::load(&path) {
                let message = error.to_string();
                prop_assert!(message.starts_with(&path.display().to_string()), "{}", message);
            }
            if let Ok(text) = std::str::from_utf8(input)
                && let Err(error) = crate::config::parse_yaml::<crate::config::RunConfig>(text, Path::new("run.yaml"))
            {
                prop_assert!(error.to_string().starts_with("run.yaml"), "{}", error);
            }
        }
    }

    #[test]
    fn benchmark_tables_parse_or_name_file_and_line(text in "\\PC{0,300}", edits in edits(), rows in 1usize..6, field in prop::option::of("[a-z_]{1,8}")) {
        let valid: String = (0..rows)
            .map(|i| format!("{{\"arch\": \"{}\", \"acc\": {}}}\n", crate::space::Arch::from_index(i * 977).expect("in range"), 90.0 + i as f64))
            .collect();
        let edited = String::from_utf8_lossy(&mutate(valid.as_bytes(), &edits)).into_owned();
        for input in [&text, &edited] {
            if let Err(error) = crate::table::BenchmarkTable::parse(input, Path::new("table.jsonl"), field.as_deref()) {
                prop_assert!(error.to_string().starts_with("table.jsonl"), "{}", error);
            }
        }
    }
}

//! `knas score`, `train`, `correlate` and `select`, end to end on the embedded data.

use predicates::prelude::*;
use serde_json::Value;

use crate::common::{TINY, TINY_TRAINING, json_lines, knas};

const ARCH: &str = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|";

fn score_jsonl(extra: &[&str]) -> Vec<Value> {
    let store = tempfile::tempdir().unwrap();
    let out = knas()
        .arg("score")
        .args(TINY)
        .args(["--reference", "6", "--format", "jsonl", "--store"])
        .arg(store.path().join("runs.db"))
        .args(extra)
        .assert()
        .success();
    json_lines(&out.get_output().stdout)
}

#[test]
fn score_prints_one_json_line_per_architecture_deterministically() {
    let first = score_jsonl(&["--sample", "3"]);
    assert_eq!(first.len(), 3);
    for row in &first {
        assert!(row["arch"].as_str().unwrap().starts_with('|'));
        // The default is the rank aggregate: a sum of log percentiles, at most 0.
        assert!(row["aggregate"].as_f64().unwrap() < 0.0, "{row}");
        assert!(row["seconds"].as_f64().unwrap() > 0.0);
    }
    let again = score_jsonl(&["--sample", "3"]);
    assert_eq!(again.len(), 3);
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["arch"], b["arch"]);
        assert_eq!(a["aggregate"], b["aggregate"], "same seed, same score");
    }
    // Several architectures in flight (the reference sample too): the same lines, in order.
    let parallel = score_jsonl(&["--sample", "3", "--workers", "3"]);
    assert_eq!(parallel.len(), 3);
    for (a, b) in first.iter().zip(&parallel) {
        assert_eq!((&a["arch"], &a["aggregate"]), (&b["arch"], &b["aggregate"]), "--workers 3");
    }
    // A smaller sample is a prefix of a larger one.
    let two = score_jsonl(&["--sample", "2"]);
    assert_eq!(two[1]["arch"], first[1]["arch"]);
    let other_seed = score_jsonl(&["--sample", "3", "--seed", "5"]);
    assert_ne!(other_seed[0]["arch"], first[0]["arch"]);
}

#[test]
fn score_prints_one_field_per_measure() {
    let all = score_jsonl(&["--sample", "2", "--measure", "all"]);
    for row in &all {
        for name in [
            "aggregate", "mgm", "mgm-batch", "kernel-alignment", "zico", "grad-norm", "snip", "synflow", "jacov", "naswot", "swap",
            "meco", "expressivity", "progressivity", "trainability", "params", "flops",
        ] {
            assert!(row.get(name).is_some(), "{name} missing from {row}");
        }
        assert!(row["params"].as_f64().unwrap() > 0.0);
    }
    let two = score_jsonl(&["--sample", "2", "--measure", "mgm,params"]);
    assert_eq!(two[0]["mgm"], all[0]["mgm"], "a measure's value does not depend on the others asked for");
    assert!(two[0].get("aggregate").is_none() && two[0].get("zico").is_none(), "{}", two[0]);
    knas()
        .args(["score", "--sample", "1", "--measure", "mgn"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("unknown measure \"mgn\""))
        .stderr(predicate::str::contains("mgm, mgm-batch, kernel-alignment"));
    knas().args(["score", "--sample", "1", "--threads=-2"]).assert().failure().stderr(predicate::str::contains("--threads"));
    // With `--score MEASURE`, that measure is what is printed, unless --measure says more.
    let by_mgm = score_jsonl(&["--sample", "2", "--score", "mgm"]);
    assert_eq!(by_mgm[0]["mgm"], all[0]["mgm"]);
    assert!(by_mgm[0].get("aggregate").is_none(), "{}", by_mgm[0]);
    // The aggregate asked for with another score is refused before the data is read.
    knas()
        .args(["score", "--sample", "1", "--score", "mgm", "--measure", "aggregate", "--dataset", "cifar10:/nonexistent"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("needs the experiment's score to be the aggregate"))
        .stderr(predicate::str::contains("nonexistent").not());
}

/// A log filter tracing cannot read is refused, naming the flag; with `--log-json` every
/// line on stderr is a JSON record.
#[test]
fn log_settings_are_checked_and_json_logs_are_only_json() {
    knas().args(["--log", "knas=loud", "score", "1", "--measure", "params"]).assert().code(2).stderr(predicate::str::contains("invalid value 'knas=loud' for '--log <LOG>'"));
    knas().env("KNAS_LOG", "knas=loud").args(["score", "1", "--measure", "params"]).assert().code(2).stderr(predicate::str::contains("--log"));
    // A dataset read from files says which files at the default log level; with JSON logs
    // the engine's record says it, and no plain line joins the records.
    let dir = tempfile::tempdir().unwrap();
    // IDX: two zero bytes, the type (8: unsigned bytes), the rank, big-endian sizes, data.
    let idx = |sizes: &[u32], data: &[u8]| -> Vec<u8> {
        let header = [0, 0, 8, sizes.len() as u8].into_iter().chain(sizes.iter().flat_map(|n| n.to_be_bytes()));
        header.chain(data.iter().copied()).collect()
    };
    let images: Vec<u8> = (0..16 * 8 * 8).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(dir.path().join("train-images-idx3-ubyte"), idx(&[16, 8, 8], &images)).unwrap();
    std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx(&[16], &[0, 1].repeat(8))).unwrap();
    let dataset = format!("mnist:{}", dir.path().display());
    let score = |extra: &[&str]| {
        let out = knas().args(extra).args(["score", "1", "--measure", "params", "--channels", "2", "--cells", "1", "--dataset", &dataset]).assert().success();
        String::from_utf8_lossy(&out.get_output().stderr).into_owned()
    };
    assert!(score(&[]).contains("read from train-images-idx3-ubyte"), "{}", score(&[]));
    let json = score(&["--log-json", "--log", "info"]);
    for line in json.lines() {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not a JSON record: {line:?} in\n{json}");
    }
    assert!(json.contains("engine ready") && json.contains("train-images-idx3-ubyte"), "{json}");
}

#[test]
fn score_reads_architecture_files_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("archs.txt");
    std::fs::write(&file, format!("# finalists\n{ARCH}\n\n42\n")).unwrap();
    let rows = score_jsonl(&["--archs", file.to_str().unwrap(), "--measure", "mgm-batch"]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["arch"], ARCH);
    assert_eq!(rows[1]["index"], 42);
    assert!(rows[1]["mgm-batch"].as_f64().unwrap() > 0.0);

    std::fs::write(&file, format!("{ARCH}\n|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|conv~2|\n")).unwrap();
    knas()
        .arg("score")
        .args(TINY)
        .args(["--archs", file.to_str().unwrap()])
        .assert()
        .failure()
        .stderr(predicate::str::contains("archs.txt:2"))
        .stderr(predicate::str::contains("unknown operation \"conv\" on edge 2→3"));
}

#[test]
fn score_table_lists_every_architecture() {
    knas()
        .args(["score", ARCH, "7", "--measure", "mgm,zico"])
        .args(TINY)
        .assert()
        .success()
        .stdout(predicate::str::contains(ARCH))
        .stdout(predicate::str::contains("zico"));
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    knas().arg("score").args(TINY).assert().failure().stderr(predicate::str::contains("no architectures given"));
    knas()
        .args(["score", "99999999999999999999999"])
        .args(TINY)
        .assert()
        .failure()
        .stderr(predicate::str::contains("architecture index 99999999999999999999999 is out of range 0..15625"));
    knas()
        .args(["score", "--sample", "1", "--dataset", "cifar10:/nonexistent"])
        .args(TINY)
        .assert()
        .failure()
        .stderr(predicate::str::contains("/nonexistent/data_batch_1.bin: not found"));
    knas()
        .args(["score", "--sample", "1", "--dataset", "imagenet:/x"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("unknown dataset"));
    knas()
        .args(["score", "--sample", "1", "--device", "tpu"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("expected auto, cpu, cuda or cuda:N"));
    // A bad experiment value names the flag that sets it, and the file when one was read.
    knas()
        .args(["score", "--sample", "1", "--batch-size", "0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("invalid experiment: score-batch must be at least 2, got 0 (set by --batch-size)"));
    knas()
        .args(["train", "0", "--train-batch-size", "0"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("train.batch-size must be at least 1, got 0 (set by --train-batch-size)"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("run.yaml");
    std::fs::write(&config, "experiment: { channels: 0 }\nsearch: { budget: 0 }\n").unwrap();
    let search = || {
        let mut cmd = knas();
        cmd.args(["search", "--policy", "random", "--store"]).arg(dir.path().join("runs.db")).arg("--config").arg(&config);
        cmd
    };
    search().assert().failure().stderr(predicate::str::contains(format!("invalid search settings (from the flags or {}): budget", config.display())));
    search()
        .args(["--budget", "3"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(format!("channels must be at least 1, got 0 (set by --channels or experiment.channels in {})", config.display())));
    // A policy limit names its flag and the file; one without a flag, the file alone.
    std::fs::write(&config, "search: { budget: 3 }\nlimits: { log-record-bytes: 200000 }\n").unwrap();
    search().args(["--policy-log-bytes-per-minute", "100000"]).assert().failure().stderr(predicate::str::contains(format!(
        "invalid policy limits: log-bytes-per-minute (100000) must be at least log-record-bytes (200000) (set by --policy-log-bytes-per-minute or limits.log-bytes-per-minute in {})",
        config.display()
    )));
    std::fs::write(&config, "search: { budget: 3 }\nlimits: { log-record-bytes: 2 }\n").unwrap();
    search().assert().failure().stderr(predicate::str::contains(format!(
        "invalid policy limits: log-record-bytes must be at least 16, got 2 (set by limits.log-record-bytes in {})",
        config.display()
    )));
    // Zero of something counted names its flag; a network too large to build is refused.
    knas().args(["score", "--sample", "0"]).assert().failure().stderr(predicate::str::contains("--sample must be at least 1, got 0"));
    knas().args(["select", "--candidates", "0"]).assert().failure().stderr(predicate::str::contains("--candidates must be at least 1, got 0"));
    knas().args(["select", "--candidates", "4", "--top-k", "5"]).assert().failure().stderr(predicate::str::contains("--top-k must be between 1 and --candidates (4), got 5"));
    knas()
        .args(["score", "0", "--channels", "256", "--cells", "32", "--measure", "params"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("channels 256 with cells 32 admit networks of up to 2662259044 weights"))
        .stderr(predicate::str::contains("(set by --channels and --cells)"));
    knas().args(["score", "0", "--workers", "100000"]).assert().failure().stderr(predicate::str::contains("100000 is not in 0..=256"));
    if !tch::Cuda::is_available() {
        knas()
            .args(["score", "--sample", "1", "--channels", "2", "--cells", "1", "--device", "cuda"])
            .assert()
            .failure()
            .stderr(predicate::str::contains("libtorch sees no CUDA device"));
    }
}

#[test]
fn corrupt_dataset_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // A 3-byte IDX header: too short.
    std::fs::write(dir.path().join("train-images-idx3-ubyte"), [0u8, 0, 8]).unwrap();
    std::fs::write(dir.path().join("train-labels-idx1-ubyte"), [0u8, 0, 8, 1, 0, 0, 0, 0]).unwrap();
    knas()
        .args(["score", "--sample", "1", "--dataset"])
        .arg(format!("fashion-mnist:{}", dir.path().display()))
        .args(TINY)
        .assert()
        .failure()
        .stderr(predicate::str::contains("train-images-idx3-ubyte: file is 3 bytes, too short for an IDX header"));
}

#[test]
fn train_reports_accuracy_and_losses() {
    let out = knas()
        .args(["train", ARCH, "--limit", "200", "--epochs", "1", "--format", "jsonl"])
        .args(TINY_TRAINING)
        .assert()
        .success();
    let rows = json_lines(&out.get_output().stdout);
    assert_eq!(rows.len(), 1);
    let accuracy = rows[0]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert!(rows[0]["heldout_loss"].as_f64().unwrap() > 0.0);
    assert!(rows[0]["train_loss"].as_f64().unwrap() > 0.0);
}

/// Settings of the correlate tests: tiny networks, few images, a small reference sample.
const QUICK: &[&str] = &["--limit", "64", "--reference", "6"];

#[test]
fn correlate_reports_every_measure_the_aggregate_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("corr.svg");
    let out = knas()
        .args(["correlate", "--sample", "4", "--train-seeds", "2", "--format", "json", "--plot"])
        .arg(&plot)
        .args(QUICK)
        .args(TINY)
        .assert()
        .success();
    let report: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["archs"], 4);
    assert_eq!(report["truth"]["kind"], "training");
    assert_eq!(report["measurements"].as_array().unwrap().len(), 4);
    let measures: Vec<&str> =
        report["correlations"].as_array().unwrap().iter().map(|c| c["measure"].as_str().unwrap()).collect();
    for wanted in ["aggregate", "aggregate, in-sample ranks (AZ-NAS)", "mgm", "zico", "naswot", "meco", "trainability", "params", "seed 0 vs seed 1 (noise floor)"] {
        assert!(measures.contains(&wanted), "{wanted} missing from {measures:?}");
    }
    for c in report["correlations"].as_array().unwrap() {
        // A bootstrap interval comes with a defined ρ and brackets it (with four
        // architectures, a measure with ties may have too few usable resamples for one).
        if let (Some(rho), Some(_)) = (c["spearman"].as_f64(), c["spearman_95"].as_array()) {
            let (lo, hi) = (c["spearman_95"][0].as_f64().unwrap(), c["spearman_95"][1].as_f64().unwrap());
            assert!(-1.0 <= lo && lo <= rho + 1e-9 && rho <= hi + 1e-9 && hi <= 1.0, "{c}");
        }
    }
    for m in report["measurements"].as_array().unwrap() {
        assert_eq!(m["accuracy"].as_array().unwrap().len(), 2);
        assert_eq!(m["values"].as_object().unwrap().len(), 16, "every measure: {m}");
    }
    let aggregate = report["correlations"].as_array().unwrap().iter().find(|c| c["measure"] == "aggregate").unwrap();
    assert!(aggregate["spearman_95"].is_array(), "{aggregate}");
    let (rho, lo, hi) = (aggregate["spearman"].as_f64(), aggregate["spearman_95"][0].as_f64(), aggregate["spearman_95"][1].as_f64());
    assert!(matches!((rho, lo, hi), (Some(r), Some(l), Some(h)) if l <= r + 1e-9 && r <= h + 1e-9), "the aggregate's interval brackets its rho: {aggregate}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<svg") && svg.contains("aggregate") && svg.contains("zico"), "not the expected SVG");
}

/// A training that fails (here an injected panic, as a diverging network's NaN loss would
/// fail it) leaves its architecture out, named in the report; the others are correlated.
#[test]
fn correlate_leaves_out_an_architecture_whose_training_failed() {
    let out = knas()
        .env("FAILPOINTS", "engine::train=1*panic(diverged)->off")
        .args(["correlate", "--sample", "4", "--train-seeds", "2", "--measures", "params", "--format", "json"])
        .args(QUICK)
        .args(TINY)
        .assert()
        .success();
    let report: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let failed = report["failed_trainings"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report}");
    assert!(failed[0]["error"].as_str().unwrap().contains("training seed 0") && failed[0]["error"].as_str().unwrap().contains("diverged"), "{report}");
    let measured: Vec<&Value> = report["measurements"].as_array().unwrap().iter().collect();
    assert_eq!((report["archs"].as_u64(), measured.len()), (Some(3), 3));
    assert!(measured.iter().all(|m| m["arch"] != failed[0]["arch"] && m["accuracy"].as_array().unwrap().len() == 2), "{report}");
    // The table says so too.
    let out = knas()
        .env("FAILPOINTS", "engine::train=1*panic(diverged)->off")
        .args(["correlate", "--sample", "4", "--train-seeds", "1", "--measures", "params"])
        .args(QUICK)
        .args(TINY)
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("Left out, their training failed (1):") && text.contains("diverged"), "{text}");
}

/// Writes a benchmark table: every architecture of `archs` with a made-up accuracy.
fn table(dir: &std::path::Path, archs: &[(String, f64)]) -> std::path::PathBuf {
    let path = dir.join("table.jsonl");
    let lines: Vec<String> = archs.iter().map(|(arch, acc)| serde_json::json!({"arch": arch, "acc": acc}).to_string()).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

#[test]
fn correlate_judges_against_a_published_table_without_training() {
    let dir = tempfile::tempdir().unwrap();
    // Six cells; accuracy grows with the number of convolutions, a truth the measures see.
    let archs: Vec<(String, f64)> = [
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", 10.0),
        ("|skip_connect~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|", 40.0),
        ("|nor_conv_1x1~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|", 60.0),
        ("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|", 70.0),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|nor_conv_3x3~2|", 80.0),
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 90.0),
    ]
    .iter()
    .map(|(a, acc)| ((*a).to_owned(), *acc))
    .collect();
    let path = table(dir.path(), &archs);
    let out = knas()
        .args(["correlate", "--sample", "6", "--measures", "params,flops,synflow", "--format", "json", "--table"])
        .arg(&path)
        .args(QUICK)
        .args(TINY)
        .assert()
        .success();
    let report: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["truth"]["kind"], "table");
    assert_eq!(report["truth"]["field"], "acc");
    let params = report["correlations"].as_array().unwrap().iter().find(|c| c["measure"] == "params").unwrap();
    assert!(params["spearman"].as_f64().unwrap() > 0.9, "{params}");
    assert_eq!(params["against"], "accuracy");
    assert!(report["correlations"].as_array().unwrap().iter().all(|c| c["against"] == "accuracy"), "no loss without training");
    assert_eq!(report["measurements"].as_array().unwrap().len(), archs.len());
    for m in report["measurements"].as_array().unwrap() {
        let acc = archs.iter().find(|(a, _)| a.as_str() == m["arch"].as_str().unwrap()).unwrap().1;
        assert_eq!(m["accuracy"], serde_json::json!([acc]));
    }
    // `--score` picks a search's score; the report's aggregate row stays the aggregate.
    let scored = knas()
        .args(["correlate", "--sample", "6", "--measures", "params,flops,synflow", "--format", "json", "--score", "mgm", "--table"])
        .arg(&path)
        .args(QUICK)
        .args(TINY)
        .assert()
        .success();
    let scored: Value = serde_json::from_slice(&scored.get_output().stdout).unwrap();
    let aggregate = |r: &Value| r["correlations"].as_array().unwrap().iter().find(|c| c["measure"] == "aggregate").unwrap().clone();
    assert_eq!(aggregate(&scored), aggregate(&report));
    assert!(aggregate(&report)["spearman"].is_f64(), "{report}");
    // A plot that cannot be written fails the command, but after the report is printed.
    let unplotted = knas()
        .args(["correlate", "--sample", "6", "--measures", "params,flops,synflow", "--format", "json", "--table"])
        .arg(&path)
        .arg("--plot")
        .arg(dir.path().join("no-such-folder/corr.svg"))
        .args(QUICK)
        .args(TINY)
        .assert()
        .failure()
        .stderr(predicate::str::contains("cannot write the plot to").and(predicate::str::contains("no-such-folder/corr.svg")));
    let unplotted: Value = serde_json::from_slice(&unplotted.get_output().stdout).unwrap();
    assert_eq!(unplotted["measurements"], report["measurements"]);
    // Bad tables are named with the line and the problem.
    std::fs::write(&path, format!("{{\"arch\": \"{ARCH}\", \"acc\": 1}}\n{{\"arch\": \"{ARCH}\", \"acc\": 2}}\n")).unwrap();
    knas()
        .args(["correlate", "--sample", "2", "--table"])
        .arg(&path)
        .args(TINY)
        .assert()
        .failure()
        .stderr(predicate::str::contains("table.jsonl:2: duplicate architecture"));
    std::fs::write(&path, format!("{{\"arch\": \"{ARCH}\", \"acc\": 1}}\n{{\"arch\": 3}}\n")).unwrap();
    knas()
        .args(["correlate", "--sample", "2", "--table"])
        .arg(&path)
        .args(TINY)
        .assert()
        .failure()
        .stderr(predicate::str::contains("table.jsonl:2: missing the accuracy field `acc`"));
    knas()
        .args(["correlate", "--sample", "2", "--score", "params", "--reference", "0", "--table"])
        .arg(&path)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--reference must be at least 2 here, got 0"));
    knas()
        .args(["correlate", "--sample", "2", "--measures", "mgn", "--table"])
        .arg(&path)
        .assert()
        .failure()
        .stderr(predicate::str::contains("unknown measure \"mgn\""));
}

#[test]
fn correlate_reuses_an_earlier_reports_training_as_truth() {
    let dir = tempfile::tempdir().unwrap();
    let first = knas()
        .args(["correlate", "--sample", "3", "--train-seeds", "1", "--measures", "naswot", "--format", "json"])
        .args(QUICK)
        .args(TINY)
        .assert()
        .success();
    let truth_file = dir.path().join("truth.json");
    std::fs::write(&truth_file, &first.get_output().stdout).unwrap();
    let first: Value = serde_json::from_slice(&first.get_output().stdout).unwrap();
    assert_eq!(first["measures"], serde_json::json!(["naswot"]));

    let again = knas()
        .args(["correlate", "--measures", "jacov,naswot", "--epochs", "3", "--format", "json", "--truth"])
        .arg(&truth_file)
        .args(QUICK)
        .args(TINY)
        .assert()
        .success();
    let again: Value = serde_json::from_slice(&again.get_output().stdout).unwrap();
    assert_eq!(again["archs"], 3);
    assert_eq!(again["truth"]["kind"], "report");
    assert_eq!(again["truth"]["epochs"], 1, "the training described is the truth's, not this run's --epochs");
    assert_eq!(again["measures"], serde_json::json!(["jacov", "naswot"]), "in the order asked for");
    assert_eq!(again["measurements"].as_array().unwrap().len(), 3);
    assert_eq!(first["measurements"].as_array().unwrap().len(), 3);
    for (a, b) in first["measurements"].as_array().unwrap().iter().zip(again["measurements"].as_array().unwrap()) {
        assert_eq!(a["arch"], b["arch"]);
        assert_eq!(a["accuracy"], b["accuracy"], "trained results are taken, not recomputed");
        assert_eq!(a["values"]["naswot"], b["values"]["naswot"], "same seed and batch: same value");
    }

    // A truth for other networks or data is refused, naming the file and the difference.
    assert_eq!(TINY[..2], ["--channels", "2"], "TINY[2..] below is TINY without its channels");
    let refused = |extra: &[&str], channels: &str, message: &str| {
        knas()
            .args(["correlate", "--channels", channels, "--truth"])
            .arg(&truth_file)
            .args(&TINY[2..])
            .args(extra)
            .assert()
            .failure()
            .stderr(predicate::str::contains(message));
    };
    refused(&["--limit", "64"], "3", "truth.json: trained with --channels 2, this run has --channels 3");
    refused(&[], "2", "trained with --limit 64, this run has --limit (none)");
    std::fs::write(&truth_file, "{\"archs\": 3}").unwrap();
    refused(&[], "2", "truth.json is not a `knas correlate --format json` report");
}

#[test]
fn select_is_a_recorded_run_of_the_built_in_random_policy() {
    let dir = tempfile::tempdir().unwrap();
    let select = |store: &str, extra: &[&str]| -> Value {
        let out = knas()
            .args(["select", "--candidates", "5", "--top-k", "2", "--limit", "64", "--reference", "6", "--format", "json", "--store"])
            .arg(dir.path().join(store))
            .args(TINY)
            .args(extra)
            .assert()
            .success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    };
    let selection = select("runs.db", &[]);
    let candidates = selection["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 5);
    let scores: Vec<f64> = candidates.iter().map(|c| c["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ranked by score: {scores:?}");
    let finalists = selection["finalists"].as_array().unwrap();
    assert_eq!(finalists.len(), 2);
    assert_eq!(finalists[0]["arch"], candidates[0]["arch"], "the best-scored is trained");
    assert_eq!(finalists[1]["arch"], candidates[1]["arch"]);
    assert!(finalists.iter().all(|f| f["heldout_accuracy"].is_f64()));
    assert!(finalists.iter().any(|f| f["arch"] == selection["winner"]));

    // The selection is a run in the store, driven by the random policy the binary carries.
    let run = selection["run"].as_str().unwrap();
    assert!(run.starts_with("select-"), "{run}");
    let out = knas().args(["runs", "--format", "json", "--store"]).arg(dir.path().join("runs.db")).assert().success();
    let runs: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let listed = runs.as_array().unwrap().iter().find(|r| r["name"] == run).unwrap_or_else(|| panic!("{run} not in {runs}"));
    assert!(listed["policy"].as_str().unwrap().starts_with("random@"), "{listed}");
    assert_eq!(listed["status"], "done");
    // Reading a store that is not there is an error, not a new empty store.
    let missing = dir.path().join("run.db");
    knas().args(["runs", "--store"]).arg(&missing).assert().failure().stderr(predicate::str::contains("no run store at"));
    assert!(!missing.exists());
    // Nor is an empty file (or any other that is not SQLite) made into one.
    std::fs::write(&missing, b"").unwrap();
    knas().args(["runs", "--store"]).arg(&missing).assert().failure().stderr(predicate::str::contains("is not a run store: not an SQLite database"));
    assert_eq!(std::fs::metadata(&missing).unwrap().len(), 0);

    // The same selection again is answered from the store, result for result (only this
    // command's own wall time differs): with every measurement and training made to panic,
    // so that anything computed again would show.
    let out = knas()
        .env("FAILPOINTS", "measures::measure=panic(computed again);engine::train=panic(computed again)")
        .args(["select", "--candidates", "5", "--top-k", "2", "--limit", "64", "--reference", "6", "--format", "json", "--store"])
        .arg(dir.path().join("runs.db"))
        .args(TINY)
        .assert()
        .success();
    let mut again: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let mut first = selection.clone();
    for report in [&mut again, &mut first] {
        report.as_object_mut().unwrap().remove("wall_seconds");
    }
    assert_eq!(again, first);
    // Several architectures in flight measure the same values.
    let out = knas()
        .args(["select", "--candidates", "5", "--top-k", "2", "--limit", "64", "--reference", "6", "--format", "json", "--workers", "2", "--log", "debug", "--store"])
        .arg(dir.path().join("workers.db"))
        .args(TINY)
        .assert()
        .success();
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("measured the proposal's new scores together"));
    let together: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(together["candidates"], selection["candidates"]);
    assert_eq!(together["winner"], selection["winner"]);
}

#[test]
fn a_libtorch_panic_is_that_evaluations_error_and_the_search_goes_on() {
    // tch's infallible calls (the forward pass) panic on a libtorch error such as a device
    // out of memory; injected here where measuring and training start.
    for (failpoint, message) in [("measures::measure=panic", "measuring panicked"), ("engine::train=panic", "training panicked")] {
        let dir = tempfile::tempdir().unwrap();
        let out = knas()
            .env("FAILPOINTS", failpoint)
            // A single measure as the score: no reference sample, which would fail first.
            .args(["search", "--policy", "random", "--budget", "2", "--top-k", "1", "--score", "params", "--limit", "64", "--format", "json", "--store"])
            .arg(dir.path().join("runs.db"))
            .args(TINY)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("evaluation failed: {message}")), "{stderr}");
        // The search went on to its end and reported...
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["recorded"]["scores"], 2, "{report}");
        // ...but with its only training failed there is no winner: the command says so in
        // its exit status, after the report.
        let trainings_ok = message == "measuring panicked";
        assert_eq!(out.status.success(), trainings_ok, "{stderr}");
        if !trainings_ok {
            assert_eq!(report["recorded"]["trainings"], 1, "{report}");
            assert!(stderr.contains("no training succeeded in run \"random\": all 1 failed (the first: training panicked"), "{stderr}");
        }
    }
    // `select` the same.
    let dir = tempfile::tempdir().unwrap();
    knas()
        .env("FAILPOINTS", "engine::train=panic")
        .args(["select", "--candidates", "2", "--top-k", "2", "--score", "params", "--limit", "64", "--format", "json", "--store"])
        .arg(dir.path().join("runs.db"))
        .args(TINY)
        .assert()
        .failure()
        .stdout(predicate::str::contains("\"finalists\""))
        .stderr(predicate::str::contains("all 2 failed (the first: training panicked"));
}

#[test]
fn help_explains_the_commands() {
    knas()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("gradient kernel"))
        .stdout(predicate::str::contains("correlate"));
    knas()
        .args(["score", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--archs <FILE>"))
        .stdout(predicate::str::contains("trainability"))
        .stdout(predicate::str::contains("--reference <N>"))
        .stdout(predicate::str::contains("--epochs").not());
    // Each command offers only the flags it uses: `train` does not score.
    knas()
        .args(["train", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--epochs <EPOCHS>"))
        .stdout(predicate::str::contains("--reference").not());
    knas().args(["train", "7", "--score", "mgm"]).assert().failure().stderr(predicate::str::contains("unexpected argument '--score'"));
}

#[test]
fn a_closed_stdout_ends_quietly_and_errors_say_each_cause_once() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_knas"))
        .args(["score", "--sample", "15625", "--measure", "params", "--format", "jsonl"])
        .args(TINY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("\"params\""), "{first}");
    // The reader is gone (as with `| head -1`): the next write ends the process the way
    // it ends other Unix tools (SIGPIPE), without an error message or a panic.
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert!(output.status.success() || output.status.signal() == Some(13), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");

    let missing = knas().args(["serve", "--config", "/nonexistent/knas.yaml"]).assert().failure();
    let stderr = String::from_utf8_lossy(&missing.get_output().stderr).into_owned();
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/knas.yaml"), "{stderr}");

    // A table in a folder that does not exist is named, not reported as a bare OS error.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("knas.yaml");
    std::fs::write(&config, "listen: 127.0.0.1:0\npolicy-dir: policies\nstore: runs.db\ntable: no-such-folder/table.jsonl\n").unwrap();
    let bad_table = knas().current_dir(dir.path()).args(["serve", "--config", "knas.yaml"]).assert().failure();
    let stderr = String::from_utf8_lossy(&bad_table.get_output().stderr).into_owned();
    assert!(stderr.contains("no-such-folder/table.jsonl"), "{stderr}");
}

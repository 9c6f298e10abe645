//! `knas score`, `train`, `correlate` and `select`, end to end on the embedded data.

use predicates::prelude::*;
use serde_json::Value;

use crate::common::{TINY, json_lines, knas};

const ARCH: &str = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|";

fn score_jsonl(extra: &[&str]) -> Vec<Value> {
    let out = knas().arg("score").args(TINY).args(["--format", "jsonl"]).args(extra).assert().success();
    json_lines(&out.get_output().stdout)
}

#[test]
fn score_prints_one_json_line_per_architecture_deterministically() {
    let first = score_jsonl(&["--sample", "3"]);
    assert_eq!(first.len(), 3);
    for row in &first {
        assert!(row["arch"].as_str().unwrap().starts_with('|'));
        assert!(row["score"].as_f64().unwrap() >= 0.0);
        assert!(row["seconds"].as_f64().unwrap() > 0.0);
        assert_eq!(row["mode"], "per-sample");
    }
    let again = score_jsonl(&["--sample", "3"]);
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["arch"], b["arch"]);
        assert_eq!(a["score"], b["score"], "same seed, same score");
    }
    // A smaller sample is a prefix of a larger one.
    let two = score_jsonl(&["--sample", "2"]);
    assert_eq!(two[1]["arch"], first[1]["arch"]);
    let other_seed = score_jsonl(&["--sample", "3", "--seed", "5"]);
    assert_ne!(other_seed[0]["arch"], first[0]["arch"]);
}

#[test]
fn score_reads_architecture_files_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("archs.txt");
    std::fs::write(&file, format!("# finalists\n{ARCH}\n\n42\n")).unwrap();
    let rows = score_jsonl(&["--archs", file.to_str().unwrap(), "--mode", "batch"]);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["arch"], ARCH);
    assert_eq!(rows[1]["index"], 42);
    assert_eq!(rows[1]["mode"], "batch");

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
        .args(["score", ARCH, "7"])
        .args(TINY)
        .assert()
        .success()
        .stdout(predicate::str::contains(ARCH))
        .stdout(predicate::str::contains("MGM"));
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    knas().arg("score").args(TINY).assert().failure().stderr(predicate::str::contains("no architectures given"));
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
        .args(TINY)
        .assert()
        .success();
    let rows = json_lines(&out.get_output().stdout);
    assert_eq!(rows.len(), 1);
    let accuracy = rows[0]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert!(rows[0]["heldout_loss"].as_f64().unwrap() > 0.0);
    assert!(rows[0]["train_loss"].as_f64().unwrap() > 0.0);
}

#[test]
fn correlate_reports_both_modes_and_baselines_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("corr.svg");
    let out = knas()
        .args(["correlate", "--sample", "4", "--train-seeds", "2", "--limit", "64", "--format", "json", "--plot"])
        .arg(&plot)
        .args(TINY)
        .assert()
        .success();
    let report: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["archs"], 4);
    assert_eq!(report["measurements"].as_array().unwrap().len(), 4);
    let measures: Vec<&str> =
        report["correlations"].as_array().unwrap().iter().map(|c| c["measure"].as_str().unwrap()).collect();
    for wanted in [
        "MGM (per-sample)",
        "MGM (batch)",
        "snip (baseline)",
        "synflow (baseline)",
        "jacov (baseline)",
        "naswot (baseline)",
        "params (baseline)",
        "seed 0 vs seed 1 (noise floor)",
    ] {
        assert!(measures.contains(&wanted), "{wanted} missing from {measures:?}");
    }
    for c in report["correlations"].as_array().unwrap() {
        // Every defined ρ comes with a bootstrap interval around it.
        if let Some(rho) = c["spearman"].as_f64() {
            let (lo, hi) = (c["spearman_95"][0].as_f64().unwrap(), c["spearman_95"][1].as_f64().unwrap());
            assert!(-1.0 <= lo && lo <= rho + 1e-9 && rho <= hi + 1e-9 && hi <= 1.0, "{c}");
        }
    }
    for m in report["measurements"].as_array().unwrap() {
        assert_eq!(m["accuracy"].as_array().unwrap().len(), 2);
        assert_eq!(m["scores"].as_array().unwrap().len(), 2);
        assert_eq!(m["baselines"].as_array().unwrap().len(), 4);
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Spearman"), "not the expected SVG");
}

#[test]
fn correlate_reuses_an_earlier_reports_training_as_truth() {
    let dir = tempfile::tempdir().unwrap();
    let first = knas()
        .args(["correlate", "--sample", "3", "--train-seeds", "1", "--limit", "64", "--modes", "per-sample"])
        .args(["--baselines", "naswot", "--format", "json"])
        .args(TINY)
        .assert()
        .success();
    let truth_file = dir.path().join("truth.json");
    std::fs::write(&truth_file, &first.get_output().stdout).unwrap();
    let first: Value = serde_json::from_slice(&first.get_output().stdout).unwrap();
    assert_eq!(first["baselines"], serde_json::json!(["naswot"]));

    let again = knas()
        .args(["correlate", "--limit", "64", "--modes", "per-sample", "--baselines", "jacov,synflow"])
        .args(["--epochs", "3", "--format", "json", "--truth"])
        .arg(&truth_file)
        .args(TINY)
        .assert()
        .success();
    let again: Value = serde_json::from_slice(&again.get_output().stdout).unwrap();
    assert_eq!(again["archs"], 3);
    assert_eq!(again["epochs"], 1, "the training described is the truth's, not this run's --epochs");
    assert_eq!(again["baselines"], serde_json::json!(["jacov", "synflow"]), "in the order asked for");
    for (a, b) in first["measurements"].as_array().unwrap().iter().zip(again["measurements"].as_array().unwrap()) {
        assert_eq!(a["arch"], b["arch"]);
        assert_eq!(a["accuracy"], b["accuracy"], "trained results are taken, not recomputed");
        assert_eq!(a["scores"], b["scores"], "same seed and batch: same MGM");
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
fn select_trains_the_top_k_and_picks_a_winner_among_them() {
    let out = knas()
        .args(["select", "--candidates", "5", "--top-k", "2", "--limit", "64", "--format", "json"])
        .args(TINY)
        .assert()
        .success();
    let selection: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let candidates = selection["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 5);
    let scores: Vec<f64> = candidates.iter().map(|c| c["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ranked by MGM: {scores:?}");
    let finalists = selection["finalists"].as_array().unwrap();
    assert_eq!(finalists.len(), 2);
    assert_eq!(finalists[0]["arch"], candidates[0]["arch"]);
    assert!(finalists.iter().any(|f| f["arch"] == selection["winner"]));
}

#[test]
fn help_explains_the_commands() {
    knas()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("gradient kernel"))
        .stdout(predicate::str::contains("correlate"));
    knas().args(["score", "--help"]).assert().success().stdout(predicate::str::contains("--archs <FILE>"));
}

//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;

/// Settings that make every network tiny and every dataset small.
pub const TINY: &[&str] = &["--channels", "2", "--cells", "1", "--batch-size", "4", "--threads", "1", "--device", "cpu"];

/// The `knas` binary under test.
pub fn knas() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_knas"));
    cmd.env_remove("KNAS_LOG");
    cmd
}

/// Parses stdout as JSON lines.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_owned()
}

/// Where the test build of the guests puts cargo's output.
fn guest_target() -> PathBuf {
    workspace().join("target").join("guests")
}

/// Every guest the tests use: the built-in policies, the worked example and the fixtures.
const GUESTS: &[&str] =
    &["policies/random", "policies/evolution", "policies/pruning", "examples/hill-climb", "tests/guests/hostile", "tests/guests/wrong-version"];

/// The component for policy `name`, built (once per test process) by the real
/// `knas policy build`.
pub fn policy(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let out = workspace().join("target").join("test-policies");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_knas"))
            .current_dir(workspace())
            .args(["policy", "build", "--profile", "policy", "--allow-contract-mismatch", "--out-dir"])
            .arg(&out)
            .arg("--target-dir")
            .arg(guest_target())
            .args(GUESTS)
            .status()
            .expect("knas runs");
        assert!(status.success(), "knas policy build failed for the test guests");
        out
    });
    dir.join(format!("{name}.wasm"))
}

/// The core module cargo produced for a guest crate (before it became a component).
pub fn core_module(lib_name: &str) -> PathBuf {
    policy("random");
    guest_target().join("wasm32-unknown-unknown").join("policy").join(format!("{lib_name}.wasm"))
}

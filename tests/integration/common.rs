//! Helpers shared by the integration tests.

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

//! `cargo xtask test`: unit tests unprivileged, then the integration tests as root.

use std::process::Stdio;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    bootstrap, dist,
    shell::{self, as_root, run, say},
};

/// Runs the whole suite; `filter` narrows the integration tests.
pub fn run_all(filter: Option<&str>) -> anyhow::Result<()> {
    bootstrap::test_tools()?;
    say("unit tests");
    run(shell::cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "sticky-ebpf",
        "--exclude",
        "sticky-tests",
    ]))?;
    say("integration tests (root, one network namespace per test)");
    run(shell::cargo().args([
        "build",
        "--package",
        "sticky-user",
        "--package",
        "sticky-example-rust",
        "--package",
        "sticky-example-quic",
    ]))?;
    // The package and static binary tests install what `cargo xtask dist` makes.
    dist::build()?;
    let sticky = shell::workspace_root().join("target/debug/sticky");
    let mut failed = Vec::new();
    for test in integration_test_binaries()? {
        let mut command = as_root(&test);
        command.env("STICKY_BIN", &sticky).args(filter);
        command.env("STICKY_SYSTEMD_ROOT", bootstrap::container_root_dir());
        command.env("STICKY_DIST", dist::dist_dir());
        if let Err(err) = run(&mut command) {
            failed.push(err.to_string());
        }
    }
    if !failed.is_empty() {
        bail!("integration tests failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

/// Builds the integration tests and returns their executables.
fn integration_test_binaries() -> anyhow::Result<Vec<String>> {
    let output = shell::cargo()
        .args([
            "test",
            "--package",
            "sticky-tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot build the integration tests")?;
    if !output.status.success() {
        bail!("building the integration tests failed");
    }
    let binaries = test_executables(&String::from_utf8_lossy(&output.stdout));
    if binaries.is_empty() {
        bail!("no integration test executables were built");
    }
    Ok(binaries)
}

/// The integration test executables in cargo's JSON messages (one per line): test-profile
/// artifacts of `test` targets, not the library's unit tests or other binaries.
fn test_executables(messages: &str) -> Vec<String> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["profile"]["test"] == true
        })
        .filter(|message| {
            message["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .filter_map(|message| Some(message["executable"].as_str()?.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_integration_test_executables_are_run() {
        let artifact = |kind: &str, test: bool, executable: &str| {
            serde_json::json!({
                "reason": "compiler-artifact",
                "target": { "kind": [kind] },
                "profile": { "test": test },
                "executable": executable,
            })
            .to_string()
        };
        let messages = [
            artifact("test", true, "/t/deps/workers-1"),
            artifact("lib", true, "/t/deps/sticky_tests-2"),
            artifact("bin", false, "/t/debug/sticky-double"),
            r#"{"reason":"build-finished","success":true}"#.to_owned(),
            "not json".to_owned(),
            artifact("test", true, "/t/deps/upgrade-3"),
        ]
        .join("\n");
        assert_eq!(test_executables(&messages), ["/t/deps/workers-1", "/t/deps/upgrade-3"]);
    }
}

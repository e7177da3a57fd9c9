//! The `murmur-sim` binary's own edges.

use std::process::Command;

#[test]
fn an_invalid_engine_log_filter_is_refused_before_anything_runs() {
    let output = Command::new(env!("CARGO_BIN_EXE_murmur-sim"))
        .args(["run", "simulations/pause.toml", "--seed", "1"])
        .env("MURMUR_SIM_LOG", "murmur_core=inf")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("MURMUR_SIM_LOG=\"murmur_core=inf\" is not a log filter"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing ran");
}

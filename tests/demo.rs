//! `murmur demo`: three nodes converge after a cut and a heal, and the
//! command says so and exits 0.

use std::process::{Command, Stdio};
use std::time::Duration;

/// The demo's own bound is 30 s for convergence plus set-up; this one
/// only stops a hung test.
const PATIENCE: Duration = Duration::from_secs(90);

#[test]
fn the_demo_converges_and_exits_zero() {
    let child = Command::new(env!("CARGO_BIN_EXE_murmur"))
        .args(["demo", "--phase-secs", "1"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn murmur demo");
    let pid = child.id().to_string();
    // Read the output on another thread, so that a full pipe never stalls
    // the demo and a hung demo can still be stopped.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match finished.recv_timeout(PATIENCE) {
        Ok(output) => output.expect("murmur demo output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("murmur demo still running after {PATIENCE:?}");
        }
    };
    let status = output.status;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "cutting C off",
        "C cut off",
        "healing",
        "Converged",
        "Same heads and same content on all three",
    ] {
        assert!(stdout.contains(expected), "no `{expected}` in:\n{stdout}");
    }
}

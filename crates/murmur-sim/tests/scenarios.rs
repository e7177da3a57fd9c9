//! Every scenario file parses, opens with a comment saying what it tests,
//! and gives every seed parameters within its ranges.

use std::path::PathBuf;

use murmur_sim::{Params, Scenario};

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../simulations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the simulations directory exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_scenario_file_parses_and_opens_with_a_comment() {
    let files = scenario_files();
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for required in [
        "partition-halves",
        "majorities-ring",
        "bridge",
        "flaky-links",
        "crash-restart",
        "clock-jump",
        "many-docs",
        "swarm",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "{required}.toml is missing"
        );
    }
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(
            text.starts_with("# "),
            "{} must open with a comment on what it tests",
            path.display()
        );
        let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        for seed in 0..20 {
            let params = Params::resolve(&scenario, seed);
            let (low, high) = scenario.nodes.bounds();
            assert!((low..=high).contains(&(params.nodes as u64)));
            assert!(params.weights.total() > 0);
        }
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let error = Scenario::load(std::path::Path::new("no/such/scenario.toml")).expect_err("fails");
    assert!(
        error.to_string().contains("no/such/scenario.toml"),
        "{error}"
    );
}

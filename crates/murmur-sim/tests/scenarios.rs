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

#[test]
fn every_planted_bug_names_scenarios_that_exist_and_every_scenario_has_a_baseline() {
    let names: Vec<String> = scenario_files()
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    for bug in murmur_sim::PlantedBug::all() {
        assert!(
            !bug.caught_by().is_empty(),
            "{} names no scenario",
            bug.name()
        );
        for scenario in bug.caught_by() {
            assert!(
                names.iter().any(|n| n == scenario),
                "{} names {scenario}.toml, which does not exist",
                bug.name()
            );
        }
        assert_eq!(murmur_sim::PlantedBug::from_name(bug.name()), Some(bug));
    }
    let baselines =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../simulations/baselines.json");
    let text = std::fs::read_to_string(baselines).expect("simulations/baselines.json exists");
    let json: serde_json::Value = serde_json::from_str(&text).expect("it parses");
    for name in &names {
        let scenario = Scenario::load(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../../simulations/{name}.toml")),
        )
        .expect("parses");
        assert!(
            json["scenarios"].get(&scenario.name).is_some(),
            "{name} has no baseline: run `murmur-sim ci --seeds 50 --write-baselines`"
        );
    }
}

#[test]
fn anti_entropy_can_be_off_only_on_a_network_that_loses_nothing() {
    let lossy = "anti_entropy = false\n[network]\nloss = 0.1\n[nemesis]\nfaults = []";
    let error = Scenario::parse(lossy, std::path::Path::new("x.toml"), "x").expect_err("rejected");
    assert!(error.to_string().contains("anti_entropy"), "{error}");
    let clean = "anti_entropy = false\n[network]\nloss = 0.0\n[nemesis]\nfaults = []";
    Scenario::parse(clean, std::path::Path::new("x.toml"), "x").expect("accepted");
}

//! One seed decides everything: the same seed gives a byte-identical
//! trace, and a saved repro replays to the same trace.

use std::path::Path;

use murmur_sim::{run_seed, sim, PlantedBug, Repro, RunOptions, Scenario};

/// Every fault kind, several documents and every operation kind, kept small
/// so the test runs quickly in a debug build.
fn busy_scenario() -> Scenario {
    let text = r#"
        nodes = 4
        operations = 80
        chaos_ms = 6000
        liveness_ms = 30000
        group_commit_ms = [0, 30]
        [network]
        loss = [0.0, 0.1]
        duplicate = [0.0, 0.1]
        [nemesis]
        tracks = 2
        gap_ms = [100, 1000]
        duration_ms = [200, 2000]
        [workload]
        documents = 2
        create = 1
    "#;
    Scenario::parse(text, Path::new("busy.toml"), "busy").expect("the scenario parses")
}

#[test]
fn the_same_seed_gives_the_same_trace_hash() {
    let scenario = busy_scenario();
    for seed in [1, 2, 3] {
        let first = run_seed(&scenario, seed, RunOptions::default());
        let second = run_seed(&scenario, seed, RunOptions::default());
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed}");
        assert_eq!(first.history, second.history, "seed {seed}");
        assert!(first.stats.trace_events > 100, "the trace records the run");
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let scenario = busy_scenario();
    let a = run_seed(&scenario, 10, RunOptions::default());
    let b = run_seed(&scenario, 11, RunOptions::default());
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn a_kept_trace_hashes_the_same_as_an_unkept_one() {
    let scenario = busy_scenario();
    let kept = run_seed(
        &scenario,
        4,
        RunOptions {
            keep_trace: true,
            plant: PlantedBug::NONE,
        },
    );
    let hashed = run_seed(&scenario, 4, RunOptions::default());
    assert_eq!(kept.trace_hash, hashed.trace_hash);
    assert_eq!(kept.trace.len() as u64, kept.stats.trace_events);
}

#[test]
fn a_saved_repro_replays_to_the_same_trace() {
    let scenario = busy_scenario();
    let repro = Repro::from_seed(&scenario, 5, PlantedBug::NONE);
    let dir = std::env::temp_dir().join(format!("murmur-sim-test-{}", std::process::id()));
    let path = dir.join("seed-5.repro.json");
    repro.save(&path).expect("saves");
    let loaded = Repro::load(&path).expect("loads");
    assert_eq!(loaded, repro);
    let original = run_seed(&scenario, 5, RunOptions::default());
    let replayed = sim::run(&loaded.params, &loaded.schedule, RunOptions::default());
    assert_eq!(original.trace_hash, replayed.trace_hash);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn running_seeds_on_two_threads_changes_no_trace() {
    let scenario = busy_scenario();
    let parallel = murmur_sim::runner::run_many(&scenario, 20..24, 2, PlantedBug::NONE, &|_| {});
    for result in parallel {
        let alone = run_seed(&scenario, result.seed, RunOptions::default());
        assert_eq!(result.trace_hash, alone.trace_hash, "seed {}", result.seed);
    }
}

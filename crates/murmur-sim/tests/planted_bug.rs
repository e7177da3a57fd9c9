//! The harness can fail: a bug planted in every replica (writes
//! acknowledged durable before their flush) is caught by the checkers as
//! the acknowledgement is given, and the shrinker reduces the failing
//! schedule.

use std::path::Path;

use murmur_sim::shrink::{self, Budget};
use murmur_sim::{sim, PlantedBug, Repro, RunOptions, Scenario};

/// Crashes and isolation with a long group-commit delay: a write made just
/// before a crash is acknowledged, never flushed, and (its node cut off)
/// never reached a peer.
fn crashy() -> Scenario {
    let text = r#"
        nodes = 3
        operations = 60
        chaos_ms = 6000
        liveness_ms = 30000
        group_commit_ms = 150
        [network]
        latency_min_ms = 1
        latency_max_ms = 10
        loss = 0.0
        duplicate = 0.0
        delay = 0.0
        [nemesis]
        faults = ["crash", "partition-isolate"]
        tracks = 2
        gap_ms = [100, 800]
        duration_ms = [200, 1500]
        crash_keep_batches = 0
        [workload]
        documents = 1
        set = 1
        counter = 0
        register = 0
        text = 0
        deps = 0
        read = 0
        create = 0
    "#;
    Scenario::parse(text, Path::new("crashy.toml"), "crashy").expect("the scenario parses")
}

fn play(repro: &Repro) -> murmur_sim::RunOutcome {
    let options = RunOptions {
        keep_trace: false,
        plant: repro.plant,
    };
    sim::run(&repro.params, &repro.schedule, options)
}

#[test]
fn the_engine_as_written_passes_the_same_seeds() {
    let scenario = crashy();
    for seed in 0..8 {
        let repro = Repro::from_seed(&scenario, seed, PlantedBug::NONE);
        let outcome = play(&repro);
        assert!(
            outcome.report.valid,
            "seed {seed}: {:?}",
            outcome.report.findings
        );
    }
}

#[test]
fn acknowledging_durable_before_the_flush_is_caught_and_shrunk() {
    let scenario = crashy();
    let failing = (0..30)
        .map(|seed| {
            Repro::from_seed(
                &scenario,
                seed,
                PlantedBug(murmur_core::FaultInjection::AckDurableBeforeFlush),
            )
        })
        .map(|repro| {
            let outcome = play(&repro);
            (repro, outcome)
        })
        .find(|(_, outcome)| !outcome.report.valid);
    let (repro, outcome) = failing.expect("some seed exposes the planted bug");
    // The promise is checked as it is made: the first finding is the
    // acknowledgement itself, not a write found missing at the end.
    assert_eq!(
        outcome.report.findings[0].checker, "durable-ack",
        "{:?}",
        outcome.report.findings
    );

    let budget = Budget {
        max_runs: 120,
        max_time: std::time::Duration::from_secs(120),
    };
    let shrunk = shrink::shrink(&repro, "durable-ack", budget, &mut |_, _| {});
    let before = repro.schedule.ops.len() + repro.schedule.faults.len();
    let after = shrunk.repro.schedule.ops.len() + shrunk.repro.schedule.faults.len();
    assert!(after < before / 2, "shrunk from {before} to {after} items");
    assert!(shrunk.signature.contains("durable-ack"));
    let replayed = play(&shrunk.repro);
    assert!(
        replayed
            .report
            .findings
            .iter()
            .any(|finding| finding.checker == "durable-ack"),
        "the shrunk schedule still fails the same way"
    );
}

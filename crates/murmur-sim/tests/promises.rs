//! The checkers that look at promises as they are made, and at the stores
//! rather than memory, can fail: each catches a planted bug on a seed of
//! its scenario, and the engine as written passes the same seed.

use std::path::PathBuf;

use murmur_sim::{run_seed, PlantedBug, RunOptions, Scenario};

fn scenario(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../simulations")
        .join(format!("{name}.toml"));
    Scenario::load(&path).expect("the scenario parses")
}

/// The checkers that fired on `seed` of `scenario` with `bug` planted.
fn checkers(scenario: &Scenario, seed: u64, bug: PlantedBug) -> Vec<String> {
    let options = RunOptions {
        keep_trace: false,
        plant: bug,
    };
    run_seed(scenario, seed, options)
        .report
        .findings
        .into_iter()
        .map(|finding| finding.checker)
        .collect()
}

fn assert_caught_by(name: &str, seed: u64, bug: PlantedBug, checker: &str) {
    let scenario = scenario(name);
    let clean = checkers(&scenario, seed, PlantedBug::NONE);
    assert!(
        clean.is_empty(),
        "{name} seed {seed} fails as written: {clean:?}"
    );
    let fired = checkers(&scenario, seed, bug);
    assert!(
        fired.iter().any(|c| c == checker),
        "{} on {name} seed {seed}: expected the {checker} checker, got {fired:?}",
        bug.name()
    );
}

#[test]
fn a_replicated_ack_counting_one_copy_too_many_is_caught_as_it_is_given() {
    assert_caught_by(
        "partition-halves",
        0,
        PlantedBug(murmur_core::FaultInjection::ReplicatedOvercount),
        "replicated-ack",
    );
}

#[test]
fn a_leaked_queue_budget_breaks_an_engine_invariant() {
    assert_caught_by(
        "partition-halves",
        0,
        PlantedBug(murmur_core::FaultInjection::LeakQueuedBytes),
        "invariants",
    );
}

#[test]
fn a_stale_digest_is_caught_by_the_digest_check() {
    assert_caught_by(
        "partition-halves",
        0,
        PlantedBug(murmur_core::FaultInjection::StaleDigestLeaf),
        "digest",
    );
}

#[test]
fn without_anti_entropy_a_dropped_push_never_converges() {
    // (Seeds move when the engine's message pattern does.)
    assert_caught_by(
        "no-anti-entropy",
        2,
        PlantedBug(murmur_core::FaultInjection::DropPushWithMissingDependencies),
        "liveness",
    );
}

#[test]
fn a_push_applied_only_in_part_is_caught_as_it_is_handled() {
    assert_caught_by(
        "no-anti-entropy",
        3,
        PlantedBug(murmur_core::FaultInjection::BatchAppliesFirstPushOnly),
        "pushes",
    );
}

#[test]
fn a_compaction_that_deletes_first_loses_flushed_data_in_a_crash() {
    // (A seed on which the bug strikes; seeds move when the engine's
    // message pattern does.)
    assert_caught_by(
        "compaction-crash",
        6,
        PlantedBug(murmur_core::FaultInjection::CompactDeletesBeforeSnapshot),
        "durable-lost",
    );
}

#[test]
fn every_run_counts_the_mechanisms_and_checks_acks() {
    let scenario = scenario("compaction-crash");
    let outcome = run_seed(&scenario, 0, RunOptions::default());
    assert!(outcome.report.valid, "{:?}", outcome.report.findings);
    assert!(outcome.stats.acks_checked > 0);
    for mechanism in ["compaction", "storage-crash", "lazy-load"] {
        assert!(
            outcome
                .stats
                .mechanisms
                .get(mechanism)
                .copied()
                .unwrap_or(0)
                > 0,
            "{mechanism} never fired: {:?}",
            outcome.stats.mechanisms
        );
    }
}

#[test]
fn a_storage_crash_inside_a_creation_leaves_the_creation_indeterminate() {
    // Seed 559 of compaction-crash crashes a store inside a document's
    // creation; the simulator itself used to panic there, writing to the
    // crashed node. (Seeds move when the engine's message pattern does.)
    let outcome = run_seed(
        &scenario("compaction-crash"),
        559,
        RunOptions {
            keep_trace: false,
            plant: PlantedBug::NONE,
        },
    );
    let crashed_creation = outcome.history.events.iter().any(|event| {
        event.f == murmur_sim::history::Function::Create
            && event.kind == murmur_sim::history::OpType::Info
    });
    assert!(crashed_creation, "no creation was cut by a storage crash");
    assert!(
        outcome.report.findings.is_empty(),
        "{:?}",
        outcome.report.findings
    );
}

//! Committed per-scenario figures the CI slice is held to, so that a change
//! that makes replication slower or chattier fails CI even when every
//! checker still passes (anti-entropy repairing a broken push, say, shows
//! up as slower convergence, not as a lost write).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use murmur_sim::runner::Summary;
use serde::{Deserialize, Serialize};

/// How much worse than its baseline a figure may get: a quarter, plus a
/// little absolute slack so that tiny figures do not fail on noise from
/// an unrelated change in the seed's schedule.
const MARGIN: f64 = 0.25;
const SLACK_MS: f64 = 100.0;
const SLACK_MESSAGES: f64 = 0.5;

/// The figures of one scenario over the CI slice's seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Convergence time after the heal, p95 over seeds.
    pub convergence_p95_ms: f64,
    /// Stable-read latency: each seed's p95, then p95 over seeds.
    pub stable_latency_p95_ms: f64,
    /// Messages per client operation, mean over seeds.
    pub messages_per_op: f64,
}

/// The committed file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// The seed count the figures were taken over (seeds 0..seeds).
    pub seeds: u64,
    /// The allowed regression, as a fraction (plus fixed slack).
    pub margin: f64,
    /// Per scenario.
    pub scenarios: BTreeMap<String, Figures>,
}

fn figures(summary: &Summary) -> Figures {
    Figures {
        convergence_p95_ms: summary.convergence_ms.p95 as f64,
        stable_latency_p95_ms: summary.stable_latency_p95_ms.p95 as f64,
        messages_per_op: (summary.messages_per_op * 100.0).round() / 100.0,
    }
}

/// Writes the figures of `summaries` (taken over `seeds` seeds) to `path`.
pub fn write(path: &Path, seeds: u64, summaries: &[Summary]) -> Result<()> {
    let baselines = Baselines {
        seeds,
        margin: MARGIN,
        scenarios: summaries
            .iter()
            .map(|summary| (summary.scenario.clone(), figures(summary)))
            .collect(),
    };
    let text = serde_json::to_string_pretty(&baselines)? + "\n";
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Compares `summaries` with the baselines in `path`. Returns the
/// regressions (empty if none, or if the file is for another seed count).
pub fn compare(path: &Path, seeds: u64, summaries: &[Summary]) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!("no baselines at {}: figures not compared", path.display());
            return Ok(Vec::new());
        }
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let baselines: Baselines = serde_json::from_str(&text)
        .with_context(|| format!("{} does not parse", path.display()))?;
    if baselines.seeds != seeds {
        println!(
            "baselines are for {} seeds, this run has {seeds}: figures not compared",
            baselines.seeds
        );
        return Ok(Vec::new());
    }
    let mut regressions = Vec::new();
    for summary in summaries {
        let Some(base) = baselines.scenarios.get(&summary.scenario) else {
            println!(
                "{}: no baseline; add it with --write-baselines",
                summary.scenario
            );
            continue;
        };
        regressions.extend(regressed(
            &summary.scenario,
            base,
            &figures(summary),
            baselines.margin,
        ));
    }
    Ok(regressions)
}

/// How `now` is worse than `reference` (two runs of the same seeds), by
/// the rule the committed baselines use.
pub fn compare_runs(reference: &Summary, now: &Summary) -> Vec<String> {
    regressed(&now.scenario, &figures(reference), &figures(now), MARGIN)
}

fn regressed(scenario: &str, base: &Figures, now: &Figures, margin: f64) -> Vec<String> {
    let mut regressions = Vec::new();
    {
        let checks = [
            (
                "convergence p95",
                now.convergence_p95_ms,
                base.convergence_p95_ms,
                SLACK_MS,
                "ms",
            ),
            (
                "stable-read latency p95",
                now.stable_latency_p95_ms,
                base.stable_latency_p95_ms,
                SLACK_MS,
                "ms",
            ),
            (
                "messages per operation",
                now.messages_per_op,
                base.messages_per_op,
                SLACK_MESSAGES,
                "",
            ),
        ];
        for (what, value, baseline, slack, unit) in checks {
            let allowed = baseline * (1.0 + margin) + slack;
            if value > allowed {
                regressions.push(format!(
                    "{scenario}: {what} {value:.1}{unit} against a baseline of {baseline:.1}{unit} (allowed up to {allowed:.1}{unit})"
                ));
            }
        }
    }
    regressions
}

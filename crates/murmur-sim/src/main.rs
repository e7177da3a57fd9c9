//! `murmur-sim`: runs simulation scenarios, reports, shrinks and replays.
//!
//! ```text
//! murmur-sim run simulations/partition-halves.toml --seeds 500
//! murmur-sim run simulations/crash-restart.toml --seed 17
//! murmur-sim replay target/murmur-sim/crash-restart/seed-17.shrunk.json
//! murmur-sim ci --seeds 30
//! murmur-sim bench
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use murmur_sim::report::html::{run_report, seed_report, SeedPage};
use murmur_sim::runner::{self, SeedResult, Summary};
use murmur_sim::shrink::{self, Budget};
use murmur_sim::{sim, PlantedBug, Repro, RunOptions, RunOutcome, Scenario};

mod baseline;

#[derive(Parser)]
#[command(
    name = "murmur-sim",
    version,
    about = "Murmur's deterministic, Jepsen-style simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files over many seeds (or one with --seed).
    Run(RunArgs),
    /// Replay a repro file (a seed's exact schedule) and report on it.
    Replay(ReplayArgs),
    /// The CI slice: every scenario in a directory, a bounded number of
    /// seeds each. Exits non-zero on any failure.
    Ci(CiArgs),
    /// Measure seeds per minute on the benchmark scenario.
    Bench(BenchArgs),
    /// The mutation suite: plant each known bug and count the seeds of its
    /// scenarios that catch it. Exits non-zero if any bug goes uncaught.
    Mutants(MutantsArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Where results, reports and repro files go.
    #[arg(long, default_value = "target/murmur-sim")]
    out: PathBuf,
    /// Do not shrink failing seeds.
    #[arg(long)]
    no_shrink: bool,
    /// Most runs the shrinker may make per failure.
    #[arg(long, default_value_t = 400)]
    shrink_runs: usize,
    /// Plant a bug in every replica, to see the checkers catch it (see
    /// `murmur-sim mutants` for the list).
    #[arg(long, value_parser = parse_plant, default_value = "none")]
    plant: PlantedBug,
}

#[derive(Args)]
struct RunArgs {
    /// Scenario files.
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// How many seeds per scenario.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run just this seed, keep its trace and write its report.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct ReplayArgs {
    /// A repro file written by `run`.
    repro: PathBuf,
    /// Also write the event trace here, as JSON lines.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Where the report goes (default: next to the repro file).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct CiArgs {
    /// The scenario directory.
    #[arg(long, default_value = "simulations")]
    dir: PathBuf,
    /// Seeds per scenario.
    #[arg(long, default_value_t = 50)]
    seeds: u64,
    /// Committed figures to hold each scenario to (convergence p95,
    /// stable-read latency p95, messages per operation); compared when the
    /// seed count matches the file's.
    #[arg(long, default_value = "simulations/baselines.json")]
    baselines: PathBuf,
    /// Write this run's figures as the new baselines instead of comparing.
    #[arg(long)]
    write_baselines: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct MutantsArgs {
    /// The scenario directory.
    #[arg(long, default_value = "simulations")]
    dir: PathBuf,
    /// Seeds per bug and scenario.
    #[arg(long, default_value_t = 50)]
    seeds: u64,
    /// Only this bug.
    #[arg(long, value_parser = parse_plant)]
    bug: Option<PlantedBug>,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the results go.
    #[arg(long, default_value = "target/murmur-sim")]
    out: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// The scenario to measure.
    #[arg(long, default_value = "simulations/partition-halves.toml")]
    scenario: PathBuf,
    /// Seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_plant(text: &str) -> Result<PlantedBug, String> {
    PlantedBug::from_name(text).ok_or_else(|| {
        let known: Vec<&str> = std::iter::once(PlantedBug::NONE)
            .chain(PlantedBug::all())
            .map(PlantedBug::name)
            .collect();
        format!("unknown bug `{text}`; known: {}", known.join(", "))
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The engine's own log, for reading one seed's run: for example
    // MURMUR_SIM_LOG=murmur_core=debug with `run --seed N --threads 1`.
    if let Ok(filter) = std::env::var("MURMUR_SIM_LOG") {
        // A typo must not pass for a quiet engine: refuse it.
        let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
            Ok(filter) => filter,
            Err(error) => {
                eprintln!("murmur-sim: MURMUR_SIM_LOG={filter:?} is not a log filter: {error}");
                return ExitCode::from(2);
            }
        };
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .with_ansi(false)
            .init();
    }
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Replay(args) => replay(&args),
        Command::Ci(args) => ci(args),
        Command::Bench(args) => bench(&args),
        Command::Mutants(args) => mutants(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("murmur-sim: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn threads(requested: Option<usize>) -> usize {
    requested
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// `run`: one seed, or many seeds of each scenario. Returns whether every
/// seed passed.
fn run(args: RunArgs) -> Result<bool> {
    if let Some(seed) = args.seed {
        let mut ok = true;
        for path in &args.scenarios {
            ok &= run_single(path, seed, &args.common)?;
        }
        return Ok(ok);
    }
    let seeds = args.first_seed..args.first_seed.saturating_add(args.seeds);
    run_scenarios(&args.scenarios, seeds, &args.common)
}

fn ci(args: CiArgs) -> Result<bool> {
    let mut scenarios: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("cannot list {}", args.dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    scenarios.sort();
    if scenarios.is_empty() {
        bail!("no scenario files in {}", args.dir.display());
    }
    let started = Instant::now();
    let (ok, summaries) = run_scenarios_summaries(&scenarios, 0..args.seeds, &args.common)?;
    let ok = if args.write_baselines {
        baseline::write(&args.baselines, args.seeds, &summaries)?;
        println!("baselines written to {}", args.baselines.display());
        ok
    } else {
        let regressions = baseline::compare(&args.baselines, args.seeds, &summaries)?;
        for regression in &regressions {
            println!("REGRESSION {regression}");
        }
        ok && regressions.is_empty()
    };
    eprintln!(
        "ci: {} scenarios x {} seeds in {:.1} s: {}",
        scenarios.len(),
        args.seeds,
        started.elapsed().as_secs_f64(),
        if ok { "all passed" } else { "FAILURES" }
    );
    Ok(ok)
}

fn bench(args: &BenchArgs) -> Result<bool> {
    let scenario = Scenario::load(&args.scenario)?;
    let threads = threads(args.threads);
    let bar = progress(&scenario.name, args.seeds);
    let started = Instant::now();
    let results = runner::run_many(&scenario, 0..args.seeds, threads, PlantedBug::NONE, &|_| {
        bar.inc(1)
    });
    bar.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    let summary = runner::summarise(&scenario.name, &results, wall);
    let mean_ms = results.iter().map(|r| r.wall_ms).sum::<f64>() / results.len().max(1) as f64;
    println!(
        "{}: {} seeds in {wall:.1} s on {threads} threads = {:.0} seeds/minute ({mean_ms:.1} ms per seed on one thread); {} failed",
        scenario.name,
        results.len(),
        summary.seeds_per_minute,
        summary.failed.len()
    );
    Ok(summary.failed.is_empty())
}

fn progress(name: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix:>18} [{bar:40.cyan/blue}] {pos}/{len} seeds {per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_prefix(name.to_owned());
    bar
}

struct Failure {
    scenario: String,
    seed: u64,
    command: String,
}

fn run_scenarios(paths: &[PathBuf], seeds: std::ops::Range<u64>, common: &Common) -> Result<bool> {
    run_scenarios_summaries(paths, seeds, common).map(|(ok, _)| ok)
}

/// Runs `seeds` of every scenario in `paths`; returns whether all passed,
/// and each scenario's summary.
fn run_scenarios_summaries(
    paths: &[PathBuf],
    seeds: std::ops::Range<u64>,
    common: &Common,
) -> Result<(bool, Vec<Summary>)> {
    let threads = threads(common.threads);
    let mut runs: Vec<(Summary, Vec<SeedResult>)> = Vec::new();
    let mut commands: Vec<(u64, String, String)> = Vec::new();
    for path in paths {
        let scenario = Scenario::load(path)?;
        let bar = progress(&scenario.name, seeds.end - seeds.start);
        let started = Instant::now();
        let results =
            runner::run_many(&scenario, seeds.clone(), threads, common.plant, &|result| {
                bar.inc(1);
                if !result.valid {
                    let first = result
                        .findings
                        .first()
                        .map(|f| format!("{}: {}", f.checker, f.message));
                    bar.println(format!(
                        "{} seed {} FAILED: {}",
                        scenario.name,
                        result.seed,
                        first.unwrap_or_default()
                    ));
                }
            });
        bar.finish_and_clear();
        let summary =
            runner::summarise_scenario(&scenario, &results, started.elapsed().as_secs_f64());
        let dir = common.out.join(&scenario.name);
        write_json(
            &dir.join("results.json"),
            &serde_json::json!({ "summary": summary, "seeds": results }),
        )?;
        for failed in results.iter().filter(|r| !r.valid) {
            let command = seed_command(path, failed.seed, common.plant);
            commands.push((failed.seed, scenario.name.clone(), command));
        }
        if let Some(first) = results.iter().find(|r| !r.valid) {
            for failure in report_failure(path, &scenario, first.seed, common)? {
                let entry = (failure.seed, failure.scenario, failure.command);
                if !commands.contains(&entry) {
                    commands.push(entry);
                }
            }
        }
        runs.push((summary, results));
    }
    print_summary(&runs);
    print_mechanisms(&runs);
    let report = common.out.join("report.html");
    write_text(&report, &run_report(&runs, &commands))?;
    println!("report: {}", report.display());
    let ok = runs.iter().all(|(summary, _)| summary.passed());
    Ok((ok, runs.into_iter().map(|(summary, _)| summary).collect()))
}

/// `mutants`: each planted bug on its scenarios; every bug must be caught
/// by some seed.
fn mutants(args: &MutantsArgs) -> Result<bool> {
    let threads = threads(args.threads);
    let bugs: Vec<PlantedBug> = match args.bug {
        Some(bug) => vec![bug],
        None => PlantedBug::all().collect(),
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut all_caught = true;
    // Each scenario's figures without a bug, over the same seeds: a bug
    // that only slows repair is caught by the baseline rule against them.
    let mut references: std::collections::BTreeMap<String, Summary> = Default::default();
    println!(
        "{:<38} {:<18} {:>8}  first checker to fire",
        "planted bug", "scenario", "caught"
    );
    for bug in bugs {
        let mut caught_anywhere = false;
        for name in bug.caught_by() {
            let row = mutant_row(args, threads, bug, name, &mut references)?;
            caught_anywhere |= row["caught"].as_u64().unwrap_or(0) > 0
                || row["regressions"].as_array().is_some_and(|r| !r.is_empty());
            rows.push(row);
        }
        match (caught_anywhere, bug.known_gap()) {
            (true, _) => {}
            (false, Some(why)) => {
                println!("{:<38} not caught (a known gap: {why})", bug.name());
            }
            (false, None) => {
                all_caught = false;
                println!("{:<38} NOT CAUGHT in {} seeds", bug.name(), args.seeds);
            }
        }
    }
    write_json(&args.out.join("mutants.json"), &serde_json::json!(rows))?;
    eprintln!(
        "mutants: {} in {:.1} s",
        if all_caught {
            "every planted bug caught"
        } else {
            "SOME PLANTED BUG WENT UNCAUGHT"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(all_caught)
}

/// Runs `bug` on scenario `name`, prints its row (seeds caught, the
/// checkers that fired, regressions against the same seeds without the
/// bug) and returns it as JSON.
fn mutant_row(
    args: &MutantsArgs,
    threads: usize,
    bug: PlantedBug,
    name: &str,
    references: &mut std::collections::BTreeMap<String, Summary>,
) -> Result<serde_json::Value> {
    let path = args.dir.join(format!("{name}.toml"));
    let scenario = Scenario::load(&path)?;
    let results = runner::run_many(&scenario, 0..args.seeds, threads, bug, &|_| {});
    let reference = references.entry(name.to_string()).or_insert_with(|| {
        let clean = runner::run_many(&scenario, 0..args.seeds, threads, PlantedBug::NONE, &|_| {});
        runner::summarise(&scenario.name, &clean, 0.0)
    });
    let regressions =
        baseline::compare_runs(reference, &runner::summarise(&scenario.name, &results, 0.0));
    let caught: Vec<&SeedResult> = results.iter().filter(|r| !r.valid).collect();
    let checkers: BTreeSet<&str> = caught
        .iter()
        .filter_map(|r| r.findings.first().map(|f| f.checker.as_str()))
        .collect();
    let replay = caught
        .first()
        .map(|r| format!(" (replay: {})", seed_command(&path, r.seed, bug)))
        .unwrap_or_default();
    println!(
        "{:<38} {:<18} {:>3} / {:<3} {}{replay}",
        bug.name(),
        name,
        caught.len(),
        results.len(),
        checkers.into_iter().collect::<Vec<_>>().join(", "),
    );
    for regression in &regressions {
        println!("{:<38} {:<18} baseline rule: {regression}", "", "");
    }
    Ok(serde_json::json!({
        "bug": bug.name(),
        "scenario": name,
        "seeds": results.len(),
        "caught": caught.len(),
        "caught_seeds": caught.iter().map(|r| r.seed).collect::<Vec<_>>(),
        "regressions": regressions,
    }))
}

fn print_summary(runs: &[(Summary, Vec<SeedResult>)]) {
    println!(
        "{:<18} {:>6} {:>6} {:>9} {:>22} {:>12} {:>8} {:>9} {:>18}",
        "scenario",
        "seeds",
        "failed",
        "seeds/min",
        "converge p50/p95/max",
        "stable p95",
        "msgs/op",
        "bytes/op",
        "ok/fail/info"
    );
    for (summary, _) in runs {
        let c = &summary.convergence_ms;
        let (ok, fail, info) = summary.outcomes;
        println!(
            "{:<18} {:>6} {:>6} {:>9.0} {:>22} {:>10}ms {:>8.1} {:>9.0} {:>18}",
            summary.scenario,
            summary.seeds,
            summary.failed.len(),
            summary.seeds_per_minute,
            format!("{}/{}/{} ms", c.p50, c.p95, c.max),
            summary.stable_latency_p95_ms.p50,
            summary.messages_per_op,
            summary.bytes_per_op,
            format!("{ok}/{fail}/{info}")
        );
    }
}

/// In what share of its seeds each mechanism fired, per scenario; and the
/// claimed mechanisms that never did.
fn print_mechanisms(runs: &[(Summary, Vec<SeedResult>)]) {
    println!("\nmechanisms fired (seeds in which each fired, of the scenario's seeds):");
    for (summary, _) in runs {
        let fired: Vec<String> = summary
            .mechanisms
            .iter()
            .filter(|(_, seeds)| **seeds > 0)
            .map(|(name, seeds)| format!("{name} {seeds}"))
            .collect();
        println!(
            "  {:<18} {} ({} acks checked)",
            summary.scenario,
            fired.join(", "),
            summary.acks_checked
        );
        for name in &summary.unexercised {
            println!(
                "  {:<18} FAILED: claims to exercise {name}, which fired in none of its {} seeds",
                summary.scenario, summary.seeds
            );
        }
    }
}

fn seed_command(path: &Path, seed: u64, plant: PlantedBug) -> String {
    let plant = match plant {
        PlantedBug::NONE => String::new(),
        other => format!(" --plant {}", other.name()),
    };
    format!(
        "cargo run --release -p murmur-sim -- run {} --seed {seed}{plant}",
        path.display()
    )
}

fn replay_command(path: &Path) -> String {
    format!(
        "cargo run --release -p murmur-sim -- replay {}",
        path.display()
    )
}

/// Runs one seed with its trace, writes its report, shrinks it if it
/// fails. Returns whether it passed.
fn run_single(path: &Path, seed: u64, common: &Common) -> Result<bool> {
    let scenario = Scenario::load(path)?;
    let failures = report_failure(path, &scenario, seed, common)?;
    Ok(failures.is_empty())
}

/// Re-runs `seed` with its trace, prints and writes what it found, and
/// shrinks it. Returns the replay commands of a failure (none if it
/// passed).
fn report_failure(
    path: &Path,
    scenario: &Scenario,
    seed: u64,
    common: &Common,
) -> Result<Vec<Failure>> {
    let repro = Repro::from_seed(scenario, seed, common.plant);
    let outcome = play(&repro, true);
    let dir = common.out.join(&scenario.name);
    let repro_path = dir.join(format!("seed-{seed}.repro.json"));
    repro.save(&repro_path)?;
    let seed_cmd = seed_command(path, seed, common.plant);
    let mut commands = vec![
        ("Replay the seed".to_owned(), seed_cmd.clone()),
        (
            "Replay the saved schedule".to_owned(),
            replay_command(&repro_path),
        ),
    ];
    print_outcome(&scenario.name, &outcome);
    let mut failures = Vec::new();
    if !outcome.report.valid {
        println!("  replay: {seed_cmd}");
        failures.push(Failure {
            scenario: scenario.name.clone(),
            seed,
            command: seed_cmd,
        });
        if !common.no_shrink {
            if let Some((shrunk_path, command)) =
                shrink_and_save(&repro, &outcome, &dir, seed, common)?
            {
                let label = ("Replay the shrunk schedule".to_owned(), command.clone());
                commands.push(label.clone());
                failures.push(Failure {
                    scenario: scenario.name.clone(),
                    seed,
                    command,
                });
                let shrunk = Repro::load(&shrunk_path)?;
                let small = play(&shrunk, true);
                let page = dir.join(format!("seed-{seed}.shrunk.html"));
                write_seed_page(&page, &small, &shrunk, &[label])?;
            }
        }
    }
    let page = dir.join(format!("seed-{seed}.html"));
    write_seed_page(&page, &outcome, &repro, &commands)?;
    println!("  report: {}", page.display());
    Ok(failures)
}

fn play(repro: &Repro, keep_trace: bool) -> RunOutcome {
    let options = RunOptions {
        keep_trace,
        plant: repro.plant,
    };
    sim::run(&repro.params, &repro.schedule, options)
}

fn print_outcome(scenario: &str, outcome: &RunOutcome) {
    let verdict = if outcome.report.valid {
        "valid"
    } else {
        "FAILED"
    };
    println!(
        "{scenario} seed {}: {verdict} ({} nodes, {} operations, trace {})",
        outcome.params.seed,
        outcome.params.nodes,
        outcome.stats.operations,
        &outcome.trace_hash[..16]
    );
    for finding in &outcome.report.findings {
        println!("  {}: {}", finding.checker, finding.message);
    }
}

fn shrink_and_save(
    repro: &Repro,
    outcome: &RunOutcome,
    dir: &Path,
    seed: u64,
    common: &Common,
) -> Result<Option<(PathBuf, String)>> {
    let Some(primary) = outcome.report.findings.first().map(|f| f.checker.clone()) else {
        return Ok(None);
    };
    let (ops, faults) = (repro.schedule.ops.len(), repro.schedule.faults.len());
    let bar = ProgressBar::new_spinner();
    bar.set_message(format!("shrinking ({ops} operations, {faults} faults)"));
    let budget = Budget {
        max_runs: common.shrink_runs,
        max_time: Duration::from_secs(120),
    };
    let shrunk = shrink::shrink(repro, &primary, budget, &mut |schedule, runs| {
        bar.set_message(format!(
            "shrinking: {} operations, {} faults after {runs} runs",
            schedule.ops.len(),
            schedule.faults.len()
        ));
        bar.tick();
    });
    bar.finish_and_clear();
    let path = dir.join(format!("seed-{seed}.shrunk.json"));
    shrunk.repro.save(&path)?;
    let command = replay_command(&path);
    let signature: Vec<&String> = shrunk
        .signature
        .iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    println!(
        "  shrunk to {} operations and {} faults in {} runs (still fails: {signature:?})",
        shrunk.repro.schedule.ops.len(),
        shrunk.repro.schedule.faults.len(),
        shrunk.runs
    );
    println!("  replay the shrunk schedule: {command}");
    Ok(Some((path, command)))
}

fn write_seed_page(
    path: &Path,
    outcome: &RunOutcome,
    repro: &Repro,
    commands: &[(String, String)],
) -> Result<()> {
    let page = SeedPage {
        outcome,
        schedule: &repro.schedule,
        commands: commands.to_vec(),
    };
    write_text(path, &seed_report(&page))
}

fn replay(args: &ReplayArgs) -> Result<bool> {
    let repro = Repro::load(&args.repro)?;
    let outcome = play(&repro, true);
    print_outcome(&repro.params.scenario, &outcome);
    if let Some(path) = &args.trace {
        let lines: Vec<String> = outcome
            .trace
            .iter()
            .filter_map(|line| serde_json::to_string(line).ok())
            .collect();
        write_text(path, &(lines.join("\n") + "\n"))?;
        println!("  trace: {}", path.display());
    }
    let page = match &args.out {
        Some(dir) => dir.join(format!(
            "{}-seed-{}.html",
            repro.params.scenario, repro.params.seed
        )),
        None => args.repro.with_extension("html"),
    };
    let commands = vec![("Replay".to_owned(), replay_command(&args.repro))];
    write_seed_page(&page, &outcome, &repro, &commands)?;
    println!("  report: {}", page.display());
    Ok(outcome.report.valid)
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    write_text(path, &serde_json::to_string_pretty(value)?)
}

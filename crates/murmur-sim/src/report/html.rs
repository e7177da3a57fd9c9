//! Self-contained HTML pages: one for a run of many seeds, one for a single
//! seed (timeline of operations per node with fault windows shaded, plus
//! traffic and convergence-latency plots).

use std::fmt::Write;

use super::svg::{bars, escape, nice_step, x_label, y_axis, Svg};
use crate::history::{Function, OpType, Value};
use crate::nemesis::Fault;
use crate::runner::{SeedResult, Summary};
use crate::schedule::Schedule;
use crate::sim::RunOutcome;
use crate::trace::TraceEvent;

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}\
h1{font-size:22px}h2{font-size:18px;margin-top:28px}table{border-collapse:collapse;margin:8px 0}\
td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left}th{background:#f4f4f4}\
.ok{color:#1a7f37}.bad{color:#c62828;font-weight:bold}code,pre{background:#f6f8fa;padding:2px 4px;font-size:12px}\
pre{padding:8px;overflow-x:auto}.legend span{display:inline-block;margin-right:14px;font-size:12px}\
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

fn verdict(valid: bool) -> &'static str {
    if valid {
        "<span class=\"ok\">valid</span>"
    } else {
        "<span class=\"bad\">FAILED</span>"
    }
}

/// What a seed page shows besides the run itself.
pub struct SeedPage<'a> {
    /// The run, with its trace kept.
    pub outcome: &'a RunOutcome,
    /// The schedule it played.
    pub schedule: &'a Schedule,
    /// Commands that replay it, labelled.
    pub commands: Vec<(String, String)>,
}

/// The page for one seed.
pub fn seed_report(page_data: &SeedPage<'_>) -> String {
    let outcome = page_data.outcome;
    let params = &outcome.params;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{} seed {}: {}</h1>",
        escape(&params.scenario),
        params.seed,
        verdict(outcome.report.valid)
    );
    findings_section(&mut body, outcome);
    for (label, command) in &page_data.commands {
        let _ = write!(
            body,
            "<p>{}: <code>{}</code></p>",
            escape(label),
            escape(command)
        );
    }
    let _ = write!(
        body,
        "<h2>Timeline</h2>{}",
        timeline(outcome, page_data.schedule)
    );
    body.push_str(&legend());
    let _ = write!(body, "<h2>Traffic</h2>{}", traffic(outcome));
    let _ = write!(body, "<h2>Convergence latency</h2>{}", latency(outcome));
    stats_section(&mut body, outcome);
    history_section(&mut body, outcome);
    page(&format!("{} seed {}", params.scenario, params.seed), &body)
}

fn findings_section(body: &mut String, outcome: &RunOutcome) {
    if outcome.report.findings.is_empty() {
        body.push_str("<p>Every checker passed.</p>");
        return;
    }
    body.push_str("<h2>Findings</h2><ul>");
    for finding in &outcome.report.findings {
        let _ = write!(
            body,
            "<li><b>{}</b>: {}</li>",
            escape(&finding.checker),
            escape(&finding.message)
        );
    }
    body.push_str("</ul>");
}

fn legend() -> String {
    let items = [
        ("#2e7d32", "write ok (durable)"),
        ("#ef6c00", "write info (indeterminate)"),
        ("#c62828", "write fail"),
        ("#1565c0", "read"),
        ("#f6c28b", "partition"),
        ("#fff176", "flaky network"),
        ("#ef9a9a", "crashed"),
        ("#bdbdbd", "paused"),
        ("#d1c4e9", "clock jumped"),
        ("#c8e6c9", "liveness"),
    ];
    let mut html = String::from("<div class=\"legend\">");
    for (color, label) in items {
        let _ = write!(
            html,
            "<span><i class=\"swatch\" style=\"background:{color}\"></i>{label}</span>"
        );
    }
    html.push_str("</div>");
    html
}

struct Frame {
    left: f64,
    width: f64,
    end_ms: f64,
}

impl Frame {
    fn x(&self, ms: u64) -> f64 {
        self.left + ms as f64 / self.end_ms.max(1.0) * self.width
    }
}

const LANE: f64 = 26.0;
const NETWORK_ROWS: f64 = 3.0;

fn timeline(outcome: &RunOutcome, schedule: &Schedule) -> String {
    let nodes = outcome.params.nodes;
    let top = 20.0 + NETWORK_ROWS * 10.0 + 6.0;
    let height = top + nodes as f64 * LANE + 30.0;
    let frame = Frame {
        left: 50.0,
        width: 1080.0,
        end_ms: outcome.stats.end_ms as f64,
    };
    let mut svg = Svg::new(1140.0, height);
    let lanes_h = nodes as f64 * LANE;
    let live_x = frame.x(outcome.stats.heal_ms);
    svg.rect(
        live_x,
        top,
        frame.x(outcome.stats.end_ms) - live_x,
        lanes_h,
        "#c8e6c9",
        "liveness: every fault healed",
    );
    for node in 0..nodes {
        let y = top + node as f64 * LANE;
        svg.line(
            frame.left,
            y + LANE,
            frame.left + frame.width,
            y + LANE,
            "#eee",
            1.0,
        );
        svg.text(
            frame.left - 8.0,
            y + LANE / 2.0 + 4.0,
            &format!("n{node}"),
            12.0,
            "end",
            "#333",
        );
    }
    svg.text(frame.left - 8.0, 30.0, "net", 11.0, "end", "#333");
    let (offset, heal) = (outcome.stats.chaos_start_ms, outcome.stats.heal_ms);
    for (index, window) in schedule.faults.iter().enumerate() {
        // A window still open at the end of the chaos closes at the heal.
        let span = (offset + window.start_ms, (offset + window.end_ms).min(heal));
        fault_window(&mut svg, &frame, top, span, index, window);
    }
    operations(&mut svg, &frame, top, outcome);
    time_axis(&mut svg, &frame, top + lanes_h);
    svg.finish()
}

/// Draws one fault window over `span` (run milliseconds).
fn fault_window(
    svg: &mut Svg,
    frame: &Frame,
    top: f64,
    span: (u64, u64),
    index: usize,
    window: &crate::nemesis::FaultWindow,
) {
    let (x0, x1) = (frame.x(span.0), frame.x(span.1));
    let label = format!("{} ({}–{} ms)", window.fault, span.0, span.1);
    let row_y = 20.0 + (index % NETWORK_ROWS as usize) as f64 * 10.0;
    let lane = |node: usize| top + node as f64 * LANE + 2.0;
    match &window.fault {
        Fault::Partition { .. } => {
            svg.rect(x0, row_y, x1 - x0, 8.0, "#f0a35e", &label);
            shade_partition(svg, x0, x1, top, window, &label);
        }
        Fault::Flaky { .. } => svg.rect(x0, row_y, x1 - x0, 8.0, "#fbc02d", &label),
        Fault::Crash { node, .. } => {
            svg.rect(x0, lane(*node), x1 - x0, LANE - 4.0, "#ef9a9a", &label)
        }
        Fault::Pause { node } => svg.rect(x0, lane(*node), x1 - x0, LANE - 4.0, "#bdbdbd", &label),
        Fault::ClockJump { node, .. } => {
            svg.rect(x0, lane(*node), x1 - x0, LANE - 4.0, "#d1c4e9", &label)
        }
        Fault::StorageCrash { node, .. } => {
            svg.rect(x0, lane(*node), x1 - x0, LANE - 4.0, "#e57373", &label)
        }
        Fault::Restart { node, .. } => {
            svg.rect(x0, lane(*node), x1 - x0, LANE - 4.0, "#90caf9", &label)
        }
    }
}

/// Shades each node's lane by how much of the cluster it is cut off from
/// (an isolated node dark, the rest light).
fn shade_partition(
    svg: &mut Svg,
    x0: f64,
    x1: f64,
    top: f64,
    window: &crate::nemesis::FaultWindow,
    label: &str,
) {
    let Fault::Partition { cut, one_way, .. } = &window.fault else {
        return;
    };
    let mut lost: std::collections::BTreeMap<usize, usize> = std::collections::BTreeMap::new();
    for (a, b) in cut.iter().chain(one_way) {
        *lost.entry(*a).or_default() += 1;
        *lost.entry(*b).or_default() += 1;
    }
    let most = lost.values().copied().max().unwrap_or(1).max(1) as f64;
    for (node, count) in lost {
        let y = top + node as f64 * LANE + 2.0;
        let opacity = 0.25 + 0.55 * count as f64 / most;
        svg.shade([x0, y, x1 - x0, LANE - 4.0], "#f6a95b", opacity, label);
    }
}

fn operations(svg: &mut Svg, frame: &Frame, top: f64, outcome: &RunOutcome) {
    for op in outcome.history.operations() {
        let invoke = op.invoke;
        let x = frame.x(invoke.time_ms);
        let y = top + invoke.node as f64 * LANE + LANE / 2.0;
        let outcome_name = match op.outcome() {
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            _ => "info",
        };
        let detail = op
            .complete
            .and_then(|c| c.error.clone())
            .unwrap_or_default();
        let title = format!(
            "op {} {:?} {} at {} ms → {outcome_name} {detail}",
            invoke.op,
            invoke.f,
            describe(op.value()),
            invoke.time_ms
        );
        if invoke.f == Function::Read {
            let color = if op.outcome() == OpType::Ok {
                "#1565c0"
            } else {
                "#c62828"
            };
            svg.circle(x, y, 2.5, color, &title);
        } else {
            let color = match op.outcome() {
                OpType::Ok => "#2e7d32",
                OpType::Fail => "#c62828",
                _ => "#ef6c00",
            };
            svg.rect(x - 1.0, y - 8.0, 2.0, 16.0, color, &title);
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Element { doc, element } => format!("d{doc} +{element}"),
        Value::Delta { doc, delta } => format!("d{doc} {delta:+}"),
        Value::Register {
            doc, key, value, ..
        } => format!("d{doc} k{key}={value}"),
        Value::Char { doc, ch } => format!("d{doc} {}", ch.map(String::from).unwrap_or_default()),
        Value::Pair { doc, id } => format!("d{doc} {id:?}"),
        Value::Document { doc } => format!("{doc:?}"),
        Value::Read { doc, .. } => format!("d{doc}"),
        Value::None => String::new(),
    }
}

fn time_axis(svg: &mut Svg, frame: &Frame, y: f64) {
    svg.line(frame.left, y, frame.left + frame.width, y, "#888", 1.0);
    let step = nice_step(frame.end_ms, 10).max(1.0);
    let mut tick = 0.0;
    while tick <= frame.end_ms {
        let x = frame.x(tick as u64);
        svg.line(x, y, x, y + 4.0, "#888", 1.0);
        svg.text(
            x,
            y + 16.0,
            &format!("{}s", tick / 1000.0),
            10.0,
            "middle",
            "#555",
        );
        tick += step;
    }
}

fn traffic(outcome: &RunOutcome) -> String {
    let end = outcome.stats.end_ms.max(1);
    let bucket = (nice_step(end as f64, 60) as u64).max(1);
    let buckets = (end / bucket + 1) as usize;
    let (mut delivered, mut dropped) = (vec![0u64; buckets], vec![0u64; buckets]);
    let mut kilobytes = vec![0f64; buckets];
    for line in &outcome.trace {
        let slot = ((line.time_ms / bucket) as usize).min(buckets - 1);
        match &line.event {
            TraceEvent::Deliver { bytes, .. } => {
                delivered[slot] += 1;
                kilobytes[slot] += *bytes as f64 / 1024.0;
            }
            TraceEvent::Drop { .. } => dropped[slot] += 1,
            _ => {}
        }
    }
    let messages: Vec<(String, f64, f64)> = (0..buckets)
        .map(|i| {
            (
                format!("{}s", (i as u64 * bucket) as f64 / 1000.0),
                delivered[i] as f64,
                dropped[i] as f64,
            )
        })
        .collect();
    let bytes: Vec<(String, f64)> = (0..buckets)
        .map(|i| {
            (
                format!("{}s", (i as u64 * bucket) as f64 / 1000.0),
                kilobytes[i],
            )
        })
        .collect();
    format!(
        "{}{}<p>{} messages ({} KiB) sent, {} dropped by the network, {} rejected; {:.1} messages and {:.0} bytes per operation.</p>",
        stacked(&format!("Messages per {bucket} ms (delivered, and dropped in red)"), &messages),
        bars(&format!("KiB delivered per {bucket} ms"), &bytes, "KiB", "#7e57c2"),
        outcome.stats.messages,
        outcome.stats.bytes / 1024,
        outcome.stats.dropped,
        outcome.stats.rejected,
        outcome.stats.messages_per_op,
        outcome.stats.bytes_per_op
    )
}

/// Bars of `(label, delivered, dropped)`, dropped stacked on top in red.
fn stacked(title: &str, values: &[(String, f64, f64)]) -> String {
    let (width, height, left, bottom, top) = (720.0, 240.0, 60.0, 40.0, 28.0);
    let mut svg = Svg::new(width, height);
    svg.text(left, 16.0, title, 13.0, "start", "#222");
    let max = values
        .iter()
        .map(|(_, a, b)| a + b)
        .fold(0.0, f64::max)
        .max(1.0);
    let (plot_w, plot_h) = (width - left - 10.0, height - bottom - top);
    y_axis(&mut svg, left, top, plot_w, plot_h, max, "msgs");
    let slot = plot_w / values.len().max(1) as f64;
    for (index, (label, delivered, dropped)) in values.iter().enumerate() {
        let x = left + index as f64 * slot + slot * 0.1;
        let h1 = delivered / max * plot_h;
        let h2 = dropped / max * plot_h;
        let tip = format!("{label}: {delivered} delivered, {dropped} dropped");
        svg.rect(x, top + plot_h - h1, slot * 0.8, h1, "#42a5f5", &tip);
        svg.rect(x, top + plot_h - h1 - h2, slot * 0.8, h2, "#e53935", &tip);
        x_label(
            &mut svg,
            index,
            values.len(),
            x + slot * 0.4,
            height - bottom + 14.0,
            label,
        );
    }
    svg.finish()
}

fn latency(outcome: &RunOutcome) -> String {
    let set = &outcome.report.set;
    let mut html = String::new();
    let converged = outcome
        .stats
        .convergence_ms
        .map_or("did not converge within the bound".to_owned(), |ms| {
            format!("{ms} ms")
        });
    let _ = write!(
        html,
        "<p>Convergence after the heal: <b>{converged}</b>. Set elements stable: {} of {} adds; stale {}; stable latency p50 {} ms, p95 {} ms, max {} ms.</p>",
        set.stable, set.attempts, set.stale, set.stable_latency_ms.p50, set.stable_latency_ms.p95, set.stable_latency_ms.max
    );
    html.push_str(&cdf(
        "Set-full stable latency: share of elements stable within t",
        &set.stable_latencies_ms,
    ));
    html
}

/// A cumulative distribution of `samples` (milliseconds).
pub fn cdf(title: &str, samples: &[u64]) -> String {
    let (width, height, left, bottom, top) = (720.0, 240.0, 60.0, 40.0, 28.0);
    let mut svg = Svg::new(width, height);
    svg.text(left, 16.0, title, 13.0, "start", "#222");
    let (plot_w, plot_h) = (width - left - 20.0, height - bottom - top);
    y_axis(&mut svg, left, top, plot_w, plot_h, 100.0, "%");
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let max = sorted.last().copied().unwrap_or(0).max(1) as f64;
    let points: Vec<(f64, f64)> = sorted
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = left + *v as f64 / max * plot_w;
            let y = top + plot_h - (i + 1) as f64 / sorted.len() as f64 * plot_h;
            (x, y)
        })
        .collect();
    if points.is_empty() {
        svg.text(
            left + plot_w / 2.0,
            top + plot_h / 2.0,
            "no samples",
            12.0,
            "middle",
            "#888",
        );
    } else {
        let mut stepped = vec![(left, top + plot_h)];
        stepped.extend(points);
        svg.polyline(&stepped, "#00897b");
    }
    let step = nice_step(max, 6).max(1.0);
    let mut tick = 0.0;
    while tick <= max {
        let x = left + tick / max * plot_w;
        svg.text(
            x,
            top + plot_h + 14.0,
            &format!("{tick} ms"),
            10.0,
            "middle",
            "#555",
        );
        tick += step;
    }
    svg.finish()
}

fn stats_section(body: &mut String, outcome: &RunOutcome) {
    let params = &outcome.params;
    let stats = &outcome.stats;
    let rows = [
        ("nodes", params.nodes.to_string()),
        ("operations", stats.operations.to_string()),
        (
            "ok / fail / info",
            format!("{} / {} / {}", stats.ok, stats.fail, stats.info),
        ),
        (
            "chaos",
            format!("{} ms from {} ms", params.chaos_ms, stats.chaos_start_ms),
        ),
        ("group commit", format!("{} ms", params.group_commit_ms)),
        ("network", format!("{:?}", params.network)),
        ("fault tracks", params.tracks.to_string()),
        ("weights", format!("{:?}", params.weights)),
        ("documents at start", params.documents.to_string()),
        (
            "trace",
            format!(
                "{} events, sha256 {}",
                stats.trace_events, outcome.trace_hash
            ),
        ),
        (
            "orphaned dependencies",
            stats.orphaned_dependencies.to_string(),
        ),
    ];
    body.push_str("<h2>Parameters and numbers</h2><table>");
    for (name, value) in rows {
        let _ = write!(body, "<tr><th>{name}</th><td>{}</td></tr>", escape(&value));
    }
    body.push_str("</table>");
}

fn history_section(body: &mut String, outcome: &RunOutcome) {
    const SHOWN: usize = 2_000;
    let _ = write!(
        body,
        "<h2>History</h2><details><summary>{} events (first {SHOWN})</summary><pre>",
        outcome.history.events.len()
    );
    for event in outcome.history.events.iter().take(SHOWN) {
        let _ = writeln!(
            body,
            "{:>7} ms  n{}  op {:>4}  {:<6?} {:<9?} {}{}",
            event.time_ms,
            event.node,
            event.op,
            event.kind,
            event.f,
            escape(&describe(&event.value)),
            event
                .error
                .as_deref()
                .map(|e| format!("  ({})", escape(e)))
                .unwrap_or_default()
        );
    }
    body.push_str("</pre></details>");
}

/// The page for a run of many seeds of one or more scenarios.
pub fn run_report(
    runs: &[(Summary, Vec<SeedResult>)],
    commands: &[(u64, String, String)],
) -> String {
    let mut body = String::from("<h1>murmur-sim run</h1>");
    summary_table(&mut body, runs);
    for (summary, results) in runs {
        let _ = write!(body, "<h2>{}</h2>", escape(&summary.scenario));
        let converged: Vec<(String, f64)> =
            histogram(results.iter().filter_map(|r| r.stats.convergence_ms));
        body.push_str(&bars(
            "Seeds by convergence time after the heal (virtual ms)",
            &converged,
            "seeds",
            "#26a69a",
        ));
        let traffic: Vec<(String, f64)> = results
            .iter()
            .map(|r| (r.seed.to_string(), r.stats.messages_per_op))
            .collect();
        body.push_str(&bars(
            "Messages per operation, by seed",
            &traffic,
            "msgs/op",
            "#5c6bc0",
        ));
        failing_table(&mut body, summary, results, commands);
    }
    page("murmur-sim run", &body)
}

fn summary_table(body: &mut String, runs: &[(Summary, Vec<SeedResult>)]) {
    body.push_str("<table><tr><th>scenario</th><th>seeds</th><th>failed</th><th>seeds/min</th><th>convergence p50 / p95 / max (ms)</th><th>stable latency p95, median over seeds (ms)</th><th>msgs/op</th><th>bytes/op</th></tr>");
    for (summary, _) in runs {
        let c = &summary.convergence_ms;
        let failed = if summary.failed.is_empty() {
            "<span class=\"ok\">0</span>".to_owned()
        } else {
            format!("<span class=\"bad\">{}</span>", summary.failed.len())
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{failed}</td><td>{:.0}</td><td>{} / {} / {}</td><td>{}</td><td>{:.1}</td><td>{:.0}</td></tr>",
            escape(&summary.scenario),
            summary.seeds,
            summary.seeds_per_minute,
            c.p50,
            c.p95,
            c.max,
            summary.stable_latency_p95_ms.p50,
            summary.messages_per_op,
            summary.bytes_per_op
        );
    }
    body.push_str("</table>");
}

fn failing_table(
    body: &mut String,
    summary: &Summary,
    results: &[SeedResult],
    commands: &[(u64, String, String)],
) {
    if summary.failed.is_empty() {
        return;
    }
    body.push_str(
        "<h3>Failing seeds</h3><table><tr><th>seed</th><th>findings</th><th>replay</th></tr>",
    );
    for result in results.iter().filter(|r| !r.valid) {
        let findings: Vec<String> = result
            .findings
            .iter()
            .map(|f| format!("<b>{}</b>: {}", escape(&f.checker), escape(&f.message)))
            .collect();
        let replay = commands
            .iter()
            .filter(|(seed, scenario, _)| *seed == result.seed && *scenario == summary.scenario)
            .map(|(_, _, command)| format!("<code>{}</code>", escape(command)))
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{replay}</td></tr>",
            result.seed,
            findings.join("<br>")
        );
    }
    body.push_str("</table>");
}

/// Buckets of `values` for a histogram: (label, count).
fn histogram(values: impl Iterator<Item = u64>) -> Vec<(String, f64)> {
    let values: Vec<u64> = values.collect();
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let width = (nice_step(max as f64, 20) as u64).max(1);
    let buckets = (max / width + 1) as usize;
    let mut counts = vec![0f64; buckets];
    for value in values {
        counts[((value / width) as usize).min(buckets - 1)] += 1.0;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, count)| (format!("{}", i as u64 * width), count))
        .collect()
}

//! Numbers to markdown: medians, percentiles, ratios, and the section of
//! BENCHMARKS.md the suite owns. Everything here is pure and unit-tested.

use std::time::Instant;

use automerge::ChangeHash;

/// The first line of the section the suite writes into BENCHMARKS.md.
pub const BEGIN_MARKER: &str = "<!-- murmur-bench:begin -->";
/// The last line of that section.
pub const END_MARKER: &str = "<!-- murmur-bench:end -->";

/// What a number measures, and so how it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds (shown in µs below 1 ms).
    Millis,
    /// Seconds.
    Seconds,
    /// Events per second.
    PerSecond,
    /// Bytes.
    Bytes,
    /// A plain count.
    Count,
    /// 1 for yes, 0 for no.
    Flag,
}

/// One number from one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// What it is, e.g. "p99".
    pub metric: String,
    /// How to show it.
    pub unit: Unit,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A sample.
    pub fn new(metric: impl Into<String>, unit: Unit, value: f64) -> Self {
        Sample {
            metric: metric.into(),
            unit,
            value,
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The nearest-rank `percent` percentile of `values` (`None` for none):
/// the smallest value with at least `percent`% of the values at or below.
pub fn percentile(values: &[f64], percent: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return None;
    }
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// When each write became visible on one peer, from the writes (in the
/// order made, on a document only the writer changes, so its history is a
/// line) and the heads the peer reported. A report whose heads include the
/// i-th write covers every write before it too. `None` for writes the peer
/// never reported.
pub fn deliveries(
    writes: &[ChangeHash],
    arrivals: &[(Instant, Vec<ChangeHash>)],
) -> Vec<Option<Instant>> {
    let index: std::collections::HashMap<&ChangeHash, usize> = writes
        .iter()
        .enumerate()
        .map(|(i, hash)| (hash, i))
        .collect();
    let mut delivered = vec![None; writes.len()];
    let mut covered = 0;
    for (at, heads) in arrivals {
        let Some(last) = heads.iter().filter_map(|head| index.get(head)).max() else {
            continue;
        };
        for slot in delivered.iter_mut().take(last + 1).skip(covered) {
            *slot = Some(*at);
        }
        covered = covered.max(last + 1);
    }
    delivered
}

/// Shows a value in its unit.
pub fn format_value(value: f64, unit: Unit) -> String {
    if !value.is_finite() {
        return "—".to_string();
    }
    match unit {
        Unit::Millis if value < 1.0 => format!("{:.0} µs", value * 1000.0),
        Unit::Millis if value < 100.0 => format!("{value:.2} ms"),
        Unit::Millis => format!("{} ms", thousands(value)),
        Unit::Seconds => format!("{value:.2} s"),
        Unit::PerSecond => format!("{}/s", thousands(value)),
        Unit::Bytes => format!("{} B", thousands(value)),
        Unit::Count => thousands(value),
        Unit::Flag if value >= 0.5 => "yes".to_string(),
        Unit::Flag => "no".to_string(),
    }
}

/// A whole number with thousands separators: 12345.6 → "12,346".
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if rounded < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// `a / b` as "1.23×", or "—" when it means nothing (a flag, a zero or a
/// missing side).
pub fn ratio(a: Option<f64>, b: Option<f64>, unit: Unit) -> String {
    match (a, b) {
        (Some(a), Some(b)) if unit != Unit::Flag && b != 0.0 && a.is_finite() && b.is_finite() => {
            let r = a / b;
            if r >= 100.0 {
                format!("{r:.0}×")
            } else if r >= 0.1 {
                format!("{r:.2}×")
            } else {
                format!("{r:.3}×")
            }
        }
        _ => "—".to_string(),
    }
}

/// Puts `section` (which starts with [`BEGIN_MARKER`] and ends with
/// [`END_MARKER`]) in place of the marked section of `document`, or at its
/// end if there is none.
pub fn replace_section(document: &str, section: &str) -> String {
    let section = section.trim_end();
    if let Some(begin) = document.find(BEGIN_MARKER) {
        if let Some(end) = document[begin..].find(END_MARKER) {
            let end = begin + end + END_MARKER.len();
            return format!("{}{}{}", &document[..begin], section, &document[end..]);
        }
    }
    let mut out = document.trim_end().to_string();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(section);
    out.push('\n');
    out
}

/// The civil date (UTC) of a Unix time, as "YYYY-MM-DD HH:MM UTC".
pub fn utc_date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let minutes_of_day = (unix_seconds % 86_400) / 60;
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        minutes_of_day / 60,
        minutes_of_day % 60
    )
}

/// What one system did in one run of one case.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// It ran; these are its numbers.
    Measured(Vec<Sample>),
    /// It cannot run this case (the reason).
    Skipped(String),
    /// It did not finish in time.
    TimedOut,
    /// It failed (the error).
    Failed(String),
}

/// Every run of one case: by system (in report order), one outcome a round.
#[derive(Clone, Debug, Default)]
pub struct CaseRuns {
    /// The case, as shown in the report.
    pub label: String,
    /// System name → outcome of each round.
    pub runs: Vec<(String, Vec<Outcome>)>,
}

impl CaseRuns {
    /// The median over the rounds of one metric of one system, with the
    /// number of rounds that measured it.
    pub fn median_of(&self, system: &str, metric: &str) -> (Option<f64>, usize) {
        let values: Vec<f64> = self
            .runs
            .iter()
            .filter(|(name, _)| name == system)
            .flat_map(|(_, outcomes)| outcomes)
            .filter_map(|outcome| match outcome {
                Outcome::Measured(samples) => {
                    samples.iter().find(|s| s.metric == metric).map(|s| s.value)
                }
                _ => None,
            })
            .collect();
        (median(&values), values.len())
    }

    /// The metrics in the order the runs reported them, with their units.
    pub fn metrics(&self) -> Vec<(String, Unit)> {
        let mut seen: Vec<(String, Unit)> = Vec::new();
        for outcome in self.runs.iter().flat_map(|(_, outcomes)| outcomes) {
            if let Outcome::Measured(samples) = outcome {
                for sample in samples {
                    if !seen.iter().any(|(metric, _)| *metric == sample.metric) {
                        seen.push((sample.metric.clone(), sample.unit));
                    }
                }
            }
        }
        seen
    }

    /// Why a system has no number, if none of its rounds measured one.
    fn missing_reason(&self, system: &str) -> String {
        let outcomes = self
            .runs
            .iter()
            .filter(|(name, _)| name == system)
            .flat_map(|(_, o)| o);
        let mut reasons: Vec<String> = Vec::new();
        for outcome in outcomes {
            let reason = match outcome {
                Outcome::Measured(_) => continue,
                Outcome::Skipped(why) => format!("skipped: {why}"),
                Outcome::TimedOut => "timed out".to_string(),
                Outcome::Failed(error) => format!("failed: {error}"),
            };
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
        if reasons.is_empty() {
            "not run".to_string()
        } else {
            reasons.join("; ")
        }
    }

    /// The case as a markdown table: one row a metric, one column a system,
    /// then Murmur's ratio to each of the others.
    pub fn table(&self, systems: &[&str], rounds: usize) -> String {
        let mut out = format!("**{}**\n\n| metric |", self.label);
        for system in systems {
            out.push_str(&format!(" {system} |"));
        }
        let others: Vec<&str> = systems.iter().skip(1).copied().collect();
        for other in &others {
            out.push_str(&format!(" {}/{other} |", systems[0]));
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(systems.len() + others.len()));
        out.push('\n');
        let metrics = self.metrics();
        if metrics.is_empty() {
            out.push_str("| (no numbers) |");
            for system in systems {
                out.push_str(&format!(" {} |", self.missing_reason(system)));
            }
            out.push_str(&" — |".repeat(others.len()));
            out.push('\n');
        }
        for (metric, unit) in metrics {
            out.push_str(&format!("| {metric} |"));
            let mut medians = Vec::new();
            for system in systems {
                let (value, measured) = self.median_of(system, &metric);
                medians.push(value);
                let cell = match value {
                    None => self.missing_reason(system),
                    Some(value) if measured < rounds => {
                        format!("{} ({measured}/{rounds} rounds)", format_value(value, unit))
                    }
                    Some(value) => format_value(value, unit),
                };
                out.push_str(&format!(" {cell} |"));
            }
            for index in 1..systems.len() {
                out.push_str(&format!(" {} |", ratio(medians[0], medians[index], unit)));
            }
            out.push('\n');
        }
        out
    }
}

/// Collects outcomes by case label, in the order cases first appear.
#[derive(Debug, Default)]
pub struct Results {
    /// The cases.
    pub cases: Vec<CaseRuns>,
}

impl Results {
    /// Records what `system` did in one round of `label`.
    pub fn record(&mut self, label: &str, system: &str, outcome: Outcome) {
        let position = match self.cases.iter().position(|case| case.label == label) {
            Some(position) => position,
            None => {
                self.cases.push(CaseRuns {
                    label: label.to_string(),
                    runs: Vec::new(),
                });
                self.cases.len() - 1
            }
        };
        let case = &mut self.cases[position];
        match case.runs.iter_mut().find(|(name, _)| name == system) {
            Some((_, outcomes)) => outcomes.push(outcome),
            None => case.runs.push((system.to_string(), vec![outcome])),
        }
    }

    /// The median of one metric of one system in one case.
    pub fn median(&self, label: &str, system: &str, metric: &str) -> Option<f64> {
        let case = self.cases.iter().find(|case| case.label == label)?;
        case.median_of(system, metric).0
    }
}

/// ✓ or ✗ for a target, or "—" when it could not be checked.
pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "—",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[2.0, 1.0], 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_report_of_later_heads_delivers_every_earlier_write() {
        let hashes: Vec<ChangeHash> = (0..5u8).map(|i| ChangeHash([i; 32])).collect();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let unknown = ChangeHash([99; 32]);
        let arrivals = vec![
            (at(1), vec![unknown]),
            (at(2), vec![hashes[1]]),
            (at(3), vec![hashes[0]]), // an older report changes nothing
            (at(4), vec![hashes[3]]),
        ];
        let delivered = deliveries(&hashes, &arrivals);
        assert_eq!(
            delivered,
            vec![Some(at(2)), Some(at(2)), Some(at(4)), Some(at(4)), None]
        );
    }

    #[test]
    fn values_show_in_their_units() {
        assert_eq!(format_value(0.0421, Unit::Millis), "42 µs");
        assert_eq!(format_value(2.5, Unit::Millis), "2.50 ms");
        assert_eq!(format_value(12_345.0, Unit::Millis), "12,345 ms");
        assert_eq!(format_value(20_512.4, Unit::PerSecond), "20,512/s");
        assert_eq!(format_value(999.0, Unit::Bytes), "999 B");
        assert_eq!(format_value(1.0, Unit::Flag), "yes");
        assert_eq!(format_value(1.5, Unit::Seconds), "1.50 s");
        assert_eq!(thousands(-1_234_567.0), "-1,234,567");
        assert_eq!(thousands(0.4), "0");
        assert_eq!(format_value(f64::NAN, Unit::Millis), "—");
    }

    #[test]
    fn ratios_are_murmur_over_the_other() {
        assert_eq!(ratio(Some(1.0), Some(4.0), Unit::Millis), "0.25×");
        assert_eq!(ratio(Some(500.0), Some(2.0), Unit::Bytes), "250×");
        assert_eq!(ratio(Some(1.0), Some(400.0), Unit::Millis), "0.003×");
        assert_eq!(ratio(Some(1.0), Some(0.0), Unit::Millis), "—");
        assert_eq!(ratio(None, Some(1.0), Unit::Millis), "—");
        assert_eq!(ratio(Some(1.0), Some(1.0), Unit::Flag), "—");
    }

    #[test]
    fn the_section_is_appended_once_then_replaced_in_place() {
        let section =
            |body: &str| format!("{BEGIN_MARKER}\n## Side by side\n{body}\n{END_MARKER}\n");
        let original = "# Benchmarks\n\nearlier text\n";
        let first = replace_section(original, &section("one"));
        assert_eq!(
            first,
            format!("# Benchmarks\n\nearlier text\n\n{}", section("one"))
        );
        let with_tail = format!("{first}\n## Later section\n");
        let second = replace_section(&with_tail, &section("two"));
        assert_eq!(
            second,
            format!(
                "# Benchmarks\n\nearlier text\n\n{}\n\n## Later section\n",
                section("two").trim_end()
            )
        );
        assert_eq!(second.matches(BEGIN_MARKER).count(), 1);
        assert_eq!(replace_section("", &section("x")), section("x"));
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date(1_704_067_199), "2023-12-31 23:59 UTC");
    }

    #[test]
    fn tables_show_medians_ratios_and_why_a_number_is_missing() {
        let mut results = Results::default();
        let p99 = |value| Outcome::Measured(vec![Sample::new("p99", Unit::Millis, value)]);
        for value in [2.0, 1.0, 3.0] {
            results.record("case", "Murmur", p99(value));
        }
        results.record("case", "samod", p99(8.0));
        results.record("case", "samod", Outcome::TimedOut);
        results.record("case", "floor", Outcome::Skipped("no disk".into()));
        assert_eq!(results.median("case", "Murmur", "p99"), Some(2.0));
        let table = results.cases[0].table(&["Murmur", "samod", "floor"], 3);
        assert!(
            table.contains(
                "| p99 | 2.00 ms | 8.00 ms (1/3 rounds) | skipped: no disk | 0.25× | — |"
            ),
            "{table}"
        );
    }
}

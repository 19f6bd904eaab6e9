//! The sweep's report: the figures it measured, the targets they are checked
//! against, and the three files written under `target/bench-report/` (`report.json`,
//! `report.md`, `latency_vs_size.svg`).

use std::borrow::Cow;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::Path;

use crate::dispatch::DispatchResult;
use crate::dispatch_report;
use crate::peers::PeerResult;
use plotters::coord::combinators::{BindKeyPoints, LogCoord, WithKeyPoints};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Report types
// ---------------------------------------------------------------------------------------------

/// Everything one run of the sweep measured, with the context needed to compare runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// When the report was written, RFC 3339 UTC.
    pub generated_at: String,
    /// The command line that produced the report.
    pub command: String,
    /// `"quick"`, `"full"` or `"custom"`.
    pub mode: String,
    /// The machine the sweep ran on.
    pub machine: Machine,
    /// `SHOW server_version` followed by the full `version()`.
    pub postgres_version: String,
    /// How the workloads reached the server, e.g. "TCP 127.0.0.1:5432, r2d2 pool, …".
    pub connection: String,
    /// One entry per dataset size, ascending by steps.
    pub sizes: Vec<SizeReport>,
    /// Free-form remarks the runner adds.
    pub notes: Vec<String>,
    /// Creating work through the crate's API (C1-C4), on a database of its own.
    #[serde(default)]
    pub creation: Vec<WorkloadResult>,
    /// The dataset loaded the ordinary way, with and without the triggers (C5).
    #[serde(default)]
    pub load: Option<LoadComparison>,
    /// Dispatching work (W7j, W7b, W7m, W8, W9, W10), each on a database of its own.
    #[serde(default)]
    pub dispatch: Vec<DispatchResult>,
    /// The job queues measured in the same run (`--peers`).
    #[serde(default)]
    pub peers: Vec<PeerResult>,
}

/// The same load of the dataset through plain `INSERT … SELECT` statements,
/// once with the crate's triggers on and once on the bare schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadComparison {
    /// Steps loaded.
    pub steps: u64,
    /// Phases with the triggers on.
    pub triggers: Vec<Phase>,
    /// The same phases without the crate's triggers.
    pub bare: Vec<Phase>,
}

impl LoadComparison {
    pub fn triggers_seconds(&self) -> f64 {
        self.triggers.iter().map(|phase| phase.seconds).sum()
    }

    pub fn bare_seconds(&self) -> f64 {
        self.bare.iter().map(|phase| phase.seconds).sum()
    }
}

/// The machine the sweep ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Logical CPU cores.
    pub cores: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// Total memory in GiB.
    pub memory_gib: f64,
    /// Operating system and kernel.
    pub os: String,
}

/// The dataset built for one requested size and the workloads timed against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeReport {
    /// Requested size in steps: 10_000, 100_000, 1_000_000 or 10_000_000.
    pub target_steps: u64,
    /// What the generator actually built.
    pub dataset: DatasetStats,
    /// The workloads timed against this dataset.
    pub workloads: Vec<WorkloadResult>,
}

/// Row counts and size of a generated dataset, and how long generating it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Tasks, historical and active.
    pub tasks: u64,
    /// Tasks with an unfinished frontier.
    pub active_tasks: u64,
    /// Workflow steps.
    pub steps: u64,
    /// Step dependency edges.
    pub edges: u64,
    /// Step state transitions.
    pub step_transitions: u64,
    /// Task state transitions.
    pub task_transitions: u64,
    /// `pg_database_size` after `VACUUM ANALYZE`.
    pub database_bytes: u64,
    /// Generation phases in the order they ran.
    pub phases: Vec<Phase>,
}

/// One phase of dataset generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// What the phase did, e.g. "tasks" or "vacuum analyze".
    pub name: String,
    /// Wall-clock duration.
    pub seconds: f64,
}

/// The figures of one workload at one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadResult {
    /// "W1".."W7", or "L-W1" / "L-W4" for the legacy views.
    pub id: String,
    /// What one call does.
    pub description: String,
    /// Timed calls, after warm-up.
    pub calls: u64,
    /// Median latency.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency.
    pub p99_ms: Option<f64>,
    /// Slowest call.
    pub max_ms: Option<f64>,
    /// Mean latency.
    pub mean_ms: Option<f64>,
    /// Shared hit + read buffers per call, from `EXPLAIN (ANALYZE, BUFFERS)`.
    pub buffers_per_call: Option<f64>,
    /// Completed steps per second (W7).
    pub steps_per_second: Option<f64>,
    /// Steps claimed by more than one worker (W7); must be 0.
    pub duplicate_claims: Option<u64>,
}

/// The content of `report.json`: the report and its targets evaluated at write time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportFile<'a> {
    /// The measured figures.
    pub report: Cow<'a, Report>,
    /// `evaluate_targets(&report)`.
    pub targets: Vec<TargetCheck>,
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// One target of the benchmark, checked against a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    /// What is measured, e.g. "W1 p50 at 10M steps".
    pub measure: String,
    /// The number to reach, e.g. "≤ 0.3 ms".
    pub target: String,
    /// The measured figure, or what is missing to measure it.
    pub measured: String,
    /// Whether the target is reached.
    pub status: TargetStatus,
}

/// Outcome of a target check; serialized as "met", "missed" or "not_measured".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetStatus {
    /// The measured figure reaches the target.
    Met,
    /// The measured figure misses the target.
    Missed,
    /// The run did not measure what the target needs (e.g. a quick run has no 10M size).
    NotMeasured,
}

const STEPS_100K: u64 = 100_000;
const STEPS_1M: u64 = 1_000_000;
const STEPS_10M: u64 = 10_000_000;

/// Workloads timed call by call through the crate's functions (W7 is a throughput run).
const TIMED_WORKLOADS: [&str; 6] = ["W1", "W2", "W3", "W4", "W5", "W6"];

/// Prefix of the ids of workloads run against the legacy views.
const LEGACY_PREFIX: &str = "L-";

/// A limit a measured figure must respect.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

impl Bound {
    fn holds(self, value: f64) -> bool {
        match self {
            Bound::AtMost(limit) => value <= limit,
            Bound::AtLeast(limit) => value >= limit,
        }
    }

    fn describe(self, unit: &str) -> String {
        let (sign, limit) = match self {
            Bound::AtMost(limit) => ("≤", limit),
            Bound::AtLeast(limit) => ("≥", limit),
        };
        // Limits are round numbers: show them as written (0.3, 1,000).
        let limit = if limit.fract() == 0.0 {
            format_count(limit as u64)
        } else {
            limit.to_string()
        };
        format!("{sign} {limit}{unit}")
    }
}

/// A measured value and how to show it, or a sentence saying what is missing.
pub(crate) type Measured = Result<(f64, String), String>;

/// Checks every target of the benchmark against `report`.
pub fn evaluate_targets(report: &Report) -> Vec<TargetCheck> {
    let p50_at_10m = |id: &str, limit: f64| {
        check(
            format!("{id} p50 at 10M steps"),
            Bound::AtMost(limit),
            " ms",
            p50_at(report, id, STEPS_10M).map(|p50| (p50, format_ms(p50))),
        )
    };
    let flatness = |id: &str| {
        check(
            format!("flatness: {id} p50 at 10M ÷ p50 at 100K"),
            Bound::AtMost(1.5),
            "",
            p50_ratio(report, (id, STEPS_10M), (id, STEPS_100K)),
        )
    };
    let legacy_ratio = |id: &str| {
        let legacy = format!("{LEGACY_PREFIX}{id}");
        check(
            format!("legacy ÷ functions: {legacy} p50 ÷ {id} p50 at 1M steps"),
            Bound::AtLeast(1_000.0),
            "",
            p50_ratio(report, (&legacy, STEPS_1M), (id, STEPS_1M)),
        )
    };

    let mut checks = vec![p50_at_10m("W1", 0.3), p50_at_10m("W4", 0.3)];
    let mut w3 = p50_at_10m("W3", 0.3);
    w3.target.push_str(" (100 ids)");
    checks.push(w3);
    checks.extend([flatness("W1"), flatness("W4")]);
    checks.push(plan_stability(report));
    checks.extend([legacy_ratio("W1"), legacy_ratio("W4")]);
    checks.extend([p50_at_10m("W2", 10.0), p50_at_10m("W5", 10.0)]);
    checks.push(check(
        "W6 p50 (largest size measured)".into(),
        Bound::AtMost(0.5),
        " ms",
        at_largest_size(report, "W6", |w| w.p50_ms)
            .map(|(p50, size)| (p50, format!("{} at {size}", format_ms(p50)))),
    ));
    checks.push(check(
        "W7 throughput, 4 workers (largest size measured)".into(),
        Bound::AtLeast(3_000.0),
        " steps/s",
        at_largest_size(report, "W7", |w| w.steps_per_second).map(|(rate, size)| {
            let cores = report.machine.cores;
            let text = format!("{} steps/s at {size}, {cores} cores", format_number(rate));
            (rate, text)
        }),
    ));
    checks.push(duplicate_claims(report));
    checks.extend(creation_targets(report));
    checks.extend(dispatch_report::targets(&report.dispatch, &report.peers));
    checks
}

/// C1-C5: creating work through the API, and loading it the ordinary way.
fn creation_targets(report: &Report) -> Vec<TargetCheck> {
    let workload = |id: &str| report.creation.iter().find(|w| w.id == id);
    let rate = |id: &str| {
        let measured = workload(id)
            .and_then(|w| w.steps_per_second)
            .map(|rate| (rate, format!("{} steps/s", format_number(rate))))
            .ok_or_else(|| format!("{id} not measured"));
        check(
            format!("{id} create_tasks, batches of 100"),
            Bound::AtLeast(20_000.0),
            " steps/s",
            measured,
        )
    };
    let seconds = |id: &str, limit: f64| {
        let measured = workload(id)
            .and_then(|w| w.p50_ms)
            .map(|ms| (ms / 1_000.0, format_seconds(ms / 1_000.0)))
            .ok_or_else(|| format!("{id} not measured"));
        check(
            format!("{id} create_task"),
            Bound::AtMost(limit),
            " s",
            measured,
        )
    };
    let levels = workload("C4")
        .and_then(|w| w.p50_ms)
        .map(|ms| (ms, format_ms(ms)))
        .ok_or_else(|| "C4 not measured".to_string());
    let load = report
        .load
        .as_ref()
        .map(|load| {
            let (on, bare) = (load.triggers_seconds(), load.bare_seconds());
            let text = format!(
                "{} ({} ÷ {} at {} steps)",
                format_number(on / bare),
                format_seconds(on),
                format_seconds(bare),
                format_count(load.steps)
            );
            (on / bare, text)
        })
        .ok_or_else(|| "C5 not measured".to_string());
    vec![
        rate("C1"),
        rate("C2"),
        seconds("C3 chain", 0.5),
        seconds("C3 fan-in", 0.3),
        seconds("C3 layered", 1.0),
        check(
            "C4 calculate_dependency_levels, 10,000-step chain".into(),
            Bound::AtMost(50.0),
            " ms",
            levels,
        ),
        check(
            "C5 ordinary load, triggers on ÷ bare schema".into(),
            Bound::AtMost(2.0),
            "",
            load,
        ),
    ]
}

/// Builds a check from a measured value (or what is missing) and the bound it must respect.
pub(crate) fn check(measure: String, bound: Bound, unit: &str, measured: Measured) -> TargetCheck {
    let (measured, status) = match measured {
        Ok((value, text)) if bound.holds(value) => (text, TargetStatus::Met),
        Ok((_, text)) => (text, TargetStatus::Missed),
        Err(missing) => (missing, TargetStatus::NotMeasured),
    };
    TargetCheck {
        measure,
        target: bound.describe(unit),
        measured,
        status,
    }
}

/// The size whose `target_steps` is `steps`.
fn size_at(report: &Report, steps: u64) -> Result<&SizeReport, String> {
    report
        .sizes
        .iter()
        .find(|size| size.target_steps == steps)
        .ok_or_else(|| format!("no {} run", size_label(steps)))
}

/// The p50 of workload `id` at `steps`, or what is missing.
fn p50_at(report: &Report, id: &str, steps: u64) -> Result<f64, String> {
    size_at(report, steps)?
        .workloads
        .iter()
        .find(|workload| workload.id == id)
        .and_then(|workload| workload.p50_ms)
        .ok_or_else(|| format!("no {id} p50 at {}", size_label(steps)))
}

/// The ratio of two p50s, each given as (workload id, target steps).
fn p50_ratio(report: &Report, numerator: (&str, u64), denominator: (&str, u64)) -> Measured {
    let top = p50_at(report, numerator.0, numerator.1)?;
    let bottom = p50_at(report, denominator.0, denominator.1)?;
    let ratio = top / bottom;
    let text = format!(
        "{} ({} ÷ {} ms)",
        format_number(ratio),
        format_number(top),
        format_number(bottom)
    );
    Ok((ratio, text))
}

/// The worst p99 ÷ p50 over every timed workload at every size.
fn plan_stability(report: &Report) -> TargetCheck {
    let worst = report
        .sizes
        .iter()
        .flat_map(|size| size.workloads.iter().map(move |w| (size.target_steps, w)))
        .filter(|(_, w)| TIMED_WORKLOADS.contains(&w.id.as_str()))
        .filter_map(|(steps, w)| Some((steps, w, w.p50_ms?, w.p99_ms?)))
        .max_by(|a, b| (a.3 / a.2).total_cmp(&(b.3 / b.2)));
    let measured = worst
        .map(|(steps, w, p50, p99)| {
            let ratio = p99 / p50;
            let text = format!(
                "{}, worst: {} at {} (p99 {} ÷ p50 {} ms)",
                format_number(ratio),
                w.id,
                size_label(steps),
                format_number(p99),
                format_number(p50)
            );
            (ratio, text)
        })
        .ok_or_else(|| "no p50 and p99 for W1–W6".to_string());
    check(
        "plan stability: p99 ÷ p50, W1–W6 at every size".into(),
        Bound::AtMost(3.0),
        "",
        measured,
    )
}

/// A figure of workload `id` at the largest size where it was measured, with that size's label.
fn at_largest_size(
    report: &Report,
    id: &str,
    figure: fn(&WorkloadResult) -> Option<f64>,
) -> Result<(f64, String), String> {
    sizes_ascending(report)
        .into_iter()
        .rev()
        .find_map(|size| {
            let value = size
                .workloads
                .iter()
                .find(|w| w.id == id)
                .and_then(figure)?;
            Some((value, size_label(size.target_steps)))
        })
        .ok_or_else(|| format!("{id} not measured"))
}

/// Duplicate claims must be 0 at every size W7 ran, not only the largest.
fn duplicate_claims(report: &Report) -> TargetCheck {
    let counts: Vec<(u64, u64)> = sizes_ascending(report)
        .into_iter()
        .filter_map(|size| {
            let w7 = size.workloads.iter().find(|w| w.id == "W7")?;
            Some((size.target_steps, w7.duplicate_claims?))
        })
        .collect();
    let worst = counts.iter().map(|&(_, count)| count).max();
    let measured = match worst {
        None => Err("W7 not measured".to_string()),
        Some(0) => {
            let labels: Vec<String> = counts.iter().map(|&(s, _)| size_label(s)).collect();
            Ok((0.0, format!("0 at every size ({})", labels.join(", "))))
        }
        Some(worst) => {
            let failures: Vec<String> = counts
                .iter()
                .filter(|&&(_, count)| count > 0)
                .map(|&(steps, count)| format!("{} at {}", format_count(count), size_label(steps)))
                .collect();
            Ok((worst as f64, failures.join(", ")))
        }
    };
    let mut check = check(
        "W7 duplicate claims (every size)".into(),
        Bound::AtMost(0.0),
        "",
        measured,
    );
    check.target = "0".into();
    check
}

/// The sizes of the report, ascending by requested steps.
fn sizes_ascending(report: &Report) -> Vec<&SizeReport> {
    let mut sizes: Vec<&SizeReport> = report.sizes.iter().collect();
    sizes.sort_by_key(|size| size.target_steps);
    sizes
}

// ---------------------------------------------------------------------------------------------
// Writing the files
// ---------------------------------------------------------------------------------------------

/// File names inside the report directory.
const JSON_FILE: &str = "report.json";
const MARKDOWN_FILE: &str = "report.md";
const PLOT_FILE: &str = "latency_vs_size.svg";

/// Creates `dir` and writes `report.json`, `report.md` and `latency_vs_size.svg` into it.
pub fn write_report(dir: &Path, report: &Report) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let file = ReportFile {
        report: Cow::Borrowed(report),
        targets: evaluate_targets(report),
    };
    let json = serde_json::to_string_pretty(&file).map_err(io::Error::other)?;
    fs::write(dir.join(JSON_FILE), json + "\n")?;
    write_rendered(dir, report, &file.targets)
}

/// Writes `report.md` and the plot of `dir/report.json` again, after a change
/// to how they are drawn; the figures in `report.json` are left as measured.
pub fn render_again(dir: &Path) -> io::Result<()> {
    let json = fs::read_to_string(dir.join(JSON_FILE))?;
    let file: ReportFile<'static> = serde_json::from_str(&json).map_err(io::Error::other)?;
    write_rendered(dir, &file.report, &evaluate_targets(&file.report))
}

fn write_rendered(dir: &Path, report: &Report, targets: &[TargetCheck]) -> io::Result<()> {
    fs::write(dir.join(MARKDOWN_FILE), render_markdown(report, targets))?;
    fs::write(dir.join(PLOT_FILE), render_plot(report)?)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// report.md
// ---------------------------------------------------------------------------------------------

/// The whole of `report.md`.
fn render_markdown(report: &Report, targets: &[TargetCheck]) -> String {
    let sections = [
        header_section(report),
        targets_section(targets),
        dataset_section(report),
        latency_section(report),
        throughput_section(report),
        creation_section(report),
        dispatch_report::section(&report.dispatch, &report.peers),
        notes_section(report),
    ];
    let mut markdown = sections
        .into_iter()
        .filter(|section| !section.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n");
    markdown.push('\n');
    markdown
}

/// Title, context lines and the plot.
fn header_section(report: &Report) -> String {
    let machine = &report.machine;
    [
        "# tasker-diesel benchmark sweep".to_string(),
        String::new(),
        format!("- Generated at: {}", report.generated_at),
        format!("- Mode: {}", report.mode),
        format!("- Command: `{}`", report.command),
        format!(
            "- Machine: {} cores, {}, {:.1} GiB memory, {}",
            machine.cores, machine.cpu_model, machine.memory_gib, machine.os
        ),
        format!("- PostgreSQL: {}", report.postgres_version),
        format!("- Connection: {}", report.connection),
        String::new(),
        format!("![p50 latency versus steps in the database]({PLOT_FILE})"),
    ]
    .join("\n")
}

/// The targets with their status.
fn targets_section(targets: &[TargetCheck]) -> String {
    let rows = targets
        .iter()
        .map(|t| {
            let status = match t.status {
                TargetStatus::Met => "✅ met",
                TargetStatus::Missed => "❌ missed",
                TargetStatus::NotMeasured => "— not measured",
            };
            vec![
                t.measure.clone(),
                t.target.clone(),
                t.measured.clone(),
                status.into(),
            ]
        })
        .collect();
    let header = ["measure", "target", "measured", "status"];
    format!(
        "## Targets\n\n{}",
        markdown_table(&header, rows, header.len())
    )
}

/// Row counts, database size and generation time of each dataset.
fn dataset_section(report: &Report) -> String {
    let sizes = sizes_ascending(report);
    if sizes.is_empty() {
        return String::new();
    }
    let rows = sizes
        .iter()
        .map(|size| {
            let d = &size.dataset;
            vec![
                size_label(size.target_steps),
                format_count(d.steps),
                format_count(d.tasks),
                format_count(d.active_tasks),
                format_count(d.edges),
                format_count(d.step_transitions),
                format_count(d.task_transitions),
                format_bytes(d.database_bytes),
                format_seconds(d.phases.iter().map(|p| p.seconds).sum()),
            ]
        })
        .collect();
    let header = [
        "size",
        "steps",
        "tasks",
        "active tasks",
        "edges",
        "step transitions",
        "task transitions",
        "database",
        "generation",
    ];

    let phase_names = distinct(
        sizes
            .iter()
            .flat_map(|s| s.dataset.phases.iter().map(|p| &p.name)),
    );
    let phase_rows = phase_names
        .into_iter()
        .map(|name| {
            let cells = sizes.iter().map(|size| {
                let phase = size.dataset.phases.iter().find(|p| p.name == *name);
                phase.map(|p| format_seconds(p.seconds))
            });
            (name.clone(), cells.collect())
        })
        .collect();

    format!(
        "## Datasets\n\n{}\n\nGeneration time per phase:\n\n{}",
        markdown_table(&header, rows, 1),
        by_size_table("phase", &sizes, phase_rows)
    )
}

/// p50 / p99 and buffers per call of every workload with latencies, one column per size.
fn latency_section(report: &Report) -> String {
    let sizes = sizes_ascending(report);
    let latency_rows = workload_rows(&sizes, |w| {
        let p50 = w.p50_ms?;
        let other = |ms: Option<f64>| ms.map_or_else(|| "—".into(), format_number);
        Some(format!(
            "{} / {} / {}",
            format_number(p50),
            other(w.p99_ms),
            other(w.max_ms)
        ))
    });
    if latency_rows.is_empty() {
        return String::new();
    }
    let buffer_rows = workload_rows(&sizes, |w| w.buffers_per_call.map(format_number));
    let call_rows = workload_rows(&sizes, |w| w.p50_ms.map(|_| format_count(w.calls)));
    let calls = sizes
        .iter()
        .flat_map(|size| &size.workloads)
        .filter(|w| w.p50_ms.is_some())
        .map(|w| w.calls);
    let calls = match (calls.clone().min(), calls.max()) {
        (Some(min), Some(max)) if min != max => {
            format!("{}–{}", format_count(min), format_count(max))
        }
        (Some(min), _) => format_count(min),
        _ => "0".into(),
    };

    format!(
        "## Latency\n\np50 / p99 / max in ms, over {calls} timed calls per workload and size on \
         one connection, after warm-up. `L-` rows query the legacy views.\n\n{}\n\n\
         Shared buffers (hit + read) per call, from `EXPLAIN (ANALYZE, BUFFERS)`:\n\n{}\n\n\
         Timed calls:\n\n{}",
        by_size_table("workload", &sizes, latency_rows),
        by_size_table("workload", &sizes, buffer_rows),
        by_size_table("workload", &sizes, call_rows),
    )
}

/// Steps per second and duplicate claims of every throughput workload (W7).
fn throughput_section(report: &Report) -> String {
    let sizes = sizes_ascending(report);
    let is_throughput = |w: &WorkloadResult| w.steps_per_second.is_some();
    let ids = distinct(sizes.iter().flat_map(|s| {
        s.workloads
            .iter()
            .filter(|w| is_throughput(w))
            .map(|w| &w.id)
    }));
    if ids.is_empty() {
        return String::new();
    }
    let rows = ids
        .into_iter()
        .flat_map(|id| {
            let rate = figure_row(&sizes, id, |w| w.steps_per_second.map(format_number));
            let duplicates = figure_row(&sizes, id, |w| w.duplicate_claims.map(format_count));
            [
                (format!("{id} steps/s"), rate),
                (format!("{id} duplicate claims"), duplicates),
            ]
        })
        .collect();
    let description = sizes
        .iter()
        .flat_map(|s| &s.workloads)
        .filter(|w| is_throughput(w))
        .map(|w| format!("{}: {}", w.id, w.description))
        .next()
        .unwrap_or_default();
    format!(
        "## Throughput\n\n{description}\n\n{}",
        by_size_table("measure", &sizes, rows)
    )
}

/// C1-C4 figures, and the C5 load phase by phase.
fn creation_section(report: &Report) -> String {
    let mut parts = Vec::new();
    if !report.creation.is_empty() {
        let rows = report
            .creation
            .iter()
            .map(|w| {
                let cell = |value: Option<f64>, format: fn(f64) -> String| {
                    value.map_or_else(|| "—".to_string(), format)
                };
                vec![
                    format!("{}: {}", w.id, w.description),
                    format_count(w.calls),
                    cell(w.p50_ms, format_ms),
                    cell(w.p99_ms, format_ms),
                    cell(w.steps_per_second, format_number),
                ]
            })
            .collect();
        let header = ["workload", "calls", "p50 ms", "p99 ms", "steps/s"];
        parts.push(format!(
            "## Creating work\n\n{}",
            markdown_table(&header, rows, 1)
        ));
    }
    if let Some(load) = &report.load {
        let rows = load
            .triggers
            .iter()
            .map(|phase| {
                let bare = load.bare.iter().find(|b| b.name == phase.name);
                vec![
                    phase.name.clone(),
                    format_seconds(phase.seconds),
                    bare.map_or_else(|| "—".into(), |b| format_seconds(b.seconds)),
                    bare.map_or_else(|| "—".into(), |b| format_number(phase.seconds / b.seconds)),
                ]
            })
            .chain(std::iter::once(vec![
                "total".to_string(),
                format_seconds(load.triggers_seconds()),
                format_seconds(load.bare_seconds()),
                format_number(load.triggers_seconds() / load.bare_seconds()),
            ]))
            .collect();
        let header = ["phase", "triggers on", "bare schema", "ratio"];
        parts.push(format!(
            "## Loading the dataset with and without the triggers ({} steps)\n\n\
             The generation (one `INSERT … SELECT` per table and chunk, maintained columns \
             left to the triggers), and the same statements with the crate's triggers \
             disabled.\n\n{}",
            format_count(load.steps),
            markdown_table(&header, rows, 1)
        ));
    }
    parts.join("\n\n")
}

/// The runner's remarks.
fn notes_section(report: &Report) -> String {
    if report.notes.is_empty() {
        return String::new();
    }
    let bullets: Vec<String> = report.notes.iter().map(|n| format!("- {n}")).collect();
    format!("## Notes\n\n{}", bullets.join("\n"))
}

/// One row per workload that has `cell` somewhere, labelled "id: description"
/// with the description of the largest size (the notes say where smaller
/// sizes differ).
fn workload_rows(
    sizes: &[&SizeReport],
    cell: impl Fn(&WorkloadResult) -> Option<String> + Copy,
) -> Vec<(String, Vec<Option<String>>)> {
    let all = sizes.iter().flat_map(|size| &size.workloads);
    let with_cell = all.clone().filter(|w| cell(w).is_some());
    distinct(with_cell.map(|w| &w.id))
        .into_iter()
        .map(|id| {
            let description = all.clone().rfind(|w| w.id == *id).map(|w| &w.description);
            let label = format!("{id}: {}", description.map_or("", |d| d));
            (label, figure_row(sizes, id, cell))
        })
        .collect()
}

/// The cells of workload `id` at each size.
fn figure_row(
    sizes: &[&SizeReport],
    id: &str,
    cell: impl Fn(&WorkloadResult) -> Option<String>,
) -> Vec<Option<String>> {
    sizes
        .iter()
        .map(|size| size.workloads.iter().find(|w| w.id == id).and_then(&cell))
        .collect()
}

/// A table with one labelled row per item and one column per size; missing cells show "—".
fn by_size_table(
    first_column: &str,
    sizes: &[&SizeReport],
    rows: Vec<(String, Vec<Option<String>>)>,
) -> String {
    let labels: Vec<String> = sizes.iter().map(|s| size_label(s.target_steps)).collect();
    let header: Vec<&str> = std::iter::once(first_column)
        .chain(labels.iter().map(String::as_str))
        .collect();
    let rows = rows
        .into_iter()
        .map(|(label, cells)| {
            let cells = cells.into_iter().map(|c| c.unwrap_or_else(|| "—".into()));
            std::iter::once(label).chain(cells).collect()
        })
        .collect();
    markdown_table(&header, rows, 1)
}

/// A Markdown table; columns from index `numeric_from` on hold figures and are right-aligned.
pub(crate) fn markdown_table(
    header: &[&str],
    rows: Vec<Vec<String>>,
    numeric_from: usize,
) -> String {
    let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let rule: Vec<String> = (0..header.len())
        .map(|i| if i < numeric_from { "---" } else { "---:" }.to_string())
        .collect();
    std::iter::once(line(&header))
        .chain(std::iter::once(line(&rule)))
        .chain(rows.iter().map(|row| line(row)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The distinct items of `items`, in order of first appearance.
fn distinct<'a>(items: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
    let mut seen: Vec<&String> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Number formatting
// ---------------------------------------------------------------------------------------------

/// A size in steps as people say it: 10K, 100K, 1M, 2.5M; odd sizes in full.
pub fn size_label(steps: u64) -> String {
    let (unit, suffix) = match steps {
        s if s >= 1_000_000 && s % 100_000 == 0 => (1_000_000, "M"),
        s if s >= 1_000 && s % 100 == 0 => (1_000, "K"),
        _ => return format_count(steps),
    };
    format!("{}{suffix}", steps as f64 / unit as f64)
}

/// A figure with at most 3 significant digits below 1,000 (0.142, 1.37, 12.3, 0.15, 9), else a
/// grouped integer (1,234).
pub(crate) fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value.abs() >= 999.5 {
        let grouped = format_count(value.abs().round() as u64);
        return if value < 0.0 {
            format!("-{grouped}")
        } else {
            grouped
        };
    }
    if value == 0.0 {
        return "0".into();
    }
    let rounded = round_significant(value, 3);
    let magnitude = rounded.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).max(0) as usize;
    let text = format!("{rounded:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// `value` rounded to `digits` significant digits.
fn round_significant(value: f64, digits: i32) -> f64 {
    let magnitude = value.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits - 1 - magnitude);
    (value * scale).round() / scale
}

/// A latency in ms with 3 significant digits.
pub(crate) fn format_ms(ms: f64) -> String {
    format!("{} ms", format_number(ms))
}

/// A duration in seconds with 3 significant digits.
fn format_seconds(seconds: f64) -> String {
    format!("{} s", format_number(seconds))
}

/// An integer with thousands separators: 1,234,567.
pub(crate) fn format_count(count: u64) -> String {
    let digits = count.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// A byte count in MiB below 1 GiB, else in GiB.
fn format_bytes(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    const GIB: f64 = 1024.0 * MIB;
    let bytes = bytes as f64;
    if bytes < GIB {
        format!("{} MiB", format_number(bytes / MIB))
    } else {
        format!("{} GiB", format_number(bytes / GIB))
    }
}

// ---------------------------------------------------------------------------------------------
// latency_vs_size.svg
// ---------------------------------------------------------------------------------------------

const PLOT_PIXELS: (u32, u32) = (1000, 660);

/// Colours of the crate's functions: cool and neutral hues.
const FUNCTION_COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

/// Colours of the legacy views: warm hues, drawn dashed.
const LEGACY_COLOURS: [RGBColor; 3] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(227, 119, 194),
];

/// A logarithmic axis with ticks chosen by `log_ticks`.
type LogAxis = WithKeyPoints<LogCoord<f64>>;

/// Width of the legend column right of the chart.
const LEGEND_WIDTH: u32 = 200;

/// A plotters error, whatever the drawing area it comes from.
type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// One line of the plot: the p50 of one workload at each dataset size.
struct LatencySeries {
    id: String,
    legacy: bool,
    colour: RGBColor,
    /// (steps in the database, p50 ms), ascending by steps.
    points: Vec<(f64, f64)>,
}

impl LatencySeries {
    /// The legend text.
    fn label(&self) -> String {
        if self.legacy {
            format!("{} (legacy view)", self.id)
        } else {
            self.id.clone()
        }
    }

    /// Draws the line through `points`: dashed for the legacy views, solid for the functions.
    fn draw_line<DB: DrawingBackend, CT: CoordTranslate>(
        &self,
        area: &DrawingArea<DB, CT>,
        points: Vec<CT::From>,
    ) -> PlotResult
    where
        CT::From: Clone,
        DB::ErrorType: 'static,
    {
        let style = self.colour.stroke_width(2);
        if self.legacy {
            area.draw(&DashedPathElement::new(points, 8, 5, style))?;
        } else {
            area.draw(&PathElement::new(points, style))?;
        }
        Ok(())
    }

    /// Draws a point marker: a triangle for the legacy views, a dot for the functions.
    fn draw_marker<DB: DrawingBackend, CT: CoordTranslate>(
        &self,
        area: &DrawingArea<DB, CT>,
        point: CT::From,
    ) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let fill = self.colour.filled();
        if self.legacy {
            area.draw(&TriangleMarker::new(point, 6, fill))?;
        } else {
            area.draw(&Circle::new(point, 4, fill))?;
        }
        Ok(())
    }
}

/// Renders the log-log plot of p50 latency against steps in the database as SVG text.
fn render_plot(report: &Report) -> io::Result<String> {
    let series = latency_series(report);
    let mut svg = String::new();
    draw_plot(&mut svg, &series).map_err(|e| io::Error::other(format!("plot: {e}")))?;
    Ok(svg)
}

/// Draws the chart, one line per series, and the legend in a column on the right where it
/// hides no line.
fn draw_plot(svg: &mut String, series: &[LatencySeries]) -> PlotResult {
    let root = SVGBackend::with_string(svg, PLOT_PIXELS).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "p50 latency vs steps in the database",
        ("sans-serif", 24).into_font().color(&BLACK),
    )?;
    let (chart_area, legend_area) = root.split_horizontally(PLOT_PIXELS.0 - LEGEND_WIDTH);

    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_axis = log_axis(points().map(|p| p.0), 1e4..1e5);
    let y_axis = log_axis(points().map(|p| p.1), 0.01..1.0);
    let mut chart = ChartBuilder::on(&chart_area)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x_axis, y_axis)?;
    chart
        .configure_mesh()
        .x_desc("steps in the database")
        .y_desc("p50 latency (ms)")
        .x_label_formatter(&|steps| size_label(steps.round() as u64))
        .y_label_formatter(&|ms| format_number(*ms))
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .draw()?;

    let plot = chart.plotting_area();
    if series.is_empty() {
        let (width, height) = plot.dim_in_pixel();
        let centre = (width as i32 / 2, height as i32 / 2);
        let style = text_style(18).pos(Pos::new(HPos::Center, VPos::Center));
        plot.strip_coord_spec()
            .draw(&Text::new("no p50 latency measured", centre, style))?;
    }
    for line in series {
        line.draw_line(plot, line.points.clone())?;
        for &point in &line.points {
            line.draw_marker(plot, point)?;
        }
    }
    draw_legend(&legend_area, series)?;
    root.present()?;
    Ok(())
}

/// Draws one legend entry per series: a short line with its marker, and the label.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[LatencySeries],
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    let label_style = text_style(14).pos(Pos::new(HPos::Left, VPos::Center));
    for (row, line) in series.iter().enumerate() {
        let y = 40 + 24 * row as i32;
        line.draw_line(area, vec![(0, y), (32, y)])?;
        line.draw_marker(area, (16, y))?;
        area.draw(&Text::new(line.label(), (42, y), label_style.clone()))?;
    }
    Ok(())
}

/// Black sans-serif text of `size` pixels.
fn text_style(size: u32) -> TextStyle<'static> {
    TextStyle::from(("sans-serif", size).into_font()).color(&BLACK)
}

/// The p50 lines of every workload that has p50 values, in order of first appearance.
fn latency_series(report: &Report) -> Vec<LatencySeries> {
    let sizes = sizes_ascending(report);
    let with_p50 = sizes
        .iter()
        .flat_map(|s| &s.workloads)
        .filter(|w| w.p50_ms.is_some_and(|p50| p50 > 0.0));
    let (mut functions, mut legacies) = (0, 0);
    distinct(with_p50.map(|w| &w.id))
        .into_iter()
        .map(|id| {
            let legacy = id.starts_with(LEGACY_PREFIX);
            let colour = if legacy {
                legacies += 1;
                LEGACY_COLOURS[(legacies - 1) % LEGACY_COLOURS.len()]
            } else {
                functions += 1;
                FUNCTION_COLOURS[(functions - 1) % FUNCTION_COLOURS.len()]
            };
            let points = sizes
                .iter()
                .filter_map(|size| {
                    let workload = size.workloads.iter().find(|w| w.id == *id)?;
                    let p50 = workload.p50_ms.filter(|&p50| p50 > 0.0)?;
                    Some((size.dataset.steps as f64, p50))
                })
                .collect();
            LatencySeries {
                id: id.clone(),
                legacy,
                colour,
                points,
            }
        })
        .collect()
}

/// A log axis around `values` with ticks at round values.
fn log_axis(values: impl Iterator<Item = f64>, default: Range<f64>) -> LogAxis {
    let range = log_range(values, default);
    let ticks = log_ticks(&range);
    range.log_scale().with_key_points(ticks)
}

/// A range around the positive `values` with a margin on each side, or `default` without values.
fn log_range(values: impl Iterator<Item = f64>, default: Range<f64>) -> Range<f64> {
    let (min, max) = values
        .filter(|v| *v > 0.0)
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if min > max {
        return default;
    }
    min / 1.5..max * 1.5
}

/// Ticks inside `range`: powers of ten, or 1-2-5 steps when fewer than three powers fit.
fn log_ticks(range: &Range<f64>) -> Vec<f64> {
    let first = range.start.log10().floor() as i32;
    let last = range.end.log10().ceil() as i32;
    let ticks = |multiples: &[f64]| -> Vec<f64> {
        (first..=last)
            .flat_map(|power| multiples.iter().map(move |m| m * 10f64.powi(power)))
            .filter(|tick| range.contains(tick))
            .collect()
    };
    let powers = ticks(&[1.0]);
    if powers.len() >= 3 {
        powers
    } else {
        ticks(&[1.0, 2.0, 5.0])
    }
}

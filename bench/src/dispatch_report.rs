//! The dispatch workloads and the peers in the report: their targets and
//! their section of `report.md`.

use crate::dispatch::DispatchResult;
use crate::peers::PeerResult;
use crate::report::{
    check, format_count, format_ms, format_number, markdown_table, Bound, Measured, TargetCheck,
};

fn find<'a>(dispatch: &'a [DispatchResult], id: &str) -> Result<&'a DispatchResult, String> {
    dispatch
        .iter()
        .find(|result| result.id == id)
        .ok_or_else(|| format!("{id} not measured"))
}

/// `numerator` steps/s ÷ `denominator` steps/s.
fn rate_ratio(dispatch: &[DispatchResult], numerator: &str, denominator: &str) -> Measured {
    let top = find(dispatch, numerator)?.steps_per_second;
    let bottom = find(dispatch, denominator)?.steps_per_second;
    Ok((
        top / bottom,
        format!(
            "{} ({} ÷ {} steps/s)",
            format_number(top / bottom),
            format_number(top),
            format_number(bottom)
        ),
    ))
}

/// Server ms per call of `function` in workload `id`.
fn server_ms(dispatch: &[DispatchResult], id: &str, function: &str) -> Measured {
    let result = find(dispatch, id)?;
    let time = result
        .server_ms_per_call
        .iter()
        .find(|f| f.function == function)
        .ok_or_else(|| format!("no server time of {function} in {id}"))?;
    Ok((
        time.ms_per_call,
        format!(
            "{} ({} calls in {id})",
            format_ms(time.ms_per_call),
            format_count(time.calls)
        ),
    ))
}

pub fn targets(dispatch: &[DispatchResult], peers: &[PeerResult]) -> Vec<TargetCheck> {
    if dispatch.is_empty() {
        return Vec::new();
    }
    let best_peer = peers
        .iter()
        .max_by(|a, b| a.jobs_per_second.total_cmp(&b.jobs_per_second));
    let against_peer = |id: &str| {
        let measured = match (find(dispatch, id), best_peer) {
            (Ok(ours), Some(peer)) => Ok((
                ours.steps_per_second / peer.jobs_per_second,
                format!(
                    "{} ({} steps/s ÷ {} jobs/s of {}, {})",
                    format_number(ours.steps_per_second / peer.jobs_per_second),
                    format_number(ours.steps_per_second),
                    format_number(peer.jobs_per_second),
                    peer.system,
                    peer.mode
                ),
            )),
            (Err(missing), _) => Err(missing),
            (_, None) => Err("no peers in this run (--peers)".to_owned()),
        };
        check(
            format!("{id} (4 workers, one-step tasks) ÷ the best peer mode of the run"),
            Bound::AtLeast(2.0),
            "",
            measured,
        )
    };
    let mut checks = vec![against_peer("W7j"), against_peer("W7b")];
    checks.push(check(
        "W7m (mixed shapes) ÷ W7b (one-step tasks), both batched".into(),
        Bound::AtLeast(0.8),
        "",
        rate_ratio(dispatch, "W7m", "W7b"),
    ));
    checks.push(check(
        "W7r (the worker runtime) ÷ W7b (report_and_claim by hand), one-step tasks".into(),
        Bound::AtLeast(0.9),
        "",
        rate_ratio(dispatch, "W7r", "W7b"),
    ));
    for (id, what) in [("W8", "fan-in parents"), ("W9", "one wide task")] {
        checks.push(check(
            format!("{id} ({what}): 8 workers ÷ 1 worker"),
            Bound::AtLeast(3.0),
            "",
            rate_ratio(dispatch, id, &format!("{id}-1")),
        ));
        checks.push(check(
            format!("{id} ({what}), 8 workers ÷ W7j"),
            Bound::AtLeast(0.5),
            "",
            rate_ratio(dispatch, id, "W7j"),
        ));
    }
    checks.extend([
        check(
            "server time, claim of 1 step (one worker)".into(),
            Bound::AtMost(0.3),
            " ms",
            server_ms(dispatch, "W7j-1", "tasker_claim_ready_steps"),
        ),
        check(
            "server time, completion of 1 step (one worker)".into(),
            Bound::AtMost(0.3),
            " ms",
            server_ms(dispatch, "W7j-1", "tasker_complete_step"),
        ),
        check(
            "server time, batch of 10: report 10 and claim 10 (one worker)".into(),
            Bound::AtMost(1.5),
            " ms",
            server_ms(dispatch, "W7b-1", "tasker_report_and_claim"),
        ),
    ]);
    let hops = find(dispatch, "W10");
    checks.push(check(
        "W10 hop latency p50".into(),
        Bound::AtMost(5.0),
        " ms",
        hops.clone()
            .and_then(|w| w.p50_ms.ok_or_else(|| "no W10 p50".to_owned()))
            .map(|p50| (p50, format_ms(p50))),
    ));
    checks.push(check(
        "W10 hop latency p99".into(),
        Bound::AtMost(20.0),
        " ms",
        hops.and_then(|w| w.p99_ms.ok_or_else(|| "no W10 p99".to_owned()))
            .map(|p99| (p99, format_ms(p99))),
    ));
    let duplicates: u64 = dispatch.iter().map(|w| w.duplicates).sum();
    let mut duplicates = check(
        "duplicate completions, every dispatch workload".into(),
        Bound::AtMost(0.0),
        "",
        Ok((duplicates as f64, format_count(duplicates))),
    );
    duplicates.target = "0".into();
    checks.push(duplicates);
    checks
}

pub fn section(dispatch: &[DispatchResult], peers: &[PeerResult]) -> String {
    if dispatch.is_empty() {
        return String::new();
    }
    let cell = |value: Option<f64>, format: fn(f64) -> String| {
        value.map_or_else(|| "—".to_string(), format)
    };
    let rows = dispatch
        .iter()
        .map(|w| {
            let rate = (w.steps_per_second > 0.0).then_some(w.steps_per_second);
            vec![
                format!("{}: {}", w.id, w.description),
                format_count(w.steps),
                cell(rate, format_number),
                cell(w.server_ms_per_step, format_ms),
                cell(w.commits_per_step, format_number),
                cell(w.p50_ms, format_ms),
                cell(w.p99_ms, format_ms),
                format_count(w.duplicates),
            ]
        })
        .collect();
    let header = [
        "workload",
        "steps",
        "steps/s",
        "server ms per step",
        "commits per step",
        "p50 ms",
        "p99 ms",
        "duplicates",
    ];
    let mut section = format!(
        "## Dispatching work\n\n\
         Workers on an r2d2 pool, each workload on a database of its own holding only its \
         tasks; idle workers sleep in `wait_for_claimable_work`. Server time is the crate's \
         top-level functions in `pg_stat_user_functions`; commits count every statement of \
         the database, the idle waits' included.\n\n{}",
        markdown_table(&header, rows, 1)
    );
    if !peers.is_empty() {
        let rows = peers
            .iter()
            .map(|p| {
                vec![
                    format!("{} ({})", p.system, p.mode),
                    format_count(p.jobs),
                    format_number(p.jobs_per_second),
                    format_number(p.enqueue_jobs_per_second),
                ]
            })
            .collect();
        section.push_str(&format!(
            "\n\n### Peers, same server, same run\n\n4 workers, no-op handlers, one-step jobs \
             enqueued in batches of 100 before the workers start.\n\n{}",
            markdown_table(
                &["system (mode)", "jobs", "jobs/s", "enqueue jobs/s"],
                rows,
                1
            )
        ));
    }
    section
}

//! Dispatch in batches: `report_steps` (and `complete_steps`, `fail_steps`),
//! `report_and_claim`, the counts stripes that keep concurrent writers of one
//! task from queueing on its counts row, and `wait_for_claimable_work`.
//!
//! Autocommit connections, as workers use them: every call commits.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel::QueryResult;
use proptest::prelude::*;
use serde_json::json;
use tasker_diesel::schema::tasker_workflow_steps::dsl as steps;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    claim_ready_steps, complete_steps, fail_steps, release_expired_claims, report_and_claim,
    report_steps, wait_for_claimable_work, Claim, ClaimRequest, ClaimedStep, StepOutcome,
    StepReport, Wakeup,
};
use tasker_diesel::{Error, Refusal, StepState, TaskExecutionContext};

use crate::support;
use support::{
    add_edge, assert_maintained_readiness, backend_pid, snapshot, step_row, task_with_steps,
    wait_until_blocked,
};

const LEASE: Duration = Duration::from_secs(60);

fn claim_any(conn: &mut PgConnection, max_steps: u32) -> Vec<ClaimedStep> {
    claim_ready_steps(conn, &ClaimRequest::any_task(max_steps, LEASE)).expect("claim")
}

fn claims(claimed: &[ClaimedStep]) -> Vec<Claim> {
    claimed.iter().map(ClaimedStep::claim).collect()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .expect(sql)
        .n
}

#[test]
fn a_batch_writes_the_results_whose_claims_hold_and_refuses_each_other_by_name() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 5);
    let claimed = claim_any(&mut conn, 5);
    assert_eq!(claimed.len(), 5);
    let [held, failed, lost, expired, unknown_claim] =
        <[Claim; 5]>::try_from(claims(&claimed)).expect("five claims");
    // One claim is lost (its step was released and claimed again), one has
    // expired, and one names a step that does not exist.
    diesel::update(steps::tasker_workflow_steps.find(lost.workflow_step_id))
        .set(steps::claimed_until.eq(diesel::dsl::sql("claimed_until - interval '2 minutes'")))
        .execute(&mut conn)
        .expect("expire");
    assert_eq!(
        release_expired_claims(&mut conn, None).expect("release"),
        vec![lost.workflow_step_id]
    );
    diesel::update(steps::tasker_workflow_steps.find(expired.workflow_step_id))
        .set(steps::claimed_until.eq(diesel::dsl::sql("claimed_until - interval '2 minutes'")))
        .execute(&mut conn)
        .expect("expire");
    let missing = Claim {
        workflow_step_id: i64::MAX,
        claim_id: unknown_claim.claim_id,
    };

    let results = json!({"charged": 10});
    let error = json!({"message": "card declined"});
    let reports = [
        StepReport::complete(held, &results),
        StepReport::fail(failed, &error, Some(Duration::from_secs(30))),
        StepReport::complete(lost, &results),
        StepReport::complete(expired, &results),
        StepReport::complete(missing, &results),
    ];
    let before_lost = step_row(&mut conn, lost.workflow_step_id);
    let before_expired = step_row(&mut conn, expired.workflow_step_id);
    let reported = report_steps(&mut conn, &reports).expect("report_steps");

    let outcome: Vec<_> = reported
        .iter()
        .map(|r| (r.claim, r.result.clone()))
        .collect();
    assert_eq!(outcome.len(), 5, "{outcome:?}");
    assert!(outcome[0].1.is_ok() && outcome[1].1.is_ok(), "{outcome:?}");
    assert_eq!(outcome[0].0, held);
    assert_eq!(
        outcome[2].1,
        Err(Refusal::ClaimLost {
            workflow_step_id: lost.workflow_step_id,
            claim_id: lost.claim_id,
            state: StepState::Error,
        })
    );
    assert!(
        matches!(outcome[3].1, Err(Refusal::ClaimExpired { workflow_step_id, claim_id, .. })
            if workflow_step_id == expired.workflow_step_id && claim_id == expired.claim_id),
        "{outcome:?}"
    );
    assert_eq!(
        outcome[4].1,
        Err(Refusal::UnknownStep {
            workflow_step_id: i64::MAX
        })
    );

    let done = step_row(&mut conn, held.workflow_step_id);
    assert_eq!(done.results, Some(results));
    assert_eq!(done.current_state, StepState::Complete);
    let errored = step_row(&mut conn, failed.workflow_step_id);
    assert_eq!(errored.current_state, StepState::Error);
    assert_eq!(errored.backoff_request_seconds, Some(30));
    // The refused ones wrote nothing.
    assert_eq!(step_row(&mut conn, lost.workflow_step_id), before_lost);
    assert_eq!(
        step_row(&mut conn, expired.workflow_step_id),
        before_expired
    );
    assert_maintained_readiness(&mut conn, Some(&[fixture.task.task_id]));
}

#[test]
fn a_batch_with_a_bad_argument_is_refused_whole_and_writes_nothing() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    task_with_steps(&mut conn, 2);
    let claimed = claims(&claim_any(&mut conn, 2));
    let results = json!({});
    let before = snapshot(&mut conn);

    let twice = report_steps(
        &mut conn,
        &[
            StepReport::complete(claimed[0], &results),
            StepReport::complete(claimed[1], &results),
            StepReport::complete(claimed[0], &results),
        ],
    );
    assert!(
        matches!(twice, Err(Error::Refused(Refusal::InvalidArgument { ref message, .. }))
            if message.contains("at most once")),
        "{twice:?}"
    );
    support::assert_nothing_written(&before, &snapshot(&mut conn), "a step reported twice");
    assert!(report_steps(&mut conn, &[])
        .expect("empty batch")
        .is_empty());
}

#[test]
fn complete_steps_and_fail_steps_are_report_steps_with_one_outcome() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 4);
    let claimed = claims(&claim_any(&mut conn, 4));
    let results = json!({"ok": true});
    let error = json!({"message": "timeout"});

    let completed = complete_steps(&mut conn, &[(claimed[0], &results), (claimed[1], &results)])
        .expect("complete_steps");
    assert!(completed.iter().all(|r| r.result.is_ok()), "{completed:?}");
    let failed = fail_steps(
        &mut conn,
        &[
            (claimed[2], &error, None),
            (claimed[3], &error, Some(Duration::from_millis(1500))),
        ],
    )
    .expect("fail_steps");
    assert!(failed.iter().all(|r| r.result.is_ok()), "{failed:?}");

    let rows: Vec<_> = fixture
        .step_ids()
        .into_iter()
        .map(|id| step_row(&mut conn, id))
        .collect();
    assert_eq!(
        rows.iter().map(|s| s.current_state).collect::<Vec<_>>(),
        [
            StepState::Complete,
            StepState::Complete,
            StepState::Error,
            StepState::Error
        ]
    );
    // The delay is rounded up to whole seconds, never shorter than asked.
    assert_eq!(rows[2].backoff_request_seconds, None);
    assert_eq!(rows[3].backoff_request_seconds, Some(2));
    // The transition ids returned are the steps' current transitions.
    for (reported, row) in completed.iter().chain(&failed).zip(&rows) {
        let history = support::step_transitions(&mut conn, row.workflow_step_id);
        assert_eq!(
            reported.result,
            Ok(history.last().expect("a transition").id)
        );
    }
    assert_maintained_readiness(&mut conn, Some(&[fixture.task.task_id]));
}

#[test]
fn report_and_claim_completes_a_parent_and_claims_its_child_in_one_call() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 3);
    let [first, second, third] = <[i64; 3]>::try_from(fixture.step_ids()).expect("three steps");
    add_edge(&mut conn, first, second).expect("edge");
    add_edge(&mut conn, second, third).expect("edge");

    let claimed = claim_any(&mut conn, 10);
    assert_eq!(claimed.len(), 1, "only the root is ready");
    let results = json!({"step": 1});
    let request = ClaimRequest::any_task(10, LEASE);
    let (reported, next) = report_and_claim(
        &mut conn,
        &[StepReport::complete(claimed[0].claim(), &results)],
        &request,
    )
    .expect("report_and_claim");
    assert_eq!(reported.len(), 1);
    assert!(reported[0].result.is_ok(), "{reported:?}");
    assert_eq!(
        next.iter().map(|s| s.workflow_step_id).collect::<Vec<_>>(),
        [second],
        "the child the report made ready"
    );
    assert_eq!(next[0].attempt, 1);

    // The same result again is the first one; another is refused as lost,
    // while the claim goes on.
    let first_transition = reported[0].result.clone();
    let (again, _) = report_and_claim(
        &mut conn,
        &[StepReport::complete(claimed[0].claim(), &results)],
        &ClaimRequest::any_task(0, LEASE),
    )
    .expect("report_and_claim");
    assert_eq!(again[0].result, first_transition);
    let other = json!({"step": "another result"});
    let (reported, next) = report_and_claim(
        &mut conn,
        &[StepReport::complete(claimed[0].claim(), &other)],
        &request,
    )
    .expect("report_and_claim");
    assert!(
        matches!(reported[0].result, Err(Refusal::ClaimLost { .. })),
        "{reported:?}"
    );
    assert!(
        next.is_empty(),
        "the third step waits for the second: {next:?}"
    );

    // With max_steps 0 it only reports.
    let held = claims(&claim_again(&mut conn, second))[0];
    let (reported, next) = report_and_claim(
        &mut conn,
        &[StepReport::complete(held, &results)],
        &ClaimRequest::any_task(0, LEASE),
    )
    .expect("report only");
    assert!(
        reported[0].result.is_ok() && next.is_empty(),
        "{reported:?} {next:?}"
    );
    assert_eq!(step_row(&mut conn, third).current_state, StepState::Pending);
    assert!(
        step_row(&mut conn, third).runnable,
        "the third step became runnable"
    );
    assert_maintained_readiness(&mut conn, Some(&[fixture.task.task_id]));
}

/// The claim held on `step_id`, read back from its current transition.
fn claim_again(conn: &mut PgConnection, step_id: i64) -> Vec<ClaimedStep> {
    let history = support::step_transitions(conn, step_id);
    let current = history.last().expect("a transition");
    let row = step_row(conn, step_id);
    vec![ClaimedStep {
        workflow_step_id: step_id,
        task_id: row.task_id,
        named_step_id: row.named_step_id,
        name: String::new(),
        attempt: row.attempts.unwrap_or(0),
        claim_id: current.id,
        claimed_until: row.claimed_until.expect("leased"),
        inputs: None,
    }]
}

#[test]
fn a_backend_killed_during_a_batch_writes_nothing_of_it() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 3);
    let claimed = claims(&claim_any(&mut conn, 3));
    let before = snapshot(&mut conn);

    // Another transaction holds the last step, so the batch waits for it with
    // its first steps locked; then its backend is killed.
    let mut holder = db.connection();
    holder.begin_test_transaction().expect("begin");
    diesel::sql_query("SELECT 1 FROM tasker_workflow_steps WHERE workflow_step_id = $1 FOR UPDATE")
        .bind::<BigInt, _>(claimed[2].workflow_step_id)
        .execute(&mut holder)
        .expect("hold the step");

    let (pid_sender, pid) = mpsc::channel();
    let url = db.url().to_owned();
    let reporter = thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).expect("connect");
        pid_sender.send(backend_pid(&mut conn)).expect("send pid");
        let results = json!({});
        let reports: Vec<_> = claimed
            .iter()
            .map(|&c| StepReport::complete(c, &results))
            .collect();
        report_steps(&mut conn, &reports)
    });
    let pid = pid.recv().expect("pid");
    wait_until_blocked(&mut conn, pid);
    count(
        &mut conn,
        &format!("SELECT pg_terminate_backend({pid})::integer::bigint AS n"),
    );
    let outcome = reporter.join().expect("reporter thread");
    assert!(outcome.is_err(), "the killed batch must fail: {outcome:?}");
    drop(holder);

    support::assert_nothing_written(&before, &snapshot(&mut conn), "a killed batch");
    assert_maintained_readiness(&mut conn, Some(&[fixture.task.task_id]));
}

#[test]
fn a_writer_that_finds_the_counts_row_locked_writes_a_stripe_instead_of_waiting() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 3);
    let task_id = fixture.task.task_id;
    let claimed = claims(&claim_any(&mut conn, 3));

    let mut holder = db.connection();
    holder.begin_test_transaction().expect("begin");
    diesel::sql_query("SELECT 1 FROM tasker_task_step_counts WHERE task_id = $1 FOR UPDATE")
        .bind::<BigInt, _>(task_id)
        .execute(&mut holder)
        .expect("hold the counts row");

    // This would wait for the holder if counts had one row per task: give
    // up on it after 5 s rather than hang.
    diesel::sql_query("SET statement_timeout = '5s'")
        .execute(&mut conn)
        .expect("statement timeout");
    let results = json!({});
    let reported = complete_steps(&mut conn, &[(claimed[0], &results), (claimed[1], &results)])
        .expect("complete while the counts row is held");
    assert!(reported.iter().all(|r| r.result.is_ok()));
    let stripes = format!(
        "SELECT count(*) AS n FROM tasker_task_step_count_stripes WHERE task_id = {task_id}"
    );
    assert_eq!(count(&mut conn, &stripes), 1, "the change went to a stripe");
    let context = TaskExecutionContext::find(&mut conn, task_id)
        .expect("context")
        .expect("a context");
    assert_eq!((context.completed_steps, context.in_progress_steps), (2, 1));
    assert_maintained_readiness(&mut conn, Some(&[task_id]));

    drop(holder);
    complete_steps(&mut conn, &[(claimed[2], &results)]).expect("complete the last");
    assert_eq!(
        count(&mut conn, &stripes),
        1,
        "the free row took the last change"
    );
    assert_maintained_readiness(&mut conn, Some(&[task_id]));
    // A rebuild folds the stripes into the row and finds nothing to correct.
    assert_eq!(
        tasker_diesel::readiness::rebuild_readiness(&mut conn, None).expect("rebuild"),
        0
    );
    assert_eq!(count(&mut conn, &stripes), 0);
    assert_maintained_readiness(&mut conn, Some(&[task_id]));
}

#[test]
fn eight_writers_on_one_task_keep_its_counts_exact() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 400);
    let task_id = fixture.task.task_id;
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let url = db.url().to_owned();
            thread::spawn(move || -> Result<usize, String> {
                let mut conn = PgConnection::establish(&url).map_err(|e| e.to_string())?;
                let results = json!({"worker": worker});
                let error = json!({"worker": worker});
                let request = ClaimRequest::for_tasks(std::slice::from_ref(&task_id), 7, LEASE);
                let mut reports: Vec<Claim> = Vec::new();
                let mut done = 0;
                loop {
                    // Every third result a failure (retried later), the rest completions.
                    let batch: Vec<StepReport<'_>> = reports
                        .iter()
                        .enumerate()
                        .map(|(i, &claim)| {
                            if (i + worker) % 3 == 0 {
                                StepReport::fail(claim, &error, None)
                            } else {
                                StepReport::complete(claim, &results)
                            }
                        })
                        .collect();
                    let (reported, claimed) =
                        report_and_claim(&mut conn, &batch, &request).map_err(|e| e.to_string())?;
                    if let Some(refused) = reported.iter().find(|r| r.result.is_err()) {
                        return Err(format!("refused: {refused:?}"));
                    }
                    done += reported.len();
                    if claimed.is_empty() {
                        return Ok(done);
                    }
                    reports = claimed.iter().map(ClaimedStep::claim).collect();
                }
            })
        })
        .collect();
    let reported: usize = workers
        .into_iter()
        .map(|w| w.join().expect("worker thread").expect("worker"))
        .sum();
    assert!(
        reported >= 400,
        "every step reported at least once: {reported}"
    );
    assert_maintained_readiness(&mut conn, Some(&[task_id]));
}

/// Runs `wait_for_claimable_work` on a connection of its own in a thread.
fn waiter(
    db: &TestDatabase,
    timeout: Duration,
) -> (thread::JoinHandle<(Wakeup, Duration)>, mpsc::Receiver<()>) {
    let url = db.url().to_owned();
    let (listening, listened) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).expect("connect");
        // A first wait registers the LISTEN (nothing is claimable yet).
        let first = wait_for_claimable_work(&mut conn, Duration::from_millis(1)).expect("listen");
        assert_eq!(
            first,
            Wakeup::TimedOut,
            "nothing is claimable before the test writes"
        );
        listening.send(()).expect("send");
        let started = Instant::now();
        let wakeup = wait_for_claimable_work(&mut conn, timeout).expect("wait");
        (wakeup, started.elapsed())
    });
    (handle, listened)
}

#[test]
fn an_idle_worker_wakes_when_creation_completion_or_release_makes_steps_runnable() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let long = Duration::from_secs(20);

    // Creation.
    let (handle, listened) = waiter(&db, long);
    listened.recv().expect("listening");
    let fixture = task_with_steps(&mut conn, 2);
    let [parent, child] = <[i64; 2]>::try_from(fixture.step_ids()).expect("two steps");
    // The edge makes the child wait; its insert is a second commit, so claim
    // the parent first to keep the next wait idle.
    add_edge(&mut conn, parent, child).expect("edge");
    let (wakeup, waited) = handle.join().expect("waiter");
    assert_eq!(wakeup, Wakeup::Notified, "woken by the creation");
    assert!(waited < long / 2, "{waited:?}");
    let claimed = claim_any(&mut conn, 10);
    assert_eq!(claimed.len(), 1);

    // Completion: the parent's completion makes the child runnable.
    let (handle, listened) = waiter(&db, long);
    listened.recv().expect("listening");
    let results = json!({});
    complete_steps(&mut conn, &[(claimed[0].claim(), &results)]).expect("complete");
    let (wakeup, waited) = handle.join().expect("waiter");
    assert_eq!(wakeup, Wakeup::Notified, "woken by the completion");
    assert!(waited < long / 2, "{waited:?}");

    // Release: an expired claim released with retries left is runnable again
    // (the failure backoff of its first attempt, 2 s, is waited out or notified).
    let claimed = claim_any(&mut conn, 10);
    assert_eq!(claimed.len(), 1);
    let (handle, listened) = waiter(&db, long);
    listened.recv().expect("listening");
    diesel::update(steps::tasker_workflow_steps.find(claimed[0].workflow_step_id))
        .set(steps::claimed_until.eq(diesel::dsl::sql("claimed_until - interval '2 minutes'")))
        .execute(&mut conn)
        .expect("expire");
    release_expired_claims(&mut conn, None).expect("release");
    let (wakeup, waited) = handle.join().expect("waiter");
    assert_eq!(wakeup, Wakeup::Notified, "woken by the release");
    assert!(waited < long / 2, "{waited:?}");
}

#[test]
fn an_idle_worker_wakes_when_a_backoff_ends_and_recovers_a_missed_notification_by_its_timeout() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 1);
    let claimed = claim_any(&mut conn, 1);
    let error = json!({"message": "try again"});
    fail_steps(&mut conn, &[(claimed[0].claim(), &error, None)]).expect("fail");
    // The first failure's backoff is 2 s; the waiter sleeps until it ends,
    // whatever its timeout.
    let mut waiting = db.connection();
    let started = Instant::now();
    let wakeup = wait_for_claimable_work(&mut waiting, Duration::from_secs(30)).expect("wait");
    let waited = started.elapsed();
    assert_eq!(wakeup, Wakeup::BackoffEnded);
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert_eq!(
        wait_for_claimable_work(&mut waiting, Duration::from_secs(30)).expect("wait"),
        Wakeup::Ready
    );
    let claimed = claim_any(&mut conn, 1);
    assert_eq!(claimed.len(), 1, "the step is claimable again");
    assert_eq!(
        claimed[0].workflow_step_id,
        fixture.steps[0].workflow_step_id
    );
    complete_steps(&mut conn, &[(claimed[0].claim(), &error)]).expect("complete");

    // A write that sends no notification (triggers off for its session) is
    // found by the next wait once the timeout ends this one.
    let (handle, listened) = waiter(&db, Duration::from_millis(300));
    listened.recv().expect("listening");
    diesel::sql_query("SET session_replication_role = replica")
        .execute(&mut conn)
        .expect("triggers off");
    task_with_steps(&mut conn, 1);
    diesel::sql_query("SET session_replication_role = DEFAULT")
        .execute(&mut conn)
        .expect("triggers on");
    let (wakeup, waited) = handle.join().expect("waiter");
    assert_eq!(wakeup, Wakeup::TimedOut, "no notification was sent");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert_eq!(
        wait_for_claimable_work(&mut waiting, Duration::from_secs(30)).expect("wait"),
        Wakeup::Ready,
        "the next wait finds the work"
    );
}

#[test]
fn waiting_inside_a_transaction_is_refused() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let refused = conn.transaction(|conn| {
        Ok::<_, Error>(wait_for_claimable_work(conn, Duration::from_millis(10)))
    });
    assert!(
        matches!(
            refused,
            Ok(Err(Error::Refused(Refusal::InvalidArgument { .. })))
        ),
        "{refused:?}"
    );
}

/// One round of a batched worker: which held claims it reports (and how),
/// which already-reported claims it reports again, and how many it claims.
#[derive(Debug, Clone)]
struct Round {
    /// Per held claim, by position modulo the held count: report it
    /// (`Some(true)` complete, `Some(false)` fail) or keep holding it.
    reports: Vec<Option<bool>>,
    /// Positions (modulo) of claims reported before, reported again.
    stale: Vec<usize>,
    claim: u32,
}

fn round() -> impl Strategy<Value = Round> {
    (
        proptest::collection::vec(proptest::option::of(any::<bool>()), 0..6),
        proptest::collection::vec(0usize..50, 0..3),
        0u32..5,
    )
        .prop_map(|(reports, stale, claim)| Round {
            reports,
            stale,
            claim,
        })
}

/// A DAG of `steps` steps (edges from lower to higher positions) and rounds.
fn batched_case() -> impl Strategy<Value = (usize, Vec<(usize, usize)>, Vec<Round>)> {
    (2usize..9).prop_flat_map(|steps| {
        (
            Just(steps),
            proptest::collection::vec((0..steps, 0..steps), 0..12),
            proptest::collection::vec(round(), 1..12),
        )
    })
}

/// Over random DAGs and rounds of `report_and_claim`: a result under a held
/// claim is written; one under a claim already reported is taken as the same
/// result when it repeats it (the first report's transition, nothing
/// written) and refused as lost when it differs; refused ones write nothing,
/// and after every round the maintained readiness equals its recomputation
/// from the history.
#[test]
fn batched_reports_and_claims_keep_every_rule_over_random_dags() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let db = TestDatabase::new();
    // The runner takes a `Fn`: the connection lives in a RefCell.
    let conn = std::cell::RefCell::new(db.connection());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&batched_case(), |(steps, edges, rounds)| {
            let conn = &mut *conn.borrow_mut();
            let fixture = task_with_steps(conn, steps);
            let ids = fixture.step_ids();
            for (from, to) in edges {
                if from < to {
                    let _ = add_edge(conn, ids[from], ids[to]);
                }
            }
            let task_ids = [fixture.task.task_id];
            let results = json!({"ok": true});
            let error = json!({"message": "failed"});
            let mut held: Vec<Claim> = Vec::new();
            let stale_results = json!({"ok": "another result"});
            // Each claim reported, with what it reported and the transition written.
            let mut reported_before: Vec<(Claim, bool, i64)> = Vec::new();
            for (number, round) in rounds.iter().enumerate() {
                let mut reports = Vec::new();
                // None: written now; Some(None): refused as lost; Some(Some(id)): a
                // repeat, answered with transition id.
                let mut expected: Vec<Option<Option<i64>>> = Vec::new();
                let mut kept = Vec::new();
                for (position, claim) in held.iter().enumerate() {
                    match round.reports.get(position).copied().flatten() {
                        Some(true) => {
                            reports.push(StepReport::complete(*claim, &results));
                            expected.push(None);
                        }
                        Some(false) => {
                            reports.push(StepReport::fail(*claim, &error, None));
                            expected.push(None);
                        }
                        None => kept.push(*claim),
                    }
                }
                let fresh = reports.len();
                for &position in &round.stale {
                    if let Some(&(stale, completed, transition_id)) =
                        reported_before.get(position % reported_before.len().max(1))
                    {
                        // A step at most once per call, and not one held now.
                        let step = stale.workflow_step_id;
                        if !reports.iter().any(|r| r.claim.workflow_step_id == step)
                            && !kept.iter().any(|c| c.workflow_step_id == step)
                        {
                            if position % 2 == 0 {
                                // The same result again (a retry after a lost answer).
                                reports.push(if completed {
                                    StepReport::complete(stale, &results)
                                } else {
                                    StepReport::fail(stale, &error, None)
                                });
                                expected.push(Some(Some(transition_id)));
                            } else {
                                reports.push(StepReport::complete(stale, &stale_results));
                                expected.push(Some(None));
                            }
                        }
                    }
                }
                let request = ClaimRequest::for_tasks(&task_ids, round.claim, LEASE);
                let (outcomes, claimed) = report_and_claim(conn, &reports, &request)
                    .map_err(|e| TestCaseError::fail(format!("round {number}: {e}")))?;
                prop_assert_eq!(outcomes.len(), reports.len());
                for ((outcome, report), expected) in outcomes.iter().zip(&reports).zip(&expected) {
                    prop_assert_eq!(outcome.claim, report.claim);
                    match expected {
                        None => {
                            prop_assert!(outcome.result.is_ok(), "round {}: {:?}", number, outcome)
                        }
                        Some(Some(transition_id)) => prop_assert_eq!(
                            &outcome.result,
                            &Ok(*transition_id),
                            "round {}: a repeated result is the first one",
                            number
                        ),
                        Some(None) => prop_assert!(
                            matches!(outcome.result, Err(Refusal::ClaimLost { .. })),
                            "round {}: another result under a claim reported before must be lost: {:?}",
                            number,
                            outcome
                        ),
                    }
                }
                for (report, outcome) in reports.iter().zip(&outcomes).take(fresh) {
                    let completed = matches!(report.outcome, StepOutcome::Complete { .. });
                    if let Ok(transition_id) = outcome.result {
                        reported_before.push((report.claim, completed, transition_id));
                    }
                }
                prop_assert!(claimed.len() <= round.claim as usize);
                prop_assert!(claimed.iter().all(|s| s.task_id == fixture.task.task_id));
                held = kept;
                for step in &claimed {
                    prop_assert!(
                        !held
                            .iter()
                            .any(|c| c.workflow_step_id == step.workflow_step_id),
                        "round {}: a held step claimed again",
                        number
                    );
                    held.push(step.claim());
                }
                support::check_maintained_readiness(conn, Some(&task_ids))
                    .map_err(|message| TestCaseError::fail(format!("round {number}: {message}")))?;
            }
            Ok(())
        })
        .unwrap();
}

/// Runs `sql` on a connection of its own in a thread; returns its pid and
/// the thread.
fn run_elsewhere(db: &TestDatabase, sql: String) -> (i32, thread::JoinHandle<QueryResult<usize>>) {
    let url = db.url().to_owned();
    let (sender, pid) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).expect("connect");
        sender.send(backend_pid(&mut conn)).expect("send pid");
        diesel::sql_query(sql).execute(&mut conn)
    });
    (pid.recv().expect("pid"), handle)
}

/// Adds a step (of a new step template) to the task, as another writer would.
fn insert_step_sql(task_id: i64, name: &str) -> String {
    format!(
        "WITH n AS (INSERT INTO tasker_named_steps (dependent_system_id, name)
                    SELECT dependent_system_id, '{name}' FROM tasker_dependent_systems LIMIT 1
                    RETURNING named_step_id)
         INSERT INTO tasker_workflow_steps (task_id, named_step_id)
         SELECT {task_id}, named_step_id FROM n"
    )
}

#[test]
fn deleting_a_task_while_a_writer_holds_its_step_and_another_its_counts_does_not_deadlock() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 2);
    let task_id = fixture.task.task_id;
    let claimed = claims(&claim_any(&mut conn, 1));

    // Another transaction holds the counts row, so the writer below goes to its stripe.
    let mut holder = db.connection();
    holder.begin_test_transaction().expect("begin");
    diesel::sql_query("SELECT 1 FROM tasker_task_step_counts WHERE task_id = $1 FOR UPDATE")
        .bind::<BigInt, _>(task_id)
        .execute(&mut holder)
        .expect("hold the counts row");
    // The writer holds the step before the delete starts...
    let mut writer = db.connection();
    diesel::sql_query("SET statement_timeout = '5s'")
        .execute(&mut writer)
        .expect("timeout");
    writer
        .transaction(|writer| {
            diesel::sql_query(
                "SELECT 1 FROM tasker_workflow_steps WHERE workflow_step_id = $1 FOR NO KEY UPDATE",
            )
            .bind::<BigInt, _>(claimed[0].workflow_step_id)
            .execute(writer)?;
            // ...which locks the task row and waits for the step.
            let (deleter, deleting) = run_elsewhere(
                &db,
                format!("DELETE FROM tasker_tasks WHERE task_id = {task_id}"),
            );
            wait_until_blocked(&mut conn, deleter);
            // Reporting now writes a stripe without waiting for the deleter.
            let results = json!({});
            let reported = complete_steps(writer, &[(claimed[0], &results)])
                .expect("the writer never waits for the deleter");
            assert!(reported[0].result.is_ok(), "{reported:?}");
            Ok::<_, Error>(deleting)
        })
        .map(|deleting| {
            // The delete also takes the counts row, once its holder is done.
            drop(holder);
            assert_eq!(
                deleting
                    .join()
                    .expect("deleter")
                    .expect("the delete succeeds"),
                1
            );
        })
        .expect("writer");
    let stripes = format!(
        "SELECT count(*) AS n FROM tasker_task_step_count_stripes WHERE task_id = {task_id}"
    );
    assert_eq!(
        count(&mut conn, &stripes),
        0,
        "the stripes went with the task"
    );
}

#[test]
fn a_rebuild_racing_with_steps_added_by_other_writers_counts_each_once() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 2);
    let task_id = fixture.task.task_id;

    // Y adds steps while the counts row is held, so its changes go to its
    // stripe: one committed, then one in a transaction it keeps open (which
    // holds the stripe row).
    let mut holder = db.connection();
    holder.begin_test_transaction().expect("begin");
    diesel::sql_query("SELECT 1 FROM tasker_task_step_counts WHERE task_id = $1 FOR UPDATE")
        .bind::<BigInt, _>(task_id)
        .execute(&mut holder)
        .expect("hold the counts row");
    let mut adder = db.connection();
    diesel::sql_query(insert_step_sql(task_id, "added_zero"))
        .execute(&mut adder)
        .expect("add a step");
    adder.begin_test_transaction().expect("begin");
    diesel::sql_query(insert_step_sql(task_id, "added_first"))
        .execute(&mut adder)
        .expect("add a step");
    let stripes = format!(
        "SELECT count(*) AS n FROM tasker_task_step_count_stripes WHERE task_id = {task_id}"
    );
    assert_eq!(count(&mut conn, &stripes), 1, "Y's committed stripe");
    drop(holder);

    // A rebuild of the task, then another writer adding a step while the
    // rebuild waits; then Y commits.
    let (rebuilder, rebuilding) = run_elsewhere(
        &db,
        format!("SELECT tasker_rebuild_readiness(ARRAY[{task_id}::bigint])"),
    );
    wait_until_blocked(&mut conn, rebuilder);
    let (_, adding) = run_elsewhere(&db, insert_step_sql(task_id, "added_second"));
    // The second adder either waits for the rebuild or is done at once.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) && !adding.is_finished() {
        thread::sleep(Duration::from_millis(5));
    }
    // Y commits (its transaction is the adder connection's; end it).
    diesel::sql_query("COMMIT")
        .execute(&mut adder)
        .expect("commit");
    rebuilding.join().expect("rebuild thread").expect("rebuild");
    adding.join().expect("adder thread").expect("second step");
    assert_maintained_readiness(&mut conn, Some(&[task_id]));
}

#[test]
fn a_permanent_failure_is_not_retried_and_blocks_its_task() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 2);
    let claimed = claim_any(&mut conn, 2);
    let error = json!({"message": "card declined"});
    let results = json!({});
    let reported = report_steps(
        &mut conn,
        &[
            StepReport::fail_permanently(claimed[0].claim(), &error),
            StepReport::complete(claimed[1].claim(), &results),
        ],
    )
    .expect("report");
    assert!(reported.iter().all(|r| r.result.is_ok()), "{reported:?}");
    let failed = step_row(&mut conn, claimed[0].workflow_step_id);
    assert!(!failed.retryable && !failed.retry_eligible && !failed.runnable);
    // A retryable failure of the same kind stays retryable (the flag is per report).
    assert!(step_row(&mut conn, claimed[1].workflow_step_id).retryable);
    assert!(
        claim_any(&mut conn, 5).is_empty(),
        "a permanent failure is never claimed again"
    );
    let context = TaskExecutionContext::find(&mut conn, fixture.task.task_id)
        .expect("context")
        .expect("a task");
    assert_eq!(
        format!("{:?}", context.execution_status),
        "BlockedByFailures"
    );
    assert_maintained_readiness(&mut conn, None);
}

#[test]
fn a_release_gives_the_step_back_at_once_without_counting_the_attempt() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    task_with_steps(&mut conn, 3);
    let claimed = claim_any(&mut conn, 3);
    let reason = json!({"message": "shutting down"});
    let results = json!({"done": true});
    let reported = report_steps(
        &mut conn,
        &[
            StepReport::release(claimed[0].claim(), &reason),
            StepReport::complete(claimed[1].claim(), &results),
            StepReport::release(claimed[2].claim(), &reason),
        ],
    )
    .expect("report");
    assert!(reported.iter().all(|r| r.result.is_ok()), "{reported:?}");
    for released in [&claimed[0], &claimed[2]] {
        let history: Vec<(StepState, Option<StepState>)> =
            support::step_transitions(&mut conn, released.workflow_step_id)
                .iter()
                .map(|t| (t.to_state, t.from_state))
                .collect();
        assert_eq!(
            history[history.len() - 2..],
            [
                (StepState::Error, Some(StepState::InProgress)),
                (StepState::Pending, Some(StepState::Error)),
            ]
        );
        let row = step_row(&mut conn, released.workflow_step_id);
        assert_eq!(row.attempts.unwrap_or(0), 0, "the attempt is given back");
        assert!(row.runnable && row.next_retry_at.is_none(), "no backoff");
    }
    assert_maintained_readiness(&mut conn, None);
    // Claimable at once, as a first attempt again.
    let again = claim_any(&mut conn, 3);
    assert_eq!(
        again
            .iter()
            .map(|s| (s.workflow_step_id, s.attempt))
            .collect::<Vec<_>>(),
        [
            (claimed[0].workflow_step_id, 1),
            (claimed[2].workflow_step_id, 1)
        ]
    );
    // The release of a claim given back already is the same release.
    let twice = report_steps(
        &mut conn,
        &[StepReport::release(claimed[0].claim(), &reason)],
    )
    .expect("report");
    assert_eq!(twice[0].result, reported[0].result);
}

#[test]
fn a_result_reported_twice_under_one_claim_is_the_first_result() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    task_with_steps(&mut conn, 2);
    let claimed = claim_any(&mut conn, 2);
    let results = json!({"n": 1});
    let error = json!({"message": "failed"});
    let first = tasker_diesel::workflow::complete_step(&mut conn, claimed[0].claim(), &results)
        .expect("complete");
    let before = snapshot(&mut conn);
    let again = tasker_diesel::workflow::complete_step(&mut conn, claimed[0].claim(), &results)
        .expect("the same result again");
    assert_eq!(again.id, first.id);
    support::assert_nothing_written(&before, &snapshot(&mut conn), "a repeated completion");
    // Another result under that claim is lost, as is a failure after it.
    let other = json!({"n": 2});
    assert!(matches!(
        support::refusal(tasker_diesel::workflow::complete_step(
            &mut conn,
            claimed[0].claim(),
            &other
        )),
        Refusal::ClaimLost { .. }
    ));
    assert!(matches!(
        support::refusal(tasker_diesel::workflow::fail_step(
            &mut conn,
            claimed[0].claim(),
            &error,
            None
        )),
        Refusal::ClaimLost { .. }
    ));
    // A failure repeated is the first failure, in a batch too.
    let failed = fail_steps(&mut conn, &[(claimed[1].claim(), &error, None)]).expect("fail");
    let repeated = fail_steps(&mut conn, &[(claimed[1].claim(), &error, None)]).expect("fail");
    assert_eq!(failed, repeated);
    assert!(failed[0].result.is_ok());
}

#[test]
fn a_claim_takes_only_the_step_kinds_it_names() {
    use tasker_diesel::workflow::StepKind;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 3);
    let ids = fixture.step_ids();
    let only_second = [StepKind::named("step_1")];
    let claimed = claim_ready_steps(
        &mut conn,
        &ClaimRequest::any_task(5, LEASE).only(&only_second),
    )
    .expect("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|s| s.workflow_step_id)
            .collect::<Vec<_>>(),
        [ids[1]]
    );
    // Scoped to another task template: none; to this one: the step.
    let elsewhere = [StepKind::named("step_0").in_task("other", "process_order")];
    let request = ClaimRequest::any_task(5, LEASE).only(&elsewhere);
    assert!(claim_ready_steps(&mut conn, &request)
        .expect("claim")
        .is_empty());
    // The fixture's template: default/process_order 1.0.0.
    let here = [StepKind::named("step_0")
        .in_task("default", "process_order")
        .version("1.0.0")];
    let claimed =
        claim_ready_steps(&mut conn, &ClaimRequest::any_task(5, LEASE).only(&here)).expect("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|s| s.workflow_step_id)
            .collect::<Vec<_>>(),
        [ids[0]]
    );
    // No kinds: nothing; the step of no named kind stays.
    let none: [StepKind; 0] = [];
    let nothing = ClaimRequest::any_task(5, LEASE).only(&none);
    assert!(claim_ready_steps(&mut conn, &nothing)
        .expect("claim")
        .is_empty());
    assert_eq!(claim_any(&mut conn, 5).len(), 1);
    // A filter of another shape is refused, naming its shape.
    let refused = diesel::sql_query(
        "SELECT * FROM tasker_claim_ready_steps(NULL, 1, 10, '{}', '[{\"name\": \"step_0\"}]')",
    )
    .execute(&mut conn)
    .map_err(Error::from);
    assert!(
        matches!(&refused, Err(Error::Refused(Refusal::InvalidArgument { message, .. })) if message.contains("step filter")),
        "{refused:?}"
    );
}

#[test]
fn finalize_settled_tasks_finalizes_the_settled_tasks_in_progress_of_whoever_ran_them() {
    use tasker_diesel::workflow::finalize_settled_tasks;
    use tasker_diesel::TaskState;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let first = task_with_steps(&mut conn, 1).task.task_id;
    let second = task_with_steps(&mut conn, 1).task.task_id;
    let unfinished = task_with_steps(&mut conn, 2).task.task_id;
    let claimed = claim_any(&mut conn, 4);
    let results = json!({});
    let done: Vec<(Claim, &serde_json::Value)> = claimed
        .iter()
        .filter(|s| s.task_id != unfinished || s.workflow_step_id == claimed[2].workflow_step_id)
        .map(|s| (s.claim(), &results))
        .collect();
    complete_steps(&mut conn, &done).expect("complete");
    // Among the given tasks only.
    let finalized =
        finalize_settled_tasks(&mut conn, 10, Some(&[second, unfinished]), None).expect("finalize");
    assert_eq!(
        finalized
            .iter()
            .map(|f| (f.task_id, f.task_state))
            .collect::<Vec<_>>(),
        [(second, TaskState::Complete)]
    );
    // All of them, at most max_tasks per call.
    let finalized = finalize_settled_tasks(&mut conn, 10, None, None).expect("finalize");
    assert_eq!(
        finalized.iter().map(|f| f.task_id).collect::<Vec<_>>(),
        [first],
        "the task with a step in progress is not settled"
    );
    assert!(finalize_settled_tasks(&mut conn, 10, None, None)
        .expect("finalize")
        .is_empty());
    assert!(matches!(
        support::refusal(finalize_settled_tasks(&mut conn, 0, None, None)),
        Refusal::InvalidArgument { .. }
    ));
}

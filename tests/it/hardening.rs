//! Bad input, faults and scale: every public call refuses what it cannot
//! take with a typed error that names the argument, never panics, never
//! wraps a value around, and never commits work the caller does not get back.

use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};
use tasker_diesel::readiness::{rebuild_readiness, ReadinessDrift};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    cancel_task, claim_ready_steps, complete_step, complete_steps, create_task, create_tasks,
    extend_step_claim, fail_step, fail_steps, finalize_settled_tasks, finalize_task,
    release_expired_claims, release_steps, report_and_claim, report_steps, resolve_step_manually,
    transition_task, transition_workflow_step, wait_for_claimable_work, Claim, ClaimRequest,
    ClaimedStep, RequestError, RequestField, StepKind, StepReport, StepTemplate, TaskRequest,
    TaskTemplate, TemplateError, TemplateField, TransitionOptions,
};
use tasker_diesel::{
    Error, ErrorKind, Refusal, StepReadinessStatus, StepState, TaskExecutionContext, TaskState,
    MAX_DURATION, MAX_IDS_PER_CALL,
};

use crate::support;
use support::{assert_maintained_readiness, assert_nothing_written, snapshot, step_row};

const LEASE: Duration = Duration::from_secs(60);

fn template() -> TaskTemplate {
    TaskTemplate::new("hardening", "flow", "1.0.0")
        .step(StepTemplate::new("a"))
        .step(StepTemplate::new("b"))
        .step(StepTemplate::new("c").depends_on(["a", "b"]))
}

fn new_task(conn: &mut PgConnection, tag: &str) -> i64 {
    create_task(
        conn,
        &TaskRequest::new(&template()).context(json!({ "tag": tag })),
    )
    .expect("create")
    .task
    .task_id
}

fn claim(conn: &mut PgConnection, tasks: &[i64], max_steps: u32) -> Vec<ClaimedStep> {
    claim_ready_steps(conn, &ClaimRequest::for_tasks(tasks, max_steps, LEASE)).expect("claim")
}

/// The argument an `InvalidArgument` refusal names.
fn refused_argument<T: Debug>(result: tasker_diesel::Result<T>) -> String {
    match result {
        Err(Error::Refused(Refusal::InvalidArgument { argument, message })) => {
            assert!(!message.is_empty());
            argument
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn template_error<T: Debug>(result: tasker_diesel::Result<T>) -> TemplateError {
    match result {
        Err(Error::InvalidTemplate(error)) => error,
        other => panic!("expected InvalidTemplate, got {other:?}"),
    }
}

// 1. Durations and counts ----------------------------------------------------------------

#[test]
fn durations_and_counts_beyond_the_schema_are_refused_naming_the_argument() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = new_task(&mut conn, "durations");
    let tasks = [task];
    let before = snapshot(&mut conn);
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    for lease in [Duration::MAX, century, Duration::ZERO] {
        let request = ClaimRequest::for_tasks(&tasks, 1, lease);
        assert_eq!(
            refused_argument(claim_ready_steps(&mut conn, &request)),
            "lease"
        );
        assert_eq!(
            refused_argument(report_and_claim(&mut conn, &[], &request)),
            "lease"
        );
    }
    let too_many = ClaimRequest::for_tasks(&tasks, u32::MAX, LEASE);
    assert_eq!(
        refused_argument(claim_ready_steps(&mut conn, &too_many)),
        "max_steps"
    );
    assert_eq!(
        refused_argument(release_expired_claims(&mut conn, Some(u32::MAX))),
        "max_steps"
    );
    assert_eq!(
        refused_argument(finalize_settled_tasks(&mut conn, u32::MAX, None, None)),
        "max_tasks"
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "refused claims");

    // The longest lease the schema takes is taken, not shortened.
    let longest = ClaimRequest::for_tasks(&tasks, 1, MAX_DURATION);
    let claimed = claim_ready_steps(&mut conn, &longest).unwrap();
    let started = support::step_transitions(&mut conn, claimed[0].workflow_step_id)
        .last()
        .unwrap()
        .created_at;
    assert_eq!(
        claimed[0].claimed_until,
        started + chrono::Duration::seconds(i64::from(i32::MAX))
    );

    let step = claimed[0].claim();
    let before = snapshot(&mut conn);
    assert_eq!(
        refused_argument(extend_step_claim(&mut conn, step, Duration::MAX)),
        "lease"
    );
    let error = json!({"http": 503});
    assert_eq!(
        refused_argument(fail_step(&mut conn, step, &error, Some(Duration::MAX))),
        "retry_after"
    );
    let reports = [
        StepReport::complete(step, &error),
        StepReport::fail(step, &error, Some(century)),
    ];
    assert_eq!(
        refused_argument(report_steps(&mut conn, &reports[1..])),
        "reports[0].retry_after"
    );
    assert_eq!(
        refused_argument(report_and_claim(
            &mut conn,
            &reports[1..],
            &ClaimRequest::any_task(0, LEASE)
        )),
        "reports[0].retry_after"
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "refused reports");

    // The longest delay is stored as asked.
    fail_step(&mut conn, step, &error, Some(MAX_DURATION)).unwrap();
    assert_eq!(
        step_row(&mut conn, step.workflow_step_id).backoff_request_seconds,
        Some(i32::MAX)
    );
    // A wait for ever returns when work is there ...
    assert_eq!(
        wait_for_claimable_work(&mut conn, Duration::MAX).unwrap(),
        tasker_diesel::workflow::Wakeup::Ready
    );
}

#[test]
fn a_wait_for_ever_waits_until_work_comes() {
    let db = TestDatabase::new();
    let url = db.url().to_owned();
    let waiter = thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        wait_for_claimable_work(&mut conn, Duration::MAX)
    });
    thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "nothing is claimable: it waits");
    new_task(&mut db.connection(), "wakes the waiter");
    let started = Instant::now();
    while !waiter.is_finished() {
        assert!(started.elapsed() < Duration::from_secs(10), "never woke");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        waiter.join().unwrap().unwrap(),
        tasker_diesel::workflow::Wakeup::Notified
    );
}

// 2. Claims hand over everything they commit ---------------------------------------------

/// Inputs that are valid jsonb but that serde_json refuses, written by
/// another writer.
fn poison_inputs(conn: &mut PgConnection, step_id: i64) {
    diesel::sql_query(
        "UPDATE tasker_workflow_steps SET inputs = '{\"amount\": 1e400}'::jsonb \
         WHERE workflow_step_id = $1",
    )
    .bind::<BigInt, _>(step_id)
    .execute(conn)
    .unwrap();
}

/// Every row the write path writes, as text (rows whose JSON serde_json
/// refuses included), hashed.
fn digest(conn: &mut PgConnection) -> String {
    let tables = [
        ("tasker_tasks", "task_id"),
        ("tasker_workflow_steps", "workflow_step_id"),
        ("tasker_workflow_step_transitions", "id"),
        ("tasker_task_transitions", "id"),
        ("tasker_task_step_counts", "task_id"),
        ("tasker_workflow_step_edges", "id"),
    ];
    let parts: Vec<String> = tables
        .iter()
        .map(|(table, key)| {
            format!(
                "(SELECT count(*) || ':' || md5(coalesce(string_agg(r::text, ',' ORDER BY r.{key}), '')) FROM {table} AS r)"
            )
        })
        .collect();
    diesel::dsl::sql::<diesel::sql_types::Text>(&format!(
        "SELECT concat_ws(' ', {})",
        parts.join(", ")
    ))
    .get_result(conn)
    .unwrap()
}

/// `(in_process, retryable)` of a step, read without its inputs.
fn step_flags(conn: &mut PgConnection, step_id: i64) -> (bool, bool) {
    use tasker_diesel::schema::tasker_workflow_steps::dsl as steps;
    steps::tasker_workflow_steps
        .find(step_id)
        .select((steps::in_process, steps::retryable))
        .get_result(conn)
        .unwrap()
}

fn step_ids_of(conn: &mut PgConnection, task_id: i64) -> Vec<i64> {
    use tasker_diesel::schema::tasker_workflow_steps::dsl as steps;
    steps::tasker_workflow_steps
        .filter(steps::task_id.eq(task_id))
        .order(steps::workflow_step_id)
        .select(steps::workflow_step_id)
        .load(conn)
        .unwrap()
}

#[test]
fn a_claim_never_commits_steps_it_cannot_hand_over() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    for use_report_and_claim in [false, true] {
        let task = new_task(&mut conn, &format!("poison {use_report_and_claim}"));
        let [a, b, _c] = step_ids_of(&mut conn, task)[..] else {
            unreachable!()
        };
        poison_inputs(&mut conn, a);
        let tasks = [task];
        let request = ClaimRequest::for_tasks(&tasks, 10, LEASE);
        let claimed = if use_report_and_claim {
            report_and_claim(&mut conn, &[], &request).unwrap().1
        } else {
            claim_ready_steps(&mut conn, &request).unwrap()
        };
        // b is handed over; a is not, and not left claimed either: it failed
        // for good, saying why, with its one attempt.
        assert_eq!(
            claimed
                .iter()
                .map(|s| s.workflow_step_id)
                .collect::<Vec<_>>(),
            [b]
        );
        assert_eq!(step_flags(&mut conn, a), (false, false));
        let history = support::step_transitions(&mut conn, a);
        let last = history.last().unwrap();
        assert_eq!(last.to_state, StepState::Error);
        let error = last.metadata.as_ref().unwrap();
        assert_eq!(error["error"]["undecodable_inputs"], json!(true), "{error}");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be decoded"));
        // Nothing else is claimable, and nothing is claimed that no one holds.
        assert!(claim(&mut conn, &tasks, 10).is_empty());
        let held: i64 = {
            use tasker_diesel::schema::tasker_workflow_steps::dsl as steps;
            steps::tasker_workflow_steps
                .filter(steps::task_id.eq(task).and(steps::in_process.eq(true)))
                .count()
                .get_result(&mut conn)
                .unwrap()
        };
        assert_eq!(held, 1, "only the step handed over is claimed");
        let context = TaskExecutionContext::find(&mut conn, task)
            .unwrap()
            .unwrap();
        assert_eq!(context.failed_steps, 1);
        assert_maintained_readiness(&mut conn, Some(&tasks));
    }
}

#[test]
fn in_a_transaction_the_failure_of_an_undecodable_step_goes_with_the_claim() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = new_task(&mut conn, "poison in a transaction");
    let [a, b, _c] = step_ids_of(&mut conn, task)[..] else {
        unreachable!()
    };
    poison_inputs(&mut conn, a);
    let before = digest(&mut conn);
    let outcome = conn.transaction::<(), Error, _>(|conn| {
        let claimed = claim(conn, &[task], 10);
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].workflow_step_id, b);
        assert_eq!(
            step_flags(conn, a),
            (false, false),
            "failed inside the transaction"
        );
        Err(Error::Query(diesel::result::Error::RollbackTransaction))
    });
    assert!(outcome.is_err());
    assert_eq!(
        digest(&mut conn),
        before,
        "the claim and the failure rolled back together"
    );
}

// 3. What PostgreSQL cannot store --------------------------------------------------------

#[test]
fn text_and_json_postgres_cannot_store_are_refused_naming_the_field() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let nul = "bad\0value";
    let before = snapshot(&mut conn);
    let unstorable = |error: TemplateError| match error {
        TemplateError::Unstorable { field, problem } => {
            assert!(problem.contains("NUL"), "{problem}");
            field
        }
        other => panic!("expected Unstorable, got {other:?}"),
    };
    let unstorable_request = |error: RequestError| match error {
        RequestError::Unstorable { field, problem } => {
            assert!(
                problem.contains("NUL") || problem.contains("earliest"),
                "{problem}"
            );
            field
        }
        other => panic!("expected Unstorable, got {other:?}"),
    };
    let templates = [
        (
            TaskTemplate::new(nul, "flow", "1").step(StepTemplate::new("a")),
            TemplateField::Namespace,
        ),
        (
            TaskTemplate::new("ns", nul, "1").step(StepTemplate::new("a")),
            TemplateField::Name,
        ),
        (
            TaskTemplate::new("ns", "flow", nul).step(StepTemplate::new("a")),
            TemplateField::Version,
        ),
        (template().description(nul), TemplateField::Description),
        (
            template().step(StepTemplate::new(nul)),
            TemplateField::StepName,
        ),
        (
            template().step(StepTemplate::new("d").dependent_system(nul)),
            TemplateField::DependentSystem,
        ),
    ];
    for (template, field) in &templates {
        let error = template_error(create_task(&mut conn, &TaskRequest::new(template)));
        assert_eq!(unstorable(error), *field);
    }
    let flow = template();
    let before_4714_bc = NaiveDate::from_ymd_opt(-4713, 11, 23)
        .unwrap()
        .and_hms_opt(23, 59, 59)
        .unwrap();
    let requests = [
        (
            TaskRequest::new(&flow).initiator(nul),
            RequestField::Initiator,
        ),
        (
            TaskRequest::new(&flow).source_system(nul),
            RequestField::SourceSystem,
        ),
        (TaskRequest::new(&flow).reason(nul), RequestField::Reason),
        (
            TaskRequest::new(&flow).identity_hash(nul),
            RequestField::IdentityHash,
        ),
        (
            TaskRequest::new(&flow).tags(["ok", nul]),
            RequestField::Tags,
        ),
        (
            TaskRequest::new(&flow).context(json!({"deep": [{"x": nul}]})),
            RequestField::Context,
        ),
        (
            TaskRequest::new(&flow).context(json!({ nul: 1 })),
            RequestField::Context,
        ),
        (
            TaskRequest::new(&flow).input("a", json!([nul])),
            RequestField::Inputs,
        ),
        (
            TaskRequest::new(&flow).requested_at(before_4714_bc),
            RequestField::RequestedAt,
        ),
    ];
    for (request, field) in &requests {
        assert_eq!(unstorable_request(request.validate().unwrap_err()), *field);
        match create_task(&mut conn, request) {
            Err(Error::InvalidRequest { index: 0, error }) => {
                assert_eq!(unstorable_request(error), *field)
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
        match create_tasks(&mut conn, &[TaskRequest::new(&flow), request.clone()]) {
            Err(Error::InvalidRequest { index: 1, error }) => {
                assert_eq!(unstorable_request(error), *field)
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }
    assert_nothing_written(&before, &snapshot(&mut conn), "refused requests");

    // PostgreSQL's earliest timestamp is taken, exactly.
    let earliest = before_4714_bc + chrono::Duration::seconds(1);
    let created = create_task(&mut conn, &TaskRequest::new(&flow).requested_at(earliest)).unwrap();
    assert_eq!(created.task.requested_at, earliest);

    // The write calls refuse JSON with a NUL before sending anything.
    let task = created.task.task_id;
    let tasks = [task];
    let bad = json!({"message": nul});
    let kinds = [StepKind::named(nul)];
    let claims = [
        ClaimRequest::for_tasks(&tasks, 1, LEASE).with_metadata(&bad),
        ClaimRequest::for_tasks(&tasks, 1, LEASE).only(&kinds),
    ];
    assert_eq!(
        refused_argument(claim_ready_steps(&mut conn, &claims[0])),
        "metadata"
    );
    assert_eq!(
        refused_argument(claim_ready_steps(&mut conn, &claims[1])),
        "kinds"
    );
    assert_eq!(
        refused_argument(cancel_task(&mut conn, task, Some(&bad))),
        "metadata"
    );
    assert_eq!(
        refused_argument(finalize_task(&mut conn, task, Some(&bad))),
        "metadata"
    );
    assert_eq!(
        refused_argument(transition_task(
            &mut conn,
            task,
            TaskState::InProgress,
            TransitionOptions::default().with_metadata(&bad)
        )),
        "metadata"
    );
    let step = claim(&mut conn, &tasks, 1)[0].clone();
    let before = snapshot(&mut conn);
    let claim_of = step.claim();
    assert_eq!(
        refused_argument(complete_step(&mut conn, claim_of, &bad)),
        "results"
    );
    assert_eq!(
        refused_argument(fail_step(&mut conn, claim_of, &bad, None)),
        "error"
    );
    let ok = json!({"ok": true});
    let reports = [
        StepReport::complete(claim_of, &ok),
        StepReport::release(
            Claim {
                claim_id: 0,
                ..claim_of
            },
            &bad,
        ),
    ];
    assert_eq!(
        refused_argument(report_steps(&mut conn, &reports)),
        "reports[1].payload"
    );
    assert_eq!(
        refused_argument(release_steps(&mut conn, &[claim_of], &bad)),
        "reports[0].payload"
    );
    assert_eq!(
        refused_argument(transition_workflow_step(
            &mut conn,
            step.workflow_step_id,
            StepState::Complete,
            TransitionOptions::default().with_metadata(&bad)
        )),
        "metadata"
    );
    assert_eq!(
        refused_argument(resolve_step_manually(
            &mut conn,
            step.workflow_step_id,
            Some(&bad)
        )),
        "metadata"
    );
    // Metadata is a JSON object: the Rails engine reads it as a Hash.
    for not_an_object in [json!("done"), json!([1]), json!(null), json!(3)] {
        assert_eq!(
            refused_argument(resolve_step_manually(
                &mut conn,
                step.workflow_step_id,
                Some(&not_an_object)
            )),
            "metadata"
        );
        assert_eq!(
            refused_argument(cancel_task(&mut conn, task, Some(&not_an_object))),
            "metadata"
        );
    }
    assert_nothing_written(&before, &snapshot(&mut conn), "refused writes");
}

// 4. Templates that could never finish ----------------------------------------------------

#[test]
fn a_retry_limit_below_one_is_refused_and_one_means_a_single_attempt() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let never = TaskTemplate::new("ns", "never", "1").step(StepTemplate::new("a").retry_limit(0));
    assert_eq!(
        template_error(create_task(&mut conn, &TaskRequest::new(&never))),
        TemplateError::InvalidRetryLimit {
            step: "a".into(),
            retry_limit: 0
        }
    );
    let once = TaskTemplate::new("ns", "once", "1").step(StepTemplate::new("a").retry_limit(1));
    let task = create_task(&mut conn, &TaskRequest::new(&once))
        .unwrap()
        .task
        .task_id;
    let step = claim(&mut conn, &[task], 1).remove(0);
    fail_step(&mut conn, step.claim(), &json!("boom"), None).unwrap();
    assert!(claim(&mut conn, &[task], 1).is_empty(), "no second attempt");
    assert_eq!(
        finalize_task(&mut conn, task, None).unwrap(),
        TaskState::Error
    );
}

// 5. Cancelling finished work --------------------------------------------------------------

fn run_to_completion(conn: &mut PgConnection, task: i64) {
    loop {
        let claimed = claim(conn, &[task], 10);
        if claimed.is_empty() {
            break;
        }
        for step in claimed {
            complete_step(conn, step.claim(), &json!({})).unwrap();
        }
    }
}

#[test]
fn cancel_refuses_a_finished_task_unless_the_operator_moves_it() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = new_task(&mut conn, "finished");
    run_to_completion(&mut conn, task);
    assert_eq!(
        finalize_task(&mut conn, task, None).unwrap(),
        TaskState::Complete
    );
    let before = snapshot(&mut conn);
    assert_eq!(
        support::refusal(cancel_task(&mut conn, task, None)),
        Refusal::TaskFinished {
            task_id: task,
            state: TaskState::Complete
        }
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "cancel of a complete task");
    assert!(support::task_row(&mut conn, task).complete);
    // The explicit way: an operator's transition.
    transition_task(
        &mut conn,
        task,
        TaskState::Cancelled,
        TransitionOptions::default(),
    )
    .unwrap();
    assert!(!support::task_row(&mut conn, task).complete);
}

#[test]
fn a_late_cancel_does_not_overwrite_the_finalize_it_raced_with() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = new_task(&mut conn, "race");
    run_to_completion(&mut conn, task);

    // The finalize holds the task's lock while the cancel comes.
    let mut finalizer = db.connection();
    finalizer
        .transaction::<_, Error, _>(|finalizer| {
            assert_eq!(finalize_task(finalizer, task, None)?, TaskState::Complete);
            let url = db.url().to_owned();
            let (pid_sender, pid) = mpsc::channel();
            let cancel = thread::spawn(move || {
                let mut canceller = PgConnection::establish(&url).unwrap();
                pid_sender
                    .send(support::backend_pid(&mut canceller))
                    .unwrap();
                cancel_task(&mut canceller, task, None)
            });
            let pid = pid.recv().unwrap();
            support::wait_until_blocked(&mut conn, pid);
            // Committed by the closure's return; the cancel then reads it.
            Ok(cancel)
        })
        .map(|cancel| {
            assert_eq!(
                support::refusal(cancel.join().unwrap()),
                Refusal::TaskFinished {
                    task_id: task,
                    state: TaskState::Complete
                }
            );
        })
        .unwrap();
    assert!(support::task_row(&mut conn, task).complete);
}

// 6. Honest contexts --------------------------------------------------------------------

#[test]
fn finished_tasks_have_no_next_action() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let open = new_task(&mut conn, "open");
    let cancelled = new_task(&mut conn, "cancelled");
    let complete = new_task(&mut conn, "complete");
    cancel_task(&mut conn, cancelled, None).unwrap();
    run_to_completion(&mut conn, complete);
    finalize_task(&mut conn, complete, None).unwrap();
    let contexts =
        TaskExecutionContext::find_many(&mut conn, &[open, cancelled, complete]).unwrap();
    let by_task = |id: i64| contexts.iter().find(|c| c.task_id == id).unwrap();
    assert_eq!(
        by_task(open).next_action(),
        Some(tasker_diesel::RecommendedAction::ExecuteReadySteps)
    );
    assert!(!by_task(open).is_finished());
    for finished in [cancelled, complete] {
        let context = by_task(finished);
        assert!(context.is_finished(), "{context:?}");
        assert_eq!(context.next_action(), None, "{context:?}");
    }
}

// 7. Costs of unknown ids and long lists ----------------------------------------------------

/// Index scans of `table` so far, as the statistics collector counts them.
fn index_scans(conn: &mut PgConnection, table: &str) -> i64 {
    diesel::sql_query("SELECT pg_stat_clear_snapshot()")
        .execute(conn)
        .unwrap();
    diesel::dsl::sql::<BigInt>(&format!(
        "SELECT coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = '{table}'"
    ))
    .get_result(conn)
    .unwrap()
}

#[test]
fn unknown_task_ids_cost_one_probe_each_and_long_lists_are_refused() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = new_task(&mut conn, "probes");
    let unknown: Vec<i64> = (1_000_000..1_010_000).collect();

    let mut claimer = db.connection();
    let transitions_before = index_scans(&mut conn, "tasker_task_transitions");
    let steps_before = index_scans(&mut conn, "tasker_workflow_steps");
    diesel::sql_query("SELECT pg_stat_force_next_flush()")
        .execute(&mut claimer)
        .unwrap();
    assert!(claim(&mut claimer, &unknown, 10).is_empty());
    diesel::sql_query("SELECT pg_stat_force_next_flush()")
        .execute(&mut claimer)
        .unwrap();
    drop(claimer);
    // Before: every unknown id was looked up as a task (a probe of its
    // transitions each). Now the runnable index alone answers for it.
    // The statistics arrive: the probes of the steps' runnable index are
    // counted, one per id at least.
    let started = Instant::now();
    while index_scans(&mut conn, "tasker_workflow_steps") - steps_before < unknown.len() as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the claim's index scans never reached the statistics"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let transitions_after = index_scans(&mut conn, "tasker_task_transitions");
    assert!(
        transitions_after - transitions_before < 100,
        "{} probes of the task transitions for {} unknown ids",
        transitions_after - transitions_before,
        unknown.len()
    );

    let too_many: Vec<i64> = (0..=MAX_IDS_PER_CALL as i64).collect();
    let before = snapshot(&mut conn);
    let request = ClaimRequest::for_tasks(&too_many, 1, LEASE);
    assert_eq!(
        refused_argument(claim_ready_steps(&mut conn, &request)),
        "task_ids"
    );
    assert_eq!(
        refused_argument(StepReadinessStatus::for_tasks(&too_many).load(&mut conn)),
        "task_ids"
    );
    assert_eq!(
        refused_argument(StepReadinessStatus::for_steps(&too_many).load(&mut conn)),
        "step_ids"
    );
    assert_eq!(
        refused_argument(StepReadinessStatus::from_history(&too_many).load(&mut conn)),
        "step_ids"
    );
    assert_eq!(
        refused_argument(StepReadinessStatus::for_task_steps(task, &too_many).load(&mut conn)),
        "step_ids"
    );
    assert_eq!(
        refused_argument(TaskExecutionContext::find_many(&mut conn, &too_many)),
        "task_ids"
    );
    assert_eq!(
        refused_argument(ReadinessDrift::load(&mut conn, Some(&too_many))),
        "task_ids"
    );
    assert_eq!(
        refused_argument(rebuild_readiness(&mut conn, Some(&too_many))),
        "task_ids"
    );
    assert_eq!(
        refused_argument(finalize_settled_tasks(&mut conn, 10, Some(&too_many), None)),
        "among"
    );
    let claims: Vec<Claim> = too_many
        .iter()
        .map(|&id| Claim {
            workflow_step_id: id,
            claim_id: id,
        })
        .collect();
    assert_eq!(
        refused_argument(release_steps(&mut conn, &claims, &json!({}))),
        "reports"
    );
    assert_nothing_written(&before, &snapshot(&mut conn), "refused long lists");
    // The limit itself is accepted.
    let at_limit = &too_many[..MAX_IDS_PER_CALL];
    assert_eq!(
        TaskExecutionContext::find_many(&mut conn, at_limit)
            .unwrap()
            .len(),
        1
    );
}

// 9. One error type ---------------------------------------------------------------------

/// Reads and writes in one function with one error type, no conversions.
fn read_and_write(conn: &mut PgConnection, task: i64) -> tasker_diesel::Result<usize> {
    let ready = StepReadinessStatus::for_task(task)
        .ready_for_execution()
        .load(conn)?;
    let context = TaskExecutionContext::find(conn, task)?;
    let levels = tasker_diesel::readiness::DependencyLevel::load(conn, task)?;
    let health = tasker_diesel::readiness::SystemHealthCounts::load(conn)?;
    let drift = ReadinessDrift::load(conn, Some(&[task]))?;
    let claimed = claim_ready_steps(conn, &ClaimRequest::for_tasks(&[task], 1, LEASE))?;
    Ok(ready.len()
        + usize::from(context.is_some())
        + levels.len()
        + drift.len()
        + claimed.len()
        + usize::try_from(health.total_tasks).unwrap_or(0))
}

#[test]
fn one_error_type_says_whether_to_retry() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = new_task(&mut conn, "errors");
    assert!(read_and_write(&mut conn, task).unwrap() > 0);
    let refused = claim_ready_steps(&mut conn, &ClaimRequest::any_task(1, Duration::ZERO));
    assert_eq!(refused.unwrap_err().kind(), ErrorKind::Refused);
}

// The property: random bad input through every write call -----------------------------------

/// A duration: the edges, huge ones and ordinary ones.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(MAX_DURATION),
        Just(MAX_DURATION + Duration::from_nanos(1)),
        (0u64..u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..120, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

/// A count: the edges and ordinary ones.
fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1u32),
        Just(i32::MAX as u32),
        Just(i32::MAX as u32 + 1),
        Just(u32::MAX),
        0u32..20
    ]
}

/// Text with NUL and control characters, sometimes longer than any column.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z]{1,6}",
        2 => "[a-z]{0,3}\\x00[a-z]{0,3}",
        1 => "[a-z\\x01-\\x1f]{1,8}",
        1 => "[a-z]{120,300}",
    ]
}

/// JSON with such strings, as keys too, and numbers of every size serde
/// holds.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Transition metadata: mostly JSON objects, as it must be, sometimes not.
fn metadata_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::collection::btree_map(text(), json_value(), 0..3)
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        1 => json_value(),
    ]
}

/// Metadata a call must refuse: not an object, or with a NUL.
fn bad_metadata(value: &Value) -> bool {
    !value.is_object() || json_has_nul(value)
}

/// Whether PostgreSQL could not store `value` (a NUL in a string or key).
fn json_has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(json_has_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(key, item)| key.contains('\0') || json_has_nul(item)),
        _ => false,
    }
}

/// An id: one of the database's, or any.
fn id(known: Vec<i64>) -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(known),
        any::<i64>(),
        Just(0i64),
        Just(-1i64)
    ]
}

/// Every field of a template of one step and of a request for it.
#[derive(Debug, Clone)]
struct Request {
    texts: [String; 6],
    description: Option<String>,
    identity_hash: Option<String>,
    tags: Vec<String>,
    retry_limit: i32,
    context: Value,
    inputs: Value,
    requested_at: i64,
}

impl Request {
    /// namespace, name, version, step, dependent system, initiator.
    fn template(&self) -> TaskTemplate {
        let [namespace, name, version, step, system, _] = &self.texts;
        let template = TaskTemplate::new(namespace.as_str(), name.as_str(), version.as_str()).step(
            StepTemplate::new(step.as_str())
                .dependent_system(system.as_str())
                .retry_limit(self.retry_limit),
        );
        match &self.description {
            Some(description) => template.description(description.as_str()),
            None => template,
        }
    }

    fn requested_at(&self) -> chrono::NaiveDateTime {
        chrono::DateTime::from_timestamp_micros(self.requested_at)
            .map(|at| at.naive_utc())
            .unwrap_or_default()
    }

    fn request<'a>(&self, template: &'a TaskTemplate) -> TaskRequest<'a> {
        let mut request = TaskRequest::new(template)
            .initiator(self.texts[5].as_str())
            .source_system(self.texts[0].as_str())
            .reason(self.texts[1].as_str())
            .tags(self.tags.iter().map(String::as_str))
            .context(self.context.clone())
            .input(self.texts[3].as_str(), self.inputs.clone())
            .requested_at(self.requested_at());
        if let Some(hash) = &self.identity_hash {
            request = request.identity_hash(hash.as_str());
        }
        request
    }

    /// Why the database could not take it, if it could not.
    fn unstorable(&self) -> bool {
        let earliest = NaiveDate::from_ymd_opt(-4713, 11, 24)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        self.texts
            .iter()
            .chain(&self.description)
            .chain(&self.identity_hash)
            .chain(&self.tags)
            .any(|text| text.contains('\0'))
            || self.retry_limit < 1
            || json_has_nul(&self.context)
            || json_has_nul(&self.inputs)
            || self.requested_at() < earliest
    }
}

fn request() -> impl Strategy<Value = Request> {
    (
        [text(), text(), text(), text(), text(), text()],
        prop::option::of(text()),
        prop::option::of(text()),
        prop::collection::vec(text(), 0..3),
        prop_oneof![Just(-1i32), Just(0i32), 1i32..4, 1i32..4],
        json_value(),
        json_value(),
        any::<i64>(),
    )
        .prop_map(
            |(texts, description, identity_hash, tags, retry_limit, context, inputs, at)| Request {
                texts,
                description,
                identity_hash,
                tags,
                retry_limit,
                context,
                inputs,
                requested_at: at,
            },
        )
}

/// What a report of a batch says (`StepReport`'s constructors, in turn).
const REPORT_KINDS: usize = 4;

#[derive(Debug, Clone)]
enum Call {
    Create(Box<Request>),
    CreateMany(Box<Request>),
    StepTransition {
        step: i64,
        to: StepState,
        expecting: Option<StepState>,
        metadata: Value,
    },
    TaskTransition {
        task: i64,
        to: TaskState,
        expecting: Option<TaskState>,
        metadata: Value,
    },
    Resolve {
        step: i64,
        metadata: Value,
    },
    Cancel {
        task: i64,
        metadata: Value,
    },
    Finalize {
        task: i64,
        metadata: Value,
    },
    FinalizeSettled {
        max: u32,
        among: Vec<i64>,
        metadata: Value,
    },
    Claim {
        tasks: Option<Vec<i64>>,
        max: u32,
        lease: Duration,
        metadata: Value,
        kind: Option<(String, String)>,
    },
    Complete {
        claim: Claim,
        results: Value,
    },
    Fail {
        claim: Claim,
        error: Value,
        retry_after: Option<Duration>,
    },
    Extend {
        claim: Claim,
        lease: Duration,
    },
    ReleaseExpired {
        max: Option<u32>,
    },
    /// `report_steps`, or `report_and_claim` when `then_claim` is given.
    Report {
        claims: Vec<Claim>,
        payload: Value,
        retry_after: Option<Duration>,
        then_claim: Option<(u32, Duration)>,
    },
    CompleteMany {
        claims: Vec<Claim>,
        results: Value,
    },
    FailMany {
        claims: Vec<Claim>,
        error: Value,
        retry_after: Option<Duration>,
    },
    ReleaseMany {
        claims: Vec<Claim>,
        reason: Value,
    },
}

impl Call {
    /// Whether the call's arguments are ones it must refuse whatever the
    /// database holds: JSON or text with a NUL, a duration or count outside
    /// its range, a request that cannot be stored.
    fn must_be_refused(&self) -> bool {
        let lease_out = |lease: &Duration| lease.is_zero() || *lease > MAX_DURATION;
        let delay_out = |delay: &Option<Duration>| delay.is_some_and(|d| d > MAX_DURATION);
        let count_out = |count: u32, min: u32| count < min || count > i32::MAX as u32;
        match self {
            Call::Create(request) | Call::CreateMany(request) => request.unstorable(),
            Call::StepTransition { metadata, .. }
            | Call::TaskTransition { metadata, .. }
            | Call::Resolve { metadata, .. }
            | Call::Cancel { metadata, .. }
            | Call::Finalize { metadata, .. } => bad_metadata(metadata),
            Call::FinalizeSettled { max, metadata, .. } => {
                count_out(*max, 1) || bad_metadata(metadata)
            }
            Call::Claim {
                max,
                lease,
                metadata,
                kind,
                ..
            } => {
                count_out(*max, 1)
                    || lease_out(lease)
                    || bad_metadata(metadata)
                    || kind
                        .as_ref()
                        .is_some_and(|(step, task)| step.contains('\0') || task.contains('\0'))
            }
            Call::Complete { results, .. } => json_has_nul(results),
            Call::Fail {
                error, retry_after, ..
            } => json_has_nul(error) || delay_out(retry_after),
            Call::Extend { lease, .. } => lease_out(lease),
            Call::ReleaseExpired { max } => max.is_some_and(|max| count_out(max, 0)),
            Call::Report {
                claims,
                payload,
                retry_after,
                then_claim,
            } => {
                let fails = (0..claims.len()).any(|index| index % REPORT_KINDS == 1);
                (!claims.is_empty() && json_has_nul(payload))
                    || (fails && delay_out(retry_after))
                    || then_claim.is_some_and(|(max, lease)| count_out(max, 0) || lease_out(&lease))
            }
            Call::CompleteMany {
                claims,
                results: payload,
            }
            | Call::ReleaseMany {
                claims,
                reason: payload,
            } => !claims.is_empty() && json_has_nul(payload),
            Call::FailMany {
                claims,
                error,
                retry_after,
            } => !claims.is_empty() && (json_has_nul(error) || delay_out(retry_after)),
        }
    }
}

fn state() -> impl Strategy<Value = StepState> {
    prop::sample::select(vec![
        StepState::Pending,
        StepState::InProgress,
        StepState::Complete,
        StepState::Error,
        StepState::Cancelled,
        StepState::ResolvedManually,
    ])
}

fn task_state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(vec![
        TaskState::Pending,
        TaskState::InProgress,
        TaskState::Complete,
        TaskState::Error,
        TaskState::Cancelled,
        TaskState::ResolvedManually,
    ])
}

fn call(tasks: Vec<i64>, steps: Vec<i64>, claims: Vec<Claim>) -> impl Strategy<Value = Call> {
    let claim = prop_oneof![
        prop::sample::select(claims),
        (any::<i64>(), any::<i64>()).prop_map(|(s, c)| Claim {
            workflow_step_id: s,
            claim_id: c
        }),
    ];
    let claims = prop::collection::vec(claim.clone(), 0..5);
    let task = || id(tasks.clone());
    let step = || id(steps.clone());
    prop_oneof![
        request().prop_map(|request| Call::Create(Box::new(request))),
        request().prop_map(|request| Call::CreateMany(Box::new(request))),
        (step(), state(), prop::option::of(state()), metadata_value()).prop_map(
            |(step, to, expecting, metadata)| Call::StepTransition {
                step,
                to,
                expecting,
                metadata
            }
        ),
        (
            task(),
            task_state(),
            prop::option::of(task_state()),
            metadata_value()
        )
            .prop_map(|(task, to, expecting, metadata)| Call::TaskTransition {
                task,
                to,
                expecting,
                metadata
            }),
        (step(), metadata_value()).prop_map(|(step, metadata)| Call::Resolve { step, metadata }),
        (task(), metadata_value()).prop_map(|(task, metadata)| Call::Cancel { task, metadata }),
        (task(), metadata_value()).prop_map(|(task, metadata)| Call::Finalize { task, metadata }),
        (
            count(),
            prop::collection::vec(task(), 0..4),
            metadata_value()
        )
            .prop_map(|(max, among, metadata)| Call::FinalizeSettled {
                max,
                among,
                metadata
            }),
        (
            prop::option::of(prop::collection::vec(task(), 0..4)),
            count(),
            duration(),
            metadata_value(),
            prop::option::of((text(), text()))
        )
            .prop_map(|(tasks, max, lease, metadata, kind)| Call::Claim {
                tasks,
                max,
                lease,
                metadata,
                kind
            }),
        (claim.clone(), json_value())
            .prop_map(|(claim, results)| Call::Complete { claim, results }),
        (claim.clone(), json_value(), prop::option::of(duration())).prop_map(
            |(claim, error, retry_after)| Call::Fail {
                claim,
                error,
                retry_after
            }
        ),
        (claim, duration()).prop_map(|(claim, lease)| Call::Extend { claim, lease }),
        prop::option::of(count()).prop_map(|max| Call::ReleaseExpired { max }),
        (
            claims.clone(),
            json_value(),
            prop::option::of(duration()),
            prop::option::of((count(), duration()))
        )
            .prop_map(|(claims, payload, retry_after, then_claim)| Call::Report {
                claims,
                payload,
                retry_after,
                then_claim
            }),
        (claims.clone(), json_value())
            .prop_map(|(claims, results)| Call::CompleteMany { claims, results }),
        (claims.clone(), json_value(), prop::option::of(duration())).prop_map(
            |(claims, error, retry_after)| Call::FailMany {
                claims,
                error,
                retry_after
            }
        ),
        (claims, json_value()).prop_map(|(claims, reason)| Call::ReleaseMany { claims, reason }),
    ]
}

/// Makes the call.
fn make(conn: &mut PgConnection, call: &Call) -> tasker_diesel::Result<()> {
    match call {
        Call::Create(request) => {
            let template = request.template();
            create_task(conn, &request.request(&template)).map(drop)
        }
        Call::CreateMany(request) => {
            let valid = template();
            let template = request.template();
            let batch = [TaskRequest::new(&valid), request.request(&template)];
            create_tasks(conn, &batch).map(drop)
        }
        Call::StepTransition {
            step,
            to,
            expecting,
            metadata,
        } => transition_workflow_step(
            conn,
            *step,
            *to,
            TransitionOptions {
                expected: *expecting,
                metadata: Some(metadata),
            },
        )
        .map(drop),
        Call::TaskTransition {
            task,
            to,
            expecting,
            metadata,
        } => transition_task(
            conn,
            *task,
            *to,
            TransitionOptions {
                expected: *expecting,
                metadata: Some(metadata),
            },
        )
        .map(drop),
        Call::Resolve { step, metadata } => {
            resolve_step_manually(conn, *step, Some(metadata)).map(drop)
        }
        Call::Cancel { task, metadata } => cancel_task(conn, *task, Some(metadata)).map(drop),
        Call::Finalize { task, metadata } => finalize_task(conn, *task, Some(metadata)).map(drop),
        Call::FinalizeSettled {
            max,
            among,
            metadata,
        } => finalize_settled_tasks(conn, *max, Some(among), Some(metadata)).map(drop),
        Call::Claim {
            tasks,
            max,
            lease,
            metadata,
            kind,
        } => {
            let kinds: Vec<StepKind> = kind
                .iter()
                .map(|(step, task)| {
                    StepKind::named(step.as_str()).in_task("hardening", task.as_str())
                })
                .collect();
            let mut request = ClaimRequest::any_task(*max, *lease).with_metadata(metadata);
            request.task_ids = tasks.as_deref();
            if kind.is_some() {
                request = request.only(&kinds);
            }
            claim_ready_steps(conn, &request).map(drop)
        }
        Call::Complete { claim, results } => complete_step(conn, *claim, results).map(drop),
        Call::Fail {
            claim,
            error,
            retry_after,
        } => fail_step(conn, *claim, error, *retry_after).map(drop),
        Call::Extend { claim, lease } => extend_step_claim(conn, *claim, *lease).map(drop),
        Call::ReleaseExpired { max } => release_expired_claims(conn, *max).map(drop),
        Call::Report {
            claims,
            payload,
            retry_after,
            then_claim,
        } => {
            let reports: Vec<StepReport<'_>> = claims
                .iter()
                .enumerate()
                .map(|(index, &claim)| match index % REPORT_KINDS {
                    0 => StepReport::complete(claim, payload),
                    1 => StepReport::fail(claim, payload, *retry_after),
                    2 => StepReport::fail_permanently(claim, payload),
                    _ => StepReport::release(claim, payload),
                })
                .collect();
            match then_claim {
                None => report_steps(conn, &reports).map(drop),
                Some((max, lease)) => {
                    report_and_claim(conn, &reports, &ClaimRequest::any_task(*max, *lease))
                        .map(drop)
                }
            }
        }
        Call::CompleteMany { claims, results } => {
            let completed: Vec<(Claim, &Value)> =
                claims.iter().map(|&claim| (claim, results)).collect();
            complete_steps(conn, &completed).map(drop)
        }
        Call::FailMany {
            claims,
            error,
            retry_after,
        } => {
            let failed: Vec<(Claim, &Value, Option<Duration>)> = claims
                .iter()
                .map(|&claim| (claim, error, *retry_after))
                .collect();
            fail_steps(conn, &failed).map(drop)
        }
        Call::ReleaseMany { claims, reason } => release_steps(conn, claims, reason).map(drop),
    }
}

#[test]
fn random_bad_input_through_every_write_call_is_refused_typed_and_writes_nothing() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let tasks: Vec<i64> = (0..3)
        .map(|n| new_task(&mut conn, &format!("p{n}")))
        .collect();
    let poisoned = step_ids_of(&mut conn, tasks[2])[0];
    poison_inputs(&mut conn, poisoned);
    let mut steps = Vec::new();
    for &task in &tasks {
        steps.extend(step_ids_of(&mut conn, task));
    }
    let claims: Vec<Claim> = claim(&mut conn, &tasks[..2], 2)
        .iter()
        .map(ClaimedStep::claim)
        .collect();

    let mut runner = TestRunner::new(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    // The runner takes a `Fn`: the connection and the tallies are cells.
    let conn = RefCell::new(conn);
    let (refused, written, bad) = (Cell::new(0), Cell::new(0), Cell::new(0));
    runner
        .run(&call(tasks.clone(), steps, claims), |call| {
            let conn = &mut *conn.borrow_mut();
            let before = digest(conn);
            let must_be_refused = call.must_be_refused();
            bad.set(bad.get() + usize::from(must_be_refused));
            match make(conn, &call) {
                Ok(()) => {
                    prop_assert!(!must_be_refused, "{:?} was taken", call);
                    written.set(written.get() + 1);
                }
                Err(error) => {
                    refused.set(refused.get() + 1);
                    prop_assert!(
                        matches!(
                            error,
                            Error::Refused(_)
                                | Error::InvalidTemplate(_)
                                | Error::InvalidRequest { .. }
                                | Error::Integrity { .. }
                        ),
                        "untyped error for {:?}: {:?}",
                        call,
                        error
                    );
                    prop_assert_eq!(&digest(conn), &before, "{:?} wrote on error", call);
                }
            }
            Ok(())
        })
        .unwrap();
    let (refused, written, bad) = (refused.get(), written.get(), bad.get());
    assert!(
        written > 20 && bad > 100 && refused >= bad,
        "{refused} refused ({bad} bad), {written} written"
    );
    assert_maintained_readiness(&mut conn.borrow_mut(), None);
}

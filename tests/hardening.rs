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
use tasker_diesel::readiness::{readiness_drift, rebuild_readiness};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    cancel_task, claim_ready_steps, complete_step, create_task, create_tasks, extend_step_claim,
    fail_step, finalize_settled_tasks, finalize_task, release_expired_claims, release_steps,
    report_and_claim, report_steps, resolve_step_manually, transition_task,
    transition_workflow_step, wait_for_claimable_work, Claim, ClaimRequest, ClaimedStep, StepKind,
    StepReport, StepTemplate, TaskRequest, TaskTemplate, TemplateError, TemplateField,
    TransitionOptions,
};
use tasker_diesel::{
    Error, ErrorKind, Refusal, StepReadinessStatus, StepState, TaskExecutionContext, TaskState,
    MAX_DURATION, MAX_IDS_PER_CALL,
};

mod support;
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
            TemplateField::Initiator,
        ),
        (
            TaskRequest::new(&flow).source_system(nul),
            TemplateField::SourceSystem,
        ),
        (TaskRequest::new(&flow).reason(nul), TemplateField::Reason),
        (
            TaskRequest::new(&flow).identity_hash(nul),
            TemplateField::IdentityHash,
        ),
        (
            TaskRequest::new(&flow).tags(["ok", nul]),
            TemplateField::Tags,
        ),
        (
            TaskRequest::new(&flow).context(json!({"deep": [{"x": nul}]})),
            TemplateField::Context,
        ),
        (
            TaskRequest::new(&flow).context(json!({ nul: 1 })),
            TemplateField::Context,
        ),
        (
            TaskRequest::new(&flow).input("a", json!([nul])),
            TemplateField::Inputs,
        ),
        (
            TaskRequest::new(&flow).requested_at(before_4714_bc),
            TemplateField::RequestedAt,
        ),
    ];
    for (request, field) in &requests {
        assert_eq!(unstorable(request.validate().unwrap_err()), *field);
        let error = template_error(create_task(&mut conn, request));
        assert_eq!(unstorable(error), *field);
        match create_tasks(&mut conn, &[TaskRequest::new(&flow), request.clone()]) {
            Err(Error::InvalidRequest { index: 1, error }) => assert_eq!(unstorable(error), *field),
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
                let pid: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                    "pg_backend_pid()",
                ))
                .get_result(&mut canceller)
                .unwrap();
                pid_sender.send(pid).unwrap();
                cancel_task(&mut canceller, task, None)
            });
            let pid = pid.recv().unwrap();
            let started = Instant::now();
            loop {
                let waiting: i64 = diesel::dsl::sql::<BigInt>(&format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'"
                ))
                .get_result(&mut conn)
                .unwrap();
                if waiting > 0 {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "the cancel never waited");
                thread::sleep(Duration::from_millis(5));
            }
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
        refused_argument(readiness_drift(&mut conn, Some(&too_many))),
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
    let levels = tasker_diesel::readiness::calculate_dependency_levels(conn, task)?;
    let health = tasker_diesel::readiness::get_system_health_counts(conn)?;
    let drift = readiness_drift(conn, Some(&[task]))?;
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

/// Text with NUL and control characters, sometimes longer than any column.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]{1,6}", "[a-z\\x00-\\x1f]{0,8}", "[a-z]{120,300}",]
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

/// An id: one of the database's, or any.
fn id(known: Vec<i64>) -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(known),
        any::<i64>(),
        Just(0i64),
        Just(-1i64)
    ]
}

#[derive(Debug, Clone)]
enum Call {
    Create {
        namespace: String,
        step: String,
        retry_limit: i32,
        initiator: String,
        context: Value,
        inputs: Value,
        requested_at: i64,
    },
    StepTransition {
        step: i64,
        to: StepState,
        metadata: Value,
    },
    TaskTransition {
        task: i64,
        to: TaskState,
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
    },
    Claim {
        tasks: Option<Vec<i64>>,
        max: u32,
        lease: Duration,
        metadata: Value,
        kind: String,
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
    Report {
        claims: Vec<Claim>,
        payload: Value,
        retry_after: Option<Duration>,
        then_claim: u32,
        lease: Duration,
    },
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
    let count = prop_oneof![Just(0u32), Just(1u32), Just(u32::MAX), 0u32..20];
    prop_oneof![
        (
            text(),
            text(),
            -2i32..3,
            text(),
            json_value(),
            json_value(),
            any::<i64>()
        )
            .prop_map(
                |(namespace, step, retry_limit, initiator, context, inputs, requested_at)| {
                    Call::Create {
                        namespace,
                        step,
                        retry_limit,
                        initiator,
                        context,
                        inputs,
                        requested_at,
                    }
                }
            ),
        (id(steps.clone()), state(), json_value())
            .prop_map(|(step, to, metadata)| Call::StepTransition { step, to, metadata }),
        (id(tasks.clone()), task_state(), json_value())
            .prop_map(|(task, to, metadata)| Call::TaskTransition { task, to, metadata }),
        (id(tasks.clone()), json_value())
            .prop_map(|(task, metadata)| Call::Cancel { task, metadata }),
        (id(tasks.clone()), json_value())
            .prop_map(|(task, metadata)| Call::Finalize { task, metadata }),
        (
            count.clone(),
            prop::collection::vec(id(tasks.clone()), 0..4)
        )
            .prop_map(|(max, among)| Call::FinalizeSettled { max, among }),
        (
            prop::option::of(prop::collection::vec(id(tasks.clone()), 0..4)),
            count.clone(),
            duration(),
            json_value(),
            text()
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
        (claim.clone(), duration()).prop_map(|(claim, lease)| Call::Extend { claim, lease }),
        prop::option::of(count.clone()).prop_map(|max| Call::ReleaseExpired { max }),
        (
            prop::collection::vec(claim, 0..3),
            json_value(),
            prop::option::of(duration()),
            count,
            duration()
        )
            .prop_map(
                |(claims, payload, retry_after, then_claim, lease)| Call::Report {
                    claims,
                    payload,
                    retry_after,
                    then_claim,
                    lease
                }
            ),
    ]
}

/// Makes the call; `Ok` with whether it wrote, or the error.
fn make(conn: &mut PgConnection, call: &Call) -> tasker_diesel::Result<()> {
    match call {
        Call::Create {
            namespace,
            step,
            retry_limit,
            initiator,
            context,
            inputs,
            requested_at,
        } => {
            let template = TaskTemplate::new(namespace.as_str(), "flow", "1")
                .step(StepTemplate::new(step.as_str()).retry_limit(*retry_limit));
            let requested_at = chrono::DateTime::from_timestamp_micros(*requested_at)
                .map(|at| at.naive_utc())
                .unwrap_or_default();
            let request = TaskRequest::new(&template)
                .initiator(initiator.as_str())
                .context(context.clone())
                .input(step.as_str(), inputs.clone())
                .requested_at(requested_at);
            create_task(conn, &request).map(drop)
        }
        Call::StepTransition { step, to, metadata } => transition_workflow_step(
            conn,
            *step,
            *to,
            TransitionOptions::default().with_metadata(metadata),
        )
        .map(drop),
        Call::TaskTransition { task, to, metadata } => transition_task(
            conn,
            *task,
            *to,
            TransitionOptions::default().with_metadata(metadata),
        )
        .map(drop),
        Call::Cancel { task, metadata } => cancel_task(conn, *task, Some(metadata)).map(drop),
        Call::Finalize { task, metadata } => finalize_task(conn, *task, Some(metadata)).map(drop),
        Call::FinalizeSettled { max, among } => {
            finalize_settled_tasks(conn, *max, Some(among), None).map(drop)
        }
        Call::Claim {
            tasks,
            max,
            lease,
            metadata,
            kind,
        } => {
            let kinds = [StepKind::named(kind.as_str())];
            let mut request = ClaimRequest::any_task(*max, *lease).with_metadata(metadata);
            request.task_ids = tasks.as_deref();
            if kind.len() % 2 == 0 {
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
            lease,
        } => {
            let reports: Vec<StepReport<'_>> = claims
                .iter()
                .enumerate()
                .map(|(index, &claim)| match index % 3 {
                    0 => StepReport::complete(claim, payload),
                    1 => StepReport::fail(claim, payload, *retry_after),
                    _ => StepReport::release(claim, payload),
                })
                .collect();
            if *then_claim == 0 && reports.len() % 2 == 0 {
                report_steps(conn, &reports).map(drop)
            } else {
                report_and_claim(conn, &reports, &ClaimRequest::any_task(*then_claim, *lease))
                    .map(drop)
            }
        }
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
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    // The runner takes a `Fn`: the connection and the tallies are cells.
    let conn = RefCell::new(conn);
    let (refused, written) = (Cell::new(0), Cell::new(0));
    runner
        .run(&call(tasks.clone(), steps, claims), |call| {
            let conn = &mut *conn.borrow_mut();
            let before = digest(conn);
            match make(conn, &call) {
                Ok(()) => written.set(written.get() + 1),
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
    let (refused, written) = (refused.get(), written.get());
    assert!(
        refused > 0 && written > 0,
        "{refused} refused, {written} written"
    );
    assert_maintained_readiness(&mut conn.borrow_mut(), None);
}

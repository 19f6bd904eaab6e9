//! Random sequences of write-path operations on random DAG workflows keep
//! every invariant of the write path (README "Semantics"), checked after
//! each operation.
//!
//! A case builds 1-3 tasks with `create_task` from random templates (random
//! edges to earlier steps, retry limits 0-3, retryable or not, some skippable
//! steps bypassed), then runs a random sequence of claims, reports under old
//! or current claims, lease extensions and expiries, releases, time passing,
//! manual resolutions, cancels, finalizations and operator resumes. After
//! each operation the test checks what the operation must have done (or, for
//! a refusal, that it was the refusal the state implies and wrote nothing),
//! and then the invariants of every step and task, among them that the
//! readiness state kept by triggers has no drift and gives the readiness
//! recomputed from the history (`support::check_maintained_readiness`).
//!
//! One test database and one autocommit connection: each call is its own
//! transaction with its own `now()`, as in production. Which steps a claim
//! must take and what finalizing must do comes from the Rust reference of the
//! readiness rules (`tests/oracle`), evaluated at every instant the call may
//! have seen as `now()` (between two `clock_timestamp()` reads around it), so
//! a backoff ending during the call cannot make the test flaky. Time passes
//! by moving every stored timestamp back by whole minutes, and leases are odd
//! multiples of 30 s, so a lease is always at least 30 s from its end.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug};
use std::rc::Rc;
use std::time::Duration as StdDuration;

use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use diesel::sql_types::{Integer, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Value};
use tasker_diesel::functions;
use tasker_diesel::models::{Task, TaskTransition, WorkflowStep, WorkflowStepTransition};
use tasker_diesel::schema::{tasker_workflow_step_edges, tasker_workflow_steps};
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::workflow::{
    cancel_task, claim_ready_steps, complete_step, create_task, extend_step_claim, fail_step,
    finalize_task, release_expired_claims, resolve_step_manually, transition_task, Claim,
    ClaimRequest, ClaimedStep, StepTemplate, TaskRequest, TaskTemplate, TransitionOptions,
};
use tasker_diesel::{
    Error, ExecutionStatus, Refusal, StepReadinessStatus, StepState, TaskExecutionContext,
    TaskState,
};

use crate::oracle;
use crate::support;

use oracle::{step_move_allowed, task_move_allowed, StepInput, TaskInput, World};

const CASES: u32 = 28;
const MAX_TASKS: usize = 3;
const MAX_STEPS: usize = 8;
const MAX_OPERATIONS: usize = 60;
/// Leases and extensions, in seconds: odd multiples of 30, so that after
/// whole minutes have passed a lease is still 30 s away from its end.
const LEASES: [u32; 4] = [30, 90, 150, 3630];
/// How far "letting time pass" moves every timestamp back: whole minutes,
/// longer than any failure backoff (at most 30 s), and never onto a lease's end.
const TIME_PASSING: [i32; 3] = [60, 120, 600];
/// `retry_after` of `fail_step`, in milliseconds (1500 rounds up to 2 s).
const RETRY_AFTER_MS: [u64; 5] = [0, 1_500, 5_000, 45_000, 90_000];
/// How far `ExpireLease` puts a lease's end into the past.
const EXPIRED_SECONDS_AGO: i64 = 30;

mod cases;
mod checks;
mod operations;
mod run;
mod view;

use cases::*;
use checks::*;
use run::*;
use view::*;

/// Runs one case on `conn`: creates its tasks, then applies each operation
/// and checks the invariants after it.
fn run_case(conn: &mut PgConnection, case: &Case, case_number: u64) -> Result<(), TestCaseError> {
    let mut run = Run::create(conn, case, case_number)?;
    for (number, op) in case.ops.iter().enumerate() {
        let checked = run.apply(number, op).and_then(|()| {
            // The state the operation left: what it loaded, else read anew.
            let view = match run.latest.take() {
                Some(view) => view,
                None => Rc::new(View::load(run.conn)),
            };
            run.current = Rc::clone(&view);
            run.check_state(&view)
        });
        checked.map_err(|error| run.explain(error))?;
    }
    Ok(())
}

/// One test database and a connection kept from case to case. A case that
/// panics drops its connection (it may be inside a transaction), and the
/// next case opens a new one.
struct Session {
    db: TestDatabase,
    conn: RefCell<Option<PgConnection>>,
    cases: Cell<u64>,
}

impl Session {
    fn new() -> Self {
        Session {
            db: TestDatabase::new(),
            conn: RefCell::new(None),
            cases: Cell::new(0),
        }
    }

    fn run(&self, case: &Case) -> Result<(), TestCaseError> {
        let mut conn = self.conn.take().unwrap_or_else(|| self.db.connection());
        let number = self.cases.get();
        self.cases.set(number + 1);
        let outcome = run_case(&mut conn, case, number);
        self.conn.replace(Some(conn));
        outcome
    }
}

// Properties -------------------------------------------------------------------------

#[test]
fn random_write_path_operations_keep_every_invariant() {
    let session = Session::new();
    let config = ProptestConfig {
        cases: CASES,
        // No regression files: the test writes nothing into the source tree.
        failure_persistence: None,
        // Bounds the time a failure takes to shrink.
        max_shrink_iters: 512,
        max_shrink_time: 10_000,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(error) = runner.run(&case(), |case| session.run(&case)) {
        panic!("{error}");
    }
}

/// The operator's path out of a task in `error` (README "Semantics"):
/// resolve the failed step, move the task back to pending, and claims resume
/// it. The shrunk form of a failure of the property above.
#[test]
fn a_task_resumed_to_pending_is_claimed_again() {
    let step = |parents: Vec<usize>| StepSpec {
        retry_limit: 1,
        retryable: true,
        skippable: false,
        bypassed: false,
        parents,
    };
    let claim = Op::Claim {
        tasks: None,
        max_steps: 1,
        lease: 30,
    };
    let case = Case {
        tasks: vec![vec![step(vec![]), step(vec![0])]],
        ops: vec![
            claim.clone(),                         // s0
            Op::Fail(ClaimPick::Current(0), None), // its only attempt
            Op::Finalize(0),                       // the task is in error
            Op::Resolve(0),                        // the operator resolves s0
            Op::Resume {
                task: 0,
                expect_error: true,
            }, // and resumes the task
            claim,                                 // s1 is ready and its task pending: claimed
        ],
    };
    let session = Session::new();
    if let Err(error) = session.run(&case) {
        panic!("{error}");
    }
}

/// The state machines written out above are the schema's.
#[test]
fn the_state_machine_tables_of_this_test_match_the_schema() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    for from in StepState::ALL {
        for to in StepState::ALL {
            let allowed: bool = diesel::select(functions::tasker_step_transition_allowed(from, to))
                .get_result(&mut conn)
                .expect("tasker_step_transition_allowed");
            assert_eq!(allowed, step_move_allowed(from, to), "step {from} -> {to}");
        }
    }
    for from in TaskState::ALL {
        for to in TaskState::ALL {
            let allowed: bool = diesel::select(functions::tasker_task_transition_allowed(from, to))
                .get_result(&mut conn)
                .expect("tasker_task_transition_allowed");
            assert_eq!(allowed, task_move_allowed(from, to), "task {from} -> {to}");
        }
    }
}

/// A task `cancel_task` refuses to cancel: its work is done.
fn task_finished(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Complete | TaskState::ResolvedManually | TaskState::Cancelled
    )
}

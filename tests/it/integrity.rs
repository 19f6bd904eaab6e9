//! The integrity rules the database enforces itself, whoever writes the rows.

use std::thread;

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text};
use tasker_diesel::models::*;
use tasker_diesel::schema::*;
use tasker_diesel::testing::TestDatabase;
use tasker_diesel::{Error, IntegrityRule, StepState, TaskState};

use crate::support;
use support::{add_edge, backend_pid, task_with_steps, wait_until_blocked};

/// The rule a failed write broke, as the crate's error type reports it.
fn broken_rule<T: std::fmt::Debug>(result: QueryResult<T>) -> IntegrityRule {
    match result.map_err(Error::from) {
        Err(Error::Integrity { rule, .. }) => rule,
        other => panic!("expected an integrity violation, got {other:?}"),
    }
}

fn edge_count(conn: &mut PgConnection) -> i64 {
    tasker_workflow_step_edges::table
        .count()
        .get_result(conn)
        .unwrap()
}

#[test]
fn duplicate_edge_is_rejected() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let s = task_with_steps(&mut conn, 2).step_ids();
    add_edge(&mut conn, s[0], s[1]).unwrap();
    assert_eq!(
        broken_rule(add_edge(&mut conn, s[0], s[1])),
        IntegrityRule::DuplicateEdge
    );
}

#[test]
fn self_edge_is_rejected() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let s = task_with_steps(&mut conn, 1).step_ids();
    assert_eq!(
        broken_rule(add_edge(&mut conn, s[0], s[0])),
        IntegrityRule::SelfEdge
    );
}

#[test]
fn edge_between_steps_of_two_tasks_is_rejected() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let first = task_with_steps(&mut conn, 1).step_ids();
    let second = task_with_steps(&mut conn, 1).step_ids();
    assert_eq!(
        broken_rule(add_edge(&mut conn, first[0], second[0])),
        IntegrityRule::CrossTaskEdge
    );
    assert_eq!(
        broken_rule(add_edge(&mut conn, second[0], first[0])),
        IntegrityRule::CrossTaskEdge
    );
    assert_eq!(edge_count(&mut conn), 0);
}

#[test]
fn cycle_of_two_steps_is_rejected() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let s = task_with_steps(&mut conn, 2).step_ids();
    add_edge(&mut conn, s[0], s[1]).unwrap();
    assert_eq!(
        broken_rule(add_edge(&mut conn, s[1], s[0])),
        IntegrityRule::Cycle
    );
    assert_eq!(edge_count(&mut conn), 1);
}

#[test]
fn cycle_of_three_steps_is_rejected() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let s = task_with_steps(&mut conn, 3).step_ids();
    add_edge(&mut conn, s[0], s[1]).unwrap();
    add_edge(&mut conn, s[1], s[2]).unwrap();
    let error = add_edge(&mut conn, s[2], s[0])
        .map_err(Error::from)
        .unwrap_err();
    let expected = format!(
        "the step graph must stay acyclic: workflow step edge {} -> {} would create a cycle",
        s[2], s[0]
    );
    assert!(error.to_string().starts_with(&expected), "{error}");
}

#[test]
fn cycle_written_by_one_statement_is_rejected_whole() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let s = task_with_steps(&mut conn, 3).step_ids();
    let edges: Vec<_> = [(s[0], s[1]), (s[1], s[2]), (s[2], s[0])]
        .into_iter()
        .map(|(from, to)| NewWorkflowStepEdge {
            from_step_id: from,
            to_step_id: to,
            name: "provides",
        })
        .collect();
    let result = diesel::insert_into(tasker_workflow_step_edges::table)
        .values(&edges)
        .execute(&mut conn);
    assert_eq!(broken_rule(result), IntegrityRule::Cycle);
    assert_eq!(
        edge_count(&mut conn),
        0,
        "a rejected statement writes no edge"
    );
}

#[test]
fn cycle_made_by_updating_an_edge_is_rejected() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let s = task_with_steps(&mut conn, 3).step_ids();
    add_edge(&mut conn, s[0], s[1]).unwrap();
    let second = add_edge(&mut conn, s[1], s[2]).unwrap();
    let result = diesel::update(&second)
        .set(tasker_workflow_step_edges::to_step_id.eq(s[0]))
        .execute(&mut conn);
    assert_eq!(broken_rule(result), IntegrityRule::Cycle);
}

#[test]
fn shared_descendants_are_not_a_cycle() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let s = task_with_steps(&mut conn, 5).step_ids();
    // Diamond 0 -> {1, 2} -> 3, plus the shortcut 0 -> 3 and a tail 3 -> 4.
    let edges = [
        (s[0], s[1]),
        (s[0], s[2]),
        (s[1], s[3]),
        (s[2], s[3]),
        (s[0], s[3]),
        (s[3], s[4]),
    ];
    for (from, to) in edges {
        add_edge(&mut conn, from, to).unwrap();
    }
    assert_eq!(edge_count(&mut conn), 6);
}

/// Two transactions each add half of a cycle; the second to commit must fail.
fn concurrent_halves_of_a_cycle(isolation: &'static str) -> DieselError {
    let db = TestDatabase::new();
    let mut setup = db.connection();
    let s = task_with_steps(&mut setup, 2).step_ids();
    let (a, b) = (s[0], s[1]);

    let mut first = db.connection();
    let mut second = db.connection();
    let second_pid = backend_pid(&mut second);
    diesel::sql_query("BEGIN").execute(&mut first).unwrap();
    add_edge(&mut first, a, b).unwrap();

    let racer = thread::spawn(move || {
        diesel::sql_query(format!("BEGIN ISOLATION LEVEL {isolation}"))
            .execute(&mut second)
            .unwrap();
        // Take the snapshot before the first transaction commits.
        tasker_workflow_step_edges::table
            .count()
            .get_result::<i64>(&mut second)
            .unwrap();
        let outcome = add_edge(&mut second, b, a);
        let _ = diesel::sql_query("COMMIT").execute(&mut second);
        outcome
    });
    wait_until_blocked(&mut setup, second_pid);
    diesel::sql_query("COMMIT").execute(&mut first).unwrap();

    let error = racer
        .join()
        .unwrap()
        .expect_err("the second half of the cycle was accepted");
    assert_eq!(edge_count(&mut setup), 1);
    error
}

#[test]
fn concurrent_halves_of_a_cycle_cannot_both_commit_in_read_committed() {
    let error = concurrent_halves_of_a_cycle("READ COMMITTED");
    assert_eq!(broken_rule::<()>(Err(error)), IntegrityRule::Cycle);
}

#[test]
fn concurrent_halves_of_a_cycle_cannot_both_commit_in_repeatable_read() {
    let error = concurrent_halves_of_a_cycle("REPEATABLE READ");
    assert!(
        matches!(
            error,
            DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _)
        ),
        "expected a serialization failure, got {error:?}"
    );
}

#[test]
fn step_cannot_move_to_another_task() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let first = task_with_steps(&mut conn, 1);
    let second = task_with_steps(&mut conn, 1);
    let result = diesel::update(&first.steps[0])
        .set(tasker_workflow_steps::task_id.eq(second.task.task_id))
        .execute(&mut conn);
    assert_eq!(broken_rule(result), IntegrityRule::StepMovedToAnotherTask);
}

#[test]
fn step_template_appears_at_most_once_per_task() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let fixture = task_with_steps(&mut conn, 1);
    let result = diesel::insert_into(tasker_workflow_steps::table)
        .values(NewWorkflowStep {
            task_id: fixture.task.task_id,
            named_step_id: fixture.named_steps[0].named_step_id,
            ..NewWorkflowStep::default()
        })
        .execute(&mut conn);
    assert_eq!(broken_rule(result), IntegrityRule::DuplicateStepInTask);
}

fn insert_step_transition(
    conn: &mut PgConnection,
    (step, to_state, sort_key, most_recent): (i64, StepState, i32, bool),
) -> QueryResult<usize> {
    diesel::insert_into(tasker_workflow_step_transitions::table)
        .values(NewWorkflowStepTransition {
            workflow_step_id: step,
            to_state,
            from_state: None,
            metadata: None,
            sort_key,
            most_recent,
        })
        .execute(conn)
}

fn insert_task_transition(
    conn: &mut PgConnection,
    (task, to_state, sort_key, most_recent): (i64, TaskState, i32, bool),
) -> QueryResult<usize> {
    diesel::insert_into(tasker_task_transitions::table)
        .values(NewTaskTransition {
            task_id: task,
            to_state,
            from_state: None,
            metadata: None,
            sort_key,
            most_recent,
        })
        .execute(conn)
}

#[test]
fn step_has_at_most_one_most_recent_transition() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let step = task_with_steps(&mut conn, 1).step_ids()[0];
    insert_step_transition(&mut conn, (step, StepState::InProgress, 1, true)).unwrap();
    let second = insert_step_transition(&mut conn, (step, StepState::Complete, 2, true));
    assert_eq!(
        broken_rule(second),
        IntegrityRule::SecondCurrentStepTransition
    );
    // Earlier rows, not most recent, are unlimited.
    insert_step_transition(&mut conn, (step, StepState::Pending, 0, false)).unwrap();
}

#[test]
fn step_transition_sort_keys_are_unique_per_step() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let steps = task_with_steps(&mut conn, 2).step_ids();
    insert_step_transition(&mut conn, (steps[0], StepState::InProgress, 1, false)).unwrap();
    insert_step_transition(&mut conn, (steps[1], StepState::InProgress, 1, false)).unwrap();
    let duplicate = insert_step_transition(&mut conn, (steps[0], StepState::Complete, 1, true));
    assert_eq!(broken_rule(duplicate), IntegrityRule::DuplicateStepSortKey);
}

#[test]
fn task_has_at_most_one_most_recent_transition_and_unique_sort_keys() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let task = task_with_steps(&mut conn, 0).task.task_id;
    insert_task_transition(&mut conn, (task, TaskState::InProgress, 1, true)).unwrap();
    let second = insert_task_transition(&mut conn, (task, TaskState::Complete, 2, true));
    assert_eq!(
        broken_rule(second),
        IntegrityRule::SecondCurrentTaskTransition
    );
    let duplicate = insert_task_transition(&mut conn, (task, TaskState::Complete, 1, false));
    assert_eq!(broken_rule(duplicate), IntegrityRule::DuplicateTaskSortKey);
}

#[test]
fn unknown_state_cannot_be_stored() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let step = task_with_steps(&mut conn, 1).step_ids()[0];
    let result = diesel::sql_query(
        "INSERT INTO tasker_workflow_step_transitions (workflow_step_id, to_state, sort_key, most_recent) \
         VALUES ($1, $2::tasker_step_state, 1, true)",
    )
    .bind::<BigInt, _>(step)
    .bind::<Text, _>("paused")
    .execute(&mut conn);
    match result {
        Err(DieselError::DatabaseError(_, info)) => assert!(
            info.message()
                .contains("invalid input value for enum tasker_step_state"),
            "{}",
            info.message()
        ),
        other => panic!("an unknown state was accepted: {other:?}"),
    }
}

#[test]
fn identity_hash_is_unique() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let existing = task_with_steps(&mut conn, 0).task;
    let result = diesel::insert_into(tasker_tasks::table)
        .values(NewTask::new(
            existing.named_task_id,
            &existing.identity_hash,
        ))
        .execute(&mut conn);
    assert_eq!(broken_rule(result), IntegrityRule::DuplicateIdentityHash);
}

#[test]
fn counters_cannot_be_negative() {
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let step = task_with_steps(&mut conn, 1).steps.remove(0);
    for column in ["attempts", "retry_limit", "backoff_request_seconds"] {
        let result = diesel::sql_query(format!(
            "UPDATE tasker_workflow_steps SET {column} = -1 WHERE workflow_step_id = $1"
        ))
        .bind::<BigInt, _>(step.workflow_step_id)
        .execute(&mut conn);
        assert!(
            matches!(
                result,
                Err(DieselError::DatabaseError(
                    DatabaseErrorKind::CheckViolation,
                    _
                ))
            ),
            "{column} accepted -1: {result:?}"
        );
    }
}

#[test]
fn a_cycle_through_a_long_chain_is_found_and_named_from_the_new_edge() {
    use tasker_diesel::workflow::{create_task, StepTemplate, TaskRequest, TaskTemplate};
    const STEPS: usize = 10_000;
    let db = TestDatabase::new();
    let mut conn = db.connection();
    let mut template = TaskTemplate::new("integrity", "long_chain", "1.0.0");
    for index in 0..STEPS {
        let mut step = StepTemplate::new(format!("s{index}"));
        if index > 0 {
            step = step.depends_on([format!("s{}", index - 1)]);
        }
        template = template.step(step);
    }
    let created = create_task(&mut conn, &TaskRequest::new(&template)).unwrap();
    let id = |index: usize| created.step(&format!("s{index}")).unwrap().workflow_step_id;
    let edges_before = edge_count(&mut conn);

    // Closing the chain into a ring: named from the new edge on, cut short.
    let error = add_edge(&mut conn, id(STEPS - 1), id(0))
        .map_err(Error::from)
        .unwrap_err();
    let expected = format!(
        "the step graph must stay acyclic: workflow step edge {} -> {} would create a cycle \
         in task {}: {} (s{}) -> {} (s0) -> {} (s1) -> ",
        id(STEPS - 1),
        id(0),
        created.task.task_id,
        id(STEPS - 1),
        STEPS - 1,
        id(0),
        id(1)
    );
    let message = error.to_string();
    assert!(message.starts_with(&expected), "{message}");
    assert!(
        message.contains(&format!("-> ... ({STEPS} steps in all)")),
        "{message}"
    );

    // A shorter cycle, written with an acyclic edge in the same statement:
    // the statement is refused whole, naming the edge that closes the cycle.
    let result = diesel::insert_into(tasker_workflow_step_edges::table)
        .values(
            [(id(0), id(STEPS - 1)), (id(5_000), id(4_998))].map(|(from, to)| {
                NewWorkflowStepEdge {
                    from_step_id: from,
                    to_step_id: to,
                    name: "provides",
                }
            }),
        )
        .execute(&mut conn);
    let error = result.map_err(Error::from).unwrap_err();
    let expected = format!(
        "the step graph must stay acyclic: workflow step edge {} -> {} would create a cycle \
         in task {}: {} (s5000) -> {} (s4998) -> {} (s4999) -> {} (s5000)",
        id(5_000),
        id(4_998),
        created.task.task_id,
        id(5_000),
        id(4_998),
        id(4_999),
        id(5_000)
    );
    assert_eq!(error.to_string(), expected);
    assert_eq!(edge_count(&mut conn), edges_before);

    // A shortcut is no cycle.
    add_edge(&mut conn, id(0), id(STEPS - 1)).unwrap();
    assert_eq!(edge_count(&mut conn), edges_before + 1);
}

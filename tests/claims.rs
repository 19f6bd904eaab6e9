//! Claiming ready steps and reporting results under a claim.

use std::time::Duration;

use serde_json::json;
use tasker_diesel::workflow::*;
use tasker_diesel::{Error, Refusal, StepState, TaskState};

mod support;

#[test]
fn smoke_claim_complete_fail_and_refusals() {
    let db = tasker_diesel::testing::TestDatabase::new();
    let mut conn = db.connection();
    let fixture = support::diamond(&mut conn);
    let task_id = fixture.task.task_id;
    let claimed = claim_ready_steps(
        &mut conn,
        &ClaimRequest::for_tasks(&[task_id], 10, Duration::from_secs(30)),
    )
    .unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let root = &claimed[0];
    assert_eq!(root.attempt, 1);
    complete_step(&mut conn, root.claim(), &json!({"ok": true})).unwrap();
    let again = complete_step(&mut conn, root.claim(), &json!({})).unwrap_err();
    assert!(
        matches!(again, Error::Refused(Refusal::ClaimLost { state: StepState::Complete, .. })),
        "{again:?}"
    );
    let next = claim_ready_steps(&mut conn, &ClaimRequest::any_task(1, Duration::from_secs(30)))
        .unwrap();
    assert_eq!(next.len(), 1);
    fail_step(&mut conn, next[0].claim(), &json!({"boom": 1}), Some(Duration::from_secs(0)))
        .unwrap();
    let illegal = transition_workflow_step(
        &mut conn,
        root.workflow_step_id,
        StepState::Pending,
        TransitionOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(illegal, Error::Refused(Refusal::IllegalStepTransition { .. })), "{illegal}");
    println!("{illegal}");
    let not_finished = finalize_task(&mut conn, task_id, None).unwrap_err();
    println!("{not_finished}");
    let cancelled = cancel_task(&mut conn, task_id, None).unwrap();
    assert_eq!(cancelled.to_state, TaskState::Cancelled);
    assert_eq!(release_expired_claims(&mut conn, None).unwrap(), Vec::<i64>::new());
    let extend = extend_step_claim(&mut conn, root.claim(), Duration::from_secs(5)).unwrap_err();
    println!("{extend}");
    let allowed: bool = diesel::RunQueryDsl::get_result(
        diesel::select(tasker_diesel::functions::tasker_step_transition_allowed(
            StepState::Pending,
            StepState::InProgress,
        )),
        &mut conn,
    )
    .unwrap();
    assert!(allowed);
    let invalid = claim_ready_steps(&mut conn, &ClaimRequest::any_task(0, Duration::from_secs(1)))
        .unwrap_err();
    println!("{invalid}");
}

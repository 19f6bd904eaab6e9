//! Checks that hold whatever the operation: histories are walks of their state machine, appended rows, what finalizing and reports must do.

use super::*;

pub(super) fn fail(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

/// A call's result: its value, or the refusal; any other error fails the case.
pub(super) fn outcome<T: Debug>(
    what: &str,
    result: tasker_diesel::Result<T>,
) -> Result<Result<T, Refusal>, TestCaseError> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(Error::Refused(refusal)) => Ok(Err(refusal)),
        Err(other) => Err(fail(format!("{what}: unexpected error: {other}"))),
    }
}

/// `clock_timestamp()` in UTC: the moment of the read, not the transaction's.
pub(super) fn clock(conn: &mut PgConnection) -> NaiveDateTime {
    diesel::select(diesel::dsl::sql::<Timestamp>(
        "clock_timestamp() AT TIME ZONE 'UTC'",
    ))
    .get_result(conn)
    .expect("clock_timestamp")
}

pub(super) fn seconds(n: u32) -> StdDuration {
    StdDuration::from_secs(u64::from(n))
}

/// The instants a call made between the clock reads `before` and `after` may
/// have seen as `now()` that matter to readiness: `before` and every
/// `next_retry_at` in `(before, after]` (readiness only changes there).
pub(super) fn candidate_times(
    rows: &[StepReadinessStatus],
    before: NaiveDateTime,
    after: NaiveDateTime,
) -> Vec<NaiveDateTime> {
    let mut times = vec![before];
    times.extend(
        rows.iter()
            .filter_map(|row| row.next_retry_at)
            .filter(|&at| at > before && at <= after),
    );
    times.sort_unstable();
    times.dedup();
    times
}

/// Each history is a walk of its state machine from `pending`: `from_state`
/// is the previous `to_state` (NULL first), every move allowed, `sort_key`
/// 1, 2, 3, ..., ids and times in the same order, and exactly one
/// `most_recent`, the last (none without rows).
pub(super) fn check_walk<M: Move>(
    label: &str,
    history: &[M],
    allowed: fn(M::State, M::State) -> bool,
) -> Result<(), TestCaseError> {
    let mut state = M::State::default();
    let mut previous: Option<&M> = None;
    for (position, transition) in history.iter().enumerate() {
        let expected_from = previous.map(Move::to);
        prop_assert_eq!(
            transition.from(),
            expected_from,
            "{}: transition {} (sort_key {}) has from_state {:?} after {:?}",
            label,
            transition.id(),
            transition.sort_key(),
            transition.from(),
            expected_from
        );
        prop_assert!(
            allowed(state, transition.to()),
            "{}: illegal move {} -> {} (transition {})",
            label,
            state,
            transition.to(),
            transition.id()
        );
        prop_assert_eq!(
            transition.sort_key(),
            position as i32 + 1,
            "{}: sort_keys {:?}",
            label,
            history.iter().map(Move::sort_key).collect::<Vec<_>>()
        );
        prop_assert_eq!(
            transition.most_recent(),
            position + 1 == history.len(),
            "{}: most_recent flags {:?}",
            label,
            history.iter().map(Move::most_recent).collect::<Vec<_>>()
        );
        if let Some(previous) = previous {
            prop_assert!(
                transition.id() > previous.id() && transition.created_at() >= previous.created_at(),
                "{}: transition {} at {} follows transition {} at {}",
                label,
                transition.id(),
                transition.created_at(),
                previous.id(),
                previous.created_at()
            );
        }
        state = transition.to();
        previous = Some(transition);
    }
    Ok(())
}

/// `new` is `old` (up to the most recent flags and `updated_at`) followed by
/// transitions to `states`; returns those.
pub(super) fn appended<'a, M: Move>(
    label: &str,
    old: &[M],
    new: &'a [M],
    states: &[M::State],
) -> Result<&'a [M], TestCaseError> {
    let old_states: Vec<M::State> = old.iter().map(Move::to).collect();
    let new_states: Vec<M::State> = new.iter().map(Move::to).collect();
    prop_assert_eq!(
        new.len(),
        old.len() + states.len(),
        "{}: history {:?} became {:?}, expected {:?} appended",
        label,
        old_states,
        new_states,
        states
    );
    for (before, after) in old.iter().zip(new) {
        prop_assert!(
            same_fixed_part(before, after),
            "{}: an old transition changed: {:?} became {:?}",
            label,
            before,
            after
        );
    }
    let added = &new[old.len()..];
    let added_states: Vec<M::State> = added.iter().map(Move::to).collect();
    prop_assert_eq!(
        &added_states[..],
        states,
        "{}: history {:?} became {:?}",
        label,
        old_states,
        new_states
    );
    Ok(added)
}

/// What `finalize_task` must do, from the task's context and readiness.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Finalized {
    /// Returns the state, after appending these task transitions.
    State(TaskState, Vec<TaskState>),
    Refused(Refusal),
}

pub(super) fn expected_finalize(
    task_id: i64,
    context: &TaskExecutionContext,
    rows: &[&StepReadinessStatus],
) -> Finalized {
    let status = context.status;
    // Finished otherwise: left as it is, whatever the steps' context says.
    if matches!(status, TaskState::Cancelled | TaskState::ResolvedManually) {
        return Finalized::State(status, Vec::new());
    }
    let walk = |path: Vec<TaskState>, result: TaskState| {
        let mut from = status;
        for &to in &path {
            if !task_move_allowed(from, to) {
                return Finalized::Refused(Refusal::IllegalTaskTransition { task_id, from, to });
            }
            from = to;
        }
        Finalized::State(result, path)
    };
    match context.execution_status {
        ExecutionStatus::AllComplete => match status {
            TaskState::Complete => Finalized::State(TaskState::Complete, Vec::new()),
            TaskState::Error => walk(
                vec![
                    TaskState::Pending,
                    TaskState::InProgress,
                    TaskState::Complete,
                ],
                TaskState::Complete,
            ),
            TaskState::Pending => walk(
                vec![TaskState::InProgress, TaskState::Complete],
                TaskState::Complete,
            ),
            _ => walk(vec![TaskState::Complete], TaskState::Complete),
        },
        ExecutionStatus::BlockedByFailures if status == TaskState::Error => {
            Finalized::State(TaskState::Error, Vec::new())
        }
        ExecutionStatus::BlockedByFailures
            if !rows
                .iter()
                .any(|row| row.current_state == StepState::Error && row.retry_eligible) =>
        {
            walk(vec![TaskState::Error], TaskState::Error)
        }
        execution_status => Finalized::Refused(Refusal::TaskNotFinished {
            task_id,
            execution_status,
        }),
    }
}

/// Whether a report under a claim must be accepted.
pub(super) enum Verdict {
    Holds,
    Refused(Refusal),
    /// The lease ends between the clock reads around the call.
    HoldsOrRefused(Refusal),
}

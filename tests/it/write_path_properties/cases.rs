//! The generated cases: random templates and operation sequences.

use super::*;

#[derive(Clone, Debug)]
pub(super) struct StepSpec {
    pub(super) retry_limit: i32,
    pub(super) retryable: bool,
    pub(super) skippable: bool,
    /// Bypassed at creation (only skippable steps are).
    pub(super) bypassed: bool,
    /// Indexes of earlier steps of the same task.
    pub(super) parents: Vec<usize>,
}

/// Which earlier claim a report uses: one whose `in_progress` transition is
/// still the step's most recent (when there is one), or any claim so far,
/// most of them stale. Indexes are taken modulo the number of candidates.
#[derive(Clone, Copy, Debug)]
pub(super) enum ClaimPick {
    Current(usize),
    Any(usize),
}

/// One operation; task and step indexes are taken modulo the case's counts.
#[derive(Clone, Debug)]
pub(super) enum Op {
    /// `any_task` when `tasks` is `None`, else `for_tasks`.
    Claim {
        tasks: Option<Vec<usize>>,
        max_steps: u32,
        lease: u32,
    },
    Complete(ClaimPick),
    /// `retry_after` in milliseconds.
    Fail(ClaimPick, Option<u64>),
    /// The new lease in seconds.
    Extend(ClaimPick, u32),
    /// Moves the lease of the claim's step (when in process) into the past.
    ExpireLease(ClaimPick),
    ReleaseExpired(Option<u32>),
    /// Moves every stored timestamp back by this many seconds.
    PassTime(i32),
    Resolve(usize),
    Cancel(usize),
    Finalize(usize),
    /// `transition_task(.., Pending, ..)`, expecting `Error` or not.
    Resume {
        task: usize,
        expect_error: bool,
    },
}

#[derive(Clone, Debug)]
pub(super) struct Case {
    pub(super) tasks: Vec<Vec<StepSpec>>,
    pub(super) ops: Vec<Op>,
}

pub(super) fn step_spec(index: usize, density: f64) -> impl Strategy<Value = StepSpec> {
    (
        1i32..=3,
        prop::bool::weighted(0.75),
        prop::bool::weighted(0.3),
        any::<bool>(),
        prop::collection::vec(prop::bool::weighted(density), index),
    )
        .prop_map(
            |(retry_limit, retryable, skippable, bypass, parent_flags)| StepSpec {
                retry_limit,
                retryable,
                skippable,
                bypassed: skippable && bypass,
                parents: parent_flags
                    .iter()
                    .enumerate()
                    .filter_map(|(parent, &present)| present.then_some(parent))
                    .collect(),
            },
        )
}

pub(super) fn task_spec() -> impl Strategy<Value = Vec<StepSpec>> {
    (1..=MAX_STEPS, 0.0..=0.6f64).prop_flat_map(|(step_count, density)| {
        (0..step_count)
            .map(|index| step_spec(index, density))
            .collect::<Vec<_>>()
    })
}

pub(super) fn pick() -> impl Strategy<Value = usize> {
    0usize..24
}

pub(super) fn claim_pick() -> impl Strategy<Value = ClaimPick> {
    prop_oneof![
        8 => pick().prop_map(ClaimPick::Current),
        1 => pick().prop_map(ClaimPick::Any),
    ]
}

pub(super) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        16 => (
            prop::option::weighted(0.35, prop::collection::vec(pick(), 0..=3)),
            1u32..=4,
            prop::sample::select(LEASES.to_vec()),
        )
            .prop_map(|(tasks, max_steps, lease)| Op::Claim {
                tasks,
                max_steps,
                lease
            }),
        13 => claim_pick().prop_map(Op::Complete),
        7 => (
            claim_pick(),
            prop::option::weighted(0.5, prop::sample::select(RETRY_AFTER_MS.to_vec())),
        )
            .prop_map(|(claim, retry_after)| Op::Fail(claim, retry_after)),
        3 => (claim_pick(), prop::sample::select(LEASES.to_vec()))
            .prop_map(|(claim, lease)| Op::Extend(claim, lease)),
        2 => claim_pick().prop_map(Op::ExpireLease),
        3 => prop::option::of(1u32..=3).prop_map(Op::ReleaseExpired),
        7 => prop::sample::select(TIME_PASSING.to_vec()).prop_map(Op::PassTime),
        2 => pick().prop_map(Op::Resolve),
        1 => pick().prop_map(Op::Cancel),
        5 => pick().prop_map(Op::Finalize),
        2 => (pick(), any::<bool>())
            .prop_map(|(task, expect_error)| Op::Resume { task, expect_error }),
    ]
}

pub(super) fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(task_spec(), 1..=MAX_TASKS),
        prop::collection::vec(op(), 1..=MAX_OPERATIONS),
    )
        .prop_map(|(tasks, ops)| Case { tasks, ops })
}

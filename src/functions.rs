//! Declarations of the schema's pure scalar SQL functions, for use in Diesel
//! queries. The set-returning ones are called through their row types
//! (see [`crate::readiness`]), and the ones that write (finalizing, leases,
//! claim expiry, the wake-up, rebuilds) only through their checked wrappers in
//! [`crate::workflow`] and [`crate::readiness`], so they are not exported.

use diesel::define_sql_function;

use crate::schema::sql_types::{TaskerStepState, TaskerTaskState};

define_sql_function! {
    /// Whether the step state machine allows a move from `from_state` to
    /// `to_state`.
    fn tasker_step_transition_allowed(from_state: TaskerStepState, to_state: TaskerStepState) -> Bool;
}

define_sql_function! {
    /// Whether the task state machine allows a move from `from_state` to
    /// `to_state`.
    fn tasker_task_transition_allowed(from_state: TaskerTaskState, to_state: TaskerTaskState) -> Bool;
}

/// The writing functions, called by their wrappers only.
mod write {
    use diesel::define_sql_function;
    use diesel::sql_types::{Array, BigInt, Integer, Jsonb, Nullable};

    use crate::schema::sql_types::TaskerTaskState;

    define_sql_function! {
        /// Finalizes a task from its execution context and returns its state.
        fn tasker_finalize_task(task_id: BigInt, metadata: Nullable<Jsonb>) -> TaskerTaskState;
    }

    define_sql_function! {
        /// Extends a claim that still holds; returns the new `claimed_until`.
        fn tasker_extend_step_claim(workflow_step_id: BigInt, claim_id: BigInt, lease_seconds: Integer) -> Timestamp;
    }

    define_sql_function! {
        /// Moves steps whose claim expired to `error`; one row per released step.
        fn tasker_release_expired_claims(max_steps: Nullable<Integer>) -> BigInt;
    }

    define_sql_function! {
        /// LISTENs for runnable steps; seconds until work can next be claimed
        /// (0: now, NULL: nothing waits).
        fn tasker_listen_for_work() -> Nullable<Double>;
    }

    define_sql_function! {
        /// Rebuilds the maintained readiness of the given tasks (NULL: all) from
        /// their history; returns the number of corrections.
        fn tasker_rebuild_readiness(task_ids: Nullable<Array<BigInt>>) -> BigInt;
    }
}

pub(crate) use write::{
    tasker_extend_step_claim, tasker_finalize_task, tasker_listen_for_work,
    tasker_rebuild_readiness, tasker_release_expired_claims,
};

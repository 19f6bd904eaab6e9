DROP TRIGGER tasker_tasks_count_delete ON tasker_tasks;
DROP TRIGGER tasker_tasks_count_insert ON tasker_tasks;
DROP TRIGGER tasker_workflow_steps_maintain_update ON tasker_workflow_steps;
DROP TRIGGER tasker_workflow_steps_count_delete ON tasker_workflow_steps;
DROP TRIGGER tasker_workflow_steps_count_insert ON tasker_workflow_steps;
DROP TRIGGER tasker_workflow_step_edges_apply_delete ON tasker_workflow_step_edges;
DROP TRIGGER tasker_workflow_step_edges_apply_update ON tasker_workflow_step_edges;
DROP TRIGGER tasker_workflow_step_edges_apply_insert ON tasker_workflow_step_edges;
DROP TRIGGER tasker_workflow_step_transitions_maintain_delete ON tasker_workflow_step_transitions;
DROP TRIGGER tasker_workflow_step_transitions_maintain_update ON tasker_workflow_step_transitions;
DROP TRIGGER tasker_workflow_step_transitions_maintain_insert ON tasker_workflow_step_transitions;
DROP FUNCTION tasker_tasks_deleted();
DROP FUNCTION tasker_tasks_inserted();
DROP FUNCTION tasker_steps_updated();
DROP FUNCTION tasker_steps_inserted_or_deleted();
DROP FUNCTION tasker_apply_step_changes(tasker_step_change[]);
DROP TYPE tasker_step_change;
DROP FUNCTION tasker_add_step_counts(bigint[], integer[], tasker_step_state[], boolean[], boolean[]);
DROP FUNCTION tasker_step_edges_changed();
DROP FUNCTION tasker_refresh_parent_counts(bigint[]);
DROP FUNCTION tasker_step_transitions_changed();
DROP FUNCTION tasker_refresh_step_states(bigint[]);
DROP FUNCTION tasker_step_parent_counts(bigint);
DROP FUNCTION tasker_step_state_from_history(bigint);
DROP FUNCTION tasker_step_state_after(tasker_step_state, timestamp);
DROP FUNCTION tasker_task_step_counts_of(bigint);
DROP FUNCTION tasker_task_step_recount(bigint);
DROP FUNCTION tasker_step_buckets(tasker_step_state, boolean, boolean);
DROP TABLE tasker_task_step_count_stripes;
DROP TABLE tasker_task_step_counts;
DROP INDEX tasker_workflow_steps_runnable_idx;
ALTER TABLE tasker_workflow_steps
    DROP COLUMN runnable,
    DROP COLUMN next_retry_at,
    DROP COLUMN retry_eligible,
    DROP COLUMN completed_parents,
    DROP COLUMN total_parents,
    DROP COLUMN last_failure_at,
    DROP COLUMN current_state;
DROP FUNCTION tasker_step_runnable(tasker_step_state, boolean, boolean, integer, integer, integer, integer, boolean);
DROP FUNCTION tasker_step_next_retry_at(integer, timestamp, integer, timestamp);
DROP FUNCTION tasker_step_retry_eligible(integer, integer, boolean);
DROP INDEX tasker_workflow_steps_claimed_until_idx;
ALTER TABLE tasker_workflow_steps
    DROP COLUMN claimed_until;

DROP TRIGGER tasker_workflow_step_edges_check_update ON tasker_workflow_step_edges;
DROP TRIGGER tasker_workflow_step_edges_check_insert ON tasker_workflow_step_edges;
DROP FUNCTION tasker_check_step_edges();
DROP FUNCTION tasker_steps_below(bigint[]);
DROP FUNCTION tasker_topological_levels(bigint[], bigint[], bigint[]);
DROP TRIGGER tasker_workflow_steps_task_id_fixed ON tasker_workflow_steps;
DROP FUNCTION tasker_reject_step_task_change();

-- What each Tasker table and column holds, and updated_at maintenance on every table.
-- Apart from the tables so that a database adopted from the Rails engine, whose tables
-- exist already and are brought to the shape of the previous migration in place
-- (tasker_diesel::adoption), gets them from this migration like any other.

COMMENT ON TABLE tasker_task_namespaces IS
    'Namespaces that group task templates (for example one per team or domain).';
COMMENT ON TABLE tasker_dependent_systems IS
    'External systems that workflow steps talk to.';
COMMENT ON TABLE tasker_named_tasks IS
    'Task templates: a named, versioned workflow definition within a namespace.';
COMMENT ON COLUMN tasker_named_tasks.version IS
    'Template version (semantic version string); namespace, name and version identify a template.';
COMMENT ON COLUMN tasker_named_tasks.configuration IS
    'Free-form template configuration owned by the application.';
COMMENT ON TABLE tasker_named_steps IS
    'Step templates: a named unit of work against one dependent system.';
COMMENT ON TABLE tasker_named_tasks_named_steps IS
    'Which step templates a task template has, with the defaults its step instances get.';
COMMENT ON COLUMN tasker_named_tasks_named_steps.skippable IS
    'Whether instances of this step may be skipped (bypassed) by a task.';
COMMENT ON COLUMN tasker_named_tasks_named_steps.default_retryable IS
    'Initial `retryable` of the step instances created from this template.';
COMMENT ON COLUMN tasker_named_tasks_named_steps.default_retry_limit IS
    'Initial `retry_limit` of the step instances created from this template.';
COMMENT ON TABLE tasker_dependent_system_object_maps IS
    'Maps an object id in one dependent system to the id of the same object in another.';
COMMENT ON COLUMN tasker_dependent_system_object_maps.remote_id_one IS
    'The object''s id in dependent system one.';
COMMENT ON COLUMN tasker_dependent_system_object_maps.remote_id_two IS
    'The object''s id in dependent system two.';
COMMENT ON TABLE tasker_annotation_types IS
    'Kinds of annotation that can be attached to tasks.';
COMMENT ON TABLE tasker_tasks IS
    'Task instances: one run of a task template. Its state lives in tasker_task_transitions.';
COMMENT ON COLUMN tasker_tasks.complete IS
    'True once the task has been finalized as complete.';
COMMENT ON COLUMN tasker_tasks.requested_at IS
    'When the task was requested (UTC).';
COMMENT ON COLUMN tasker_tasks.initiator IS
    'Who or what asked for the task (a user, a service).';
COMMENT ON COLUMN tasker_tasks.source_system IS
    'The system the request came from.';
COMMENT ON COLUMN tasker_tasks.reason IS
    'Why the task was requested.';
COMMENT ON COLUMN tasker_tasks.bypass_steps IS
    'Names of skippable steps this task bypasses (JSON array).';
COMMENT ON COLUMN tasker_tasks.context IS
    'The task''s input: the JSON its steps work on.';
COMMENT ON COLUMN tasker_tasks.identity_hash IS
    'Hash of what makes a request unique; creating the same request twice finds the same task.';
COMMENT ON TABLE tasker_workflow_steps IS
    'Step instances of a task. Dependencies are in tasker_workflow_step_edges, state in tasker_workflow_step_transitions.';
COMMENT ON COLUMN tasker_workflow_steps.retryable IS
    'False: the step gets its first attempt but no retry after a failure.';
COMMENT ON COLUMN tasker_workflow_steps.retry_limit IS
    'Attempts allowed in all; NULL is read as 3.';
COMMENT ON COLUMN tasker_workflow_steps.in_process IS
    'True while a worker is executing the step.';
COMMENT ON COLUMN tasker_workflow_steps.processed IS
    'True once the step has finished for good; a processed step is never run again.';
COMMENT ON COLUMN tasker_workflow_steps.processed_at IS
    'When the step was processed (UTC).';
COMMENT ON COLUMN tasker_workflow_steps.attempts IS
    'Executions started so far; NULL is read as 0.';
COMMENT ON COLUMN tasker_workflow_steps.last_attempted_at IS
    'When the latest execution started (UTC).';
COMMENT ON COLUMN tasker_workflow_steps.backoff_request_seconds IS
    'Delay the step asked for (for example from Retry-After), counted from last_attempted_at.';
COMMENT ON COLUMN tasker_workflow_steps.inputs IS
    'Step-specific input, beside the task context.';
COMMENT ON COLUMN tasker_workflow_steps.results IS
    'What the step produced.';
COMMENT ON COLUMN tasker_workflow_steps.skippable IS
    'Whether the task may bypass this step.';
COMMENT ON TABLE tasker_workflow_step_edges IS
    'Dependencies between the steps of one task: to_step_id may run only after from_step_id. The edges form a DAG.';
COMMENT ON COLUMN tasker_workflow_step_edges.from_step_id IS
    'The parent: the step that must finish first.';
COMMENT ON COLUMN tasker_workflow_step_edges.to_step_id IS
    'The child: the step that waits for the parent.';
COMMENT ON COLUMN tasker_workflow_step_edges.name IS
    'Label of the dependency (for example ''provides'').';
COMMENT ON TABLE tasker_workflow_step_transitions IS
    'State history of workflow steps. The row with most_recent = true holds the step''s current state.';
COMMENT ON COLUMN tasker_workflow_step_transitions.to_state IS
    'The state the step entered.';
COMMENT ON COLUMN tasker_workflow_step_transitions.from_state IS
    'The state the step left; NULL for its first transition.';
COMMENT ON COLUMN tasker_workflow_step_transitions.metadata IS
    'Context of the transition (error details, worker, ...).';
COMMENT ON COLUMN tasker_workflow_step_transitions.sort_key IS
    'Position of the transition in the step''s history, increasing.';
COMMENT ON COLUMN tasker_workflow_step_transitions.most_recent IS
    'True for the step''s latest transition only (at most one per step).';
COMMENT ON TABLE tasker_task_transitions IS
    'State history of tasks. The row with most_recent = true holds the task''s current state.';
COMMENT ON COLUMN tasker_task_transitions.to_state IS
    'The state the task entered.';
COMMENT ON COLUMN tasker_task_transitions.from_state IS
    'The state the task left; NULL for its first transition.';
COMMENT ON COLUMN tasker_task_transitions.metadata IS
    'Context of the transition.';
COMMENT ON COLUMN tasker_task_transitions.sort_key IS
    'Position of the transition in the task''s history, increasing.';
COMMENT ON COLUMN tasker_task_transitions.most_recent IS
    'True for the task''s latest transition only (at most one per task).';
COMMENT ON TABLE tasker_task_annotations IS
    'Typed JSON notes attached to tasks.';

-- updated_at maintenance on every table ----------------------------------------

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'tasker_task_namespaces', 'tasker_dependent_systems', 'tasker_named_tasks',
        'tasker_named_steps', 'tasker_named_tasks_named_steps',
        'tasker_dependent_system_object_maps', 'tasker_annotation_types', 'tasker_tasks',
        'tasker_workflow_steps', 'tasker_workflow_step_edges',
        'tasker_workflow_step_transitions', 'tasker_task_transitions', 'tasker_task_annotations'
    ] LOOP
        EXECUTE format(
            'CREATE TRIGGER %I BEFORE UPDATE ON %I FOR EACH ROW EXECUTE FUNCTION tasker_set_updated_at()',
            t || '_updated_at', t);
    END LOOP;
END;
$$;

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
        EXECUTE format('DROP TRIGGER %I ON %I', t || '_updated_at', t);
    END LOOP;
END;
$$;

COMMENT ON TABLE tasker_task_annotations IS NULL;
COMMENT ON COLUMN tasker_task_transitions.most_recent IS NULL;
COMMENT ON COLUMN tasker_task_transitions.sort_key IS NULL;
COMMENT ON COLUMN tasker_task_transitions.metadata IS NULL;
COMMENT ON COLUMN tasker_task_transitions.from_state IS NULL;
COMMENT ON COLUMN tasker_task_transitions.to_state IS NULL;
COMMENT ON TABLE tasker_task_transitions IS NULL;
COMMENT ON COLUMN tasker_workflow_step_transitions.most_recent IS NULL;
COMMENT ON COLUMN tasker_workflow_step_transitions.sort_key IS NULL;
COMMENT ON COLUMN tasker_workflow_step_transitions.metadata IS NULL;
COMMENT ON COLUMN tasker_workflow_step_transitions.from_state IS NULL;
COMMENT ON COLUMN tasker_workflow_step_transitions.to_state IS NULL;
COMMENT ON TABLE tasker_workflow_step_transitions IS NULL;
COMMENT ON COLUMN tasker_workflow_step_edges.name IS NULL;
COMMENT ON COLUMN tasker_workflow_step_edges.to_step_id IS NULL;
COMMENT ON COLUMN tasker_workflow_step_edges.from_step_id IS NULL;
COMMENT ON TABLE tasker_workflow_step_edges IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.skippable IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.results IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.inputs IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.backoff_request_seconds IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.last_attempted_at IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.attempts IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.processed_at IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.processed IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.in_process IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.retry_limit IS NULL;
COMMENT ON COLUMN tasker_workflow_steps.retryable IS NULL;
COMMENT ON TABLE tasker_workflow_steps IS NULL;
COMMENT ON COLUMN tasker_tasks.identity_hash IS NULL;
COMMENT ON COLUMN tasker_tasks.context IS NULL;
COMMENT ON COLUMN tasker_tasks.bypass_steps IS NULL;
COMMENT ON COLUMN tasker_tasks.reason IS NULL;
COMMENT ON COLUMN tasker_tasks.source_system IS NULL;
COMMENT ON COLUMN tasker_tasks.initiator IS NULL;
COMMENT ON COLUMN tasker_tasks.requested_at IS NULL;
COMMENT ON COLUMN tasker_tasks.complete IS NULL;
COMMENT ON TABLE tasker_tasks IS NULL;
COMMENT ON TABLE tasker_annotation_types IS NULL;
COMMENT ON COLUMN tasker_dependent_system_object_maps.remote_id_two IS NULL;
COMMENT ON COLUMN tasker_dependent_system_object_maps.remote_id_one IS NULL;
COMMENT ON TABLE tasker_dependent_system_object_maps IS NULL;
COMMENT ON COLUMN tasker_named_tasks_named_steps.default_retry_limit IS NULL;
COMMENT ON COLUMN tasker_named_tasks_named_steps.default_retryable IS NULL;
COMMENT ON COLUMN tasker_named_tasks_named_steps.skippable IS NULL;
COMMENT ON TABLE tasker_named_tasks_named_steps IS NULL;
COMMENT ON TABLE tasker_named_steps IS NULL;
COMMENT ON COLUMN tasker_named_tasks.configuration IS NULL;
COMMENT ON COLUMN tasker_named_tasks.version IS NULL;
COMMENT ON TABLE tasker_named_tasks IS NULL;
COMMENT ON TABLE tasker_dependent_systems IS NULL;
COMMENT ON TABLE tasker_task_namespaces IS NULL;

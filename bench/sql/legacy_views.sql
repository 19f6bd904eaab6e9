-- The legacy baseline of the benchmark (workload L). NOT shipped in the
-- migrations: the benchmark creates these views in its own database after migrating it,
-- and tests/legacy_views.rs checks them against the crate's functions.
--
-- They are the design this crate replaces, the one of the original Tasker (Rails) engine:
-- views that compute step readiness and task execution context for every task at once,
-- which a caller narrows with `WHERE task_id = $1`. Current states come from a
-- DISTINCT ON over the whole transition table, parent counts from a GROUP BY over all
-- edges joined to their parents' current states, the last failure from another
-- DISTINCT ON, and the context view aggregates the readiness view by task. A filter on
-- task_id reaches the steps and tasks tables, but not those derived tables, which are
-- computed over everything the database holds: the cost grows with history, which is
-- the point of the comparison.
--
-- They give the same answers as get_step_readiness_status(task_id) and
-- get_task_execution_context(task_id), with the same columns,
-- names, types and order as tasker_step_readiness_row and
-- tasker_task_execution_context_row. Written plainly, neither pessimized nor tuned.
-- Rerunnable (the views are dropped and created again).

-- Dropped first: an older file's views may have other column types.
DROP VIEW IF EXISTS bench_legacy_task_execution_context;
DROP VIEW IF EXISTS bench_legacy_step_readiness;

CREATE OR REPLACE VIEW bench_legacy_step_readiness AS
SELECT
    ws.workflow_step_id,
    ws.task_id,
    ws.named_step_id,
    ns.name::text AS name,
    coalesce(current_state.to_state, 'pending')::text AS current_state,
    coalesce(parents.total_parents, 0) = coalesce(parents.completed_parents, 0)
        AS dependencies_satisfied,
    coalesce(ws.attempts, 0) < coalesce(ws.retry_limit, 3)
        AND (ws.retryable OR coalesce(ws.attempts, 0) = 0) AS retry_eligible,
    coalesce(current_state.to_state, 'pending') IN ('pending', 'error')
        AND NOT ws.processed
        AND NOT ws.in_process
        AND coalesce(parents.total_parents, 0) = coalesce(parents.completed_parents, 0)
        AND coalesce(ws.attempts, 0) < coalesce(ws.retry_limit, 3)
        AND (ws.retryable OR coalesce(ws.attempts, 0) = 0)
        AND (
            ws.backoff_request_seconds IS NULL
            OR ws.last_attempted_at IS NULL
            OR ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second'
                <= now() AT TIME ZONE 'UTC'
        )
        AND (
            last_failure.created_at IS NULL
            OR last_failure.created_at
                + least(30, 1 << least(coalesce(ws.attempts, 1), 5)) * interval '1 second'
                <= now() AT TIME ZONE 'UTC'
        ) AS ready_for_execution,
    last_failure.created_at AS last_failure_at,
    greatest(
        ws.last_attempted_at + ws.backoff_request_seconds * interval '1 second',
        last_failure.created_at
            + least(30, 1 << least(coalesce(ws.attempts, 1), 5)) * interval '1 second'
    ) AS next_retry_at,
    coalesce(parents.total_parents, 0)::integer AS total_parents,
    coalesce(parents.completed_parents, 0)::integer AS completed_parents,
    coalesce(ws.attempts, 0) AS attempts,
    coalesce(ws.retry_limit, 3) AS retry_limit,
    ws.backoff_request_seconds,
    ws.last_attempted_at
FROM tasker_workflow_steps AS ws
JOIN tasker_named_steps AS ns ON ns.named_step_id = ws.named_step_id
-- Current state of every step.
LEFT JOIN (
    SELECT DISTINCT ON (workflow_step_id) workflow_step_id, to_state
    FROM tasker_workflow_step_transitions
    WHERE most_recent
    ORDER BY workflow_step_id, sort_key DESC
) AS current_state ON current_state.workflow_step_id = ws.workflow_step_id
-- Parents of every step that has any, and how many of them are done.
LEFT JOIN (
    SELECT
        edge.to_step_id,
        count(*) AS total_parents,
        count(*) FILTER (
            WHERE parent_state.to_state IN ('complete', 'resolved_manually')
        ) AS completed_parents
    FROM tasker_workflow_step_edges AS edge
    LEFT JOIN tasker_workflow_step_transitions AS parent_state
        ON parent_state.workflow_step_id = edge.from_step_id
       AND parent_state.most_recent
    GROUP BY edge.to_step_id
) AS parents ON parents.to_step_id = ws.workflow_step_id
-- When every step that is in error now failed: its current transition, if to error.
LEFT JOIN (
    SELECT DISTINCT ON (workflow_step_id) workflow_step_id, created_at
    FROM tasker_workflow_step_transitions
    WHERE most_recent AND to_state = 'error'
    ORDER BY workflow_step_id, sort_key DESC
) AS last_failure ON last_failure.workflow_step_id = ws.workflow_step_id;

COMMENT ON VIEW bench_legacy_step_readiness IS
    'Benchmark baseline only (not part of the migrations): readiness of every step of every task, the legacy view way; same rows as get_step_readiness_status(task_id).';

CREATE OR REPLACE VIEW bench_legacy_task_execution_context AS
SELECT
    counts.task_id,
    counts.named_task_id,
    counts.status::text AS status,
    counts.total_steps,
    counts.pending_steps,
    counts.in_progress_steps,
    counts.completed_steps,
    counts.failed_steps,
    counts.ready_steps,
    (CASE
        WHEN counts.ready_steps > 0 THEN 'has_ready_steps'
        WHEN counts.in_progress_steps > 0 THEN 'processing'
        WHEN counts.permanently_failed_steps > 0 THEN 'blocked_by_failures'
        WHEN counts.total_steps > 0
             AND counts.completed_steps + counts.cancelled_steps = counts.total_steps
            THEN 'all_complete'
        ELSE 'waiting_for_dependencies'
    END)::tasker_execution_status::text AS execution_status,
    (CASE
        WHEN counts.ready_steps > 0 THEN 'execute_ready_steps'
        WHEN counts.in_progress_steps > 0 THEN 'wait_for_completion'
        WHEN counts.permanently_failed_steps > 0 THEN 'handle_failures'
        WHEN counts.total_steps > 0
             AND counts.completed_steps + counts.cancelled_steps = counts.total_steps
            THEN 'finalize_task'
        ELSE 'wait_for_dependencies'
    END)::tasker_recommended_action::text AS recommended_action,
    CASE
        WHEN counts.total_steps = 0 THEN 0.00
        ELSE round(100.0 * counts.completed_steps / counts.total_steps, 2)
    END AS completion_percentage,
    (CASE
        WHEN counts.failed_steps = 0 THEN 'healthy'
        WHEN counts.permanently_failed_steps > 0 AND counts.ready_steps = 0 THEN 'blocked'
        ELSE 'recovering'
    END)::tasker_health_status::text AS health_status
FROM (
    SELECT
        task.task_id,
        task.named_task_id,
        coalesce(task_state.to_state, 'pending') AS status,
        count(step.workflow_step_id) AS total_steps,
        count(*) FILTER (WHERE step.current_state = 'pending') AS pending_steps,
        count(*) FILTER (WHERE step.current_state = 'in_progress') AS in_progress_steps,
        count(*) FILTER (
            WHERE step.current_state IN ('complete', 'resolved_manually')
        ) AS completed_steps,
        count(*) FILTER (WHERE step.current_state = 'error') AS failed_steps,
        count(*) FILTER (WHERE step.current_state = 'cancelled') AS cancelled_steps,
        count(*) FILTER (WHERE step.ready_for_execution) AS ready_steps,
        count(*) FILTER (
            WHERE step.current_state = 'error' AND NOT step.retry_eligible
        ) AS permanently_failed_steps
    FROM tasker_tasks AS task
    -- Current state of every task.
    LEFT JOIN (
        SELECT DISTINCT ON (task_id) task_id, to_state
        FROM tasker_task_transitions
        WHERE most_recent
        ORDER BY task_id, sort_key DESC
    ) AS task_state ON task_state.task_id = task.task_id
    LEFT JOIN bench_legacy_step_readiness AS step ON step.task_id = task.task_id
    GROUP BY task.task_id, task.named_task_id, task_state.to_state
) AS counts;

COMMENT ON VIEW bench_legacy_task_execution_context IS
    'Benchmark baseline only (not part of the migrations): execution context of every task, aggregated from bench_legacy_step_readiness, the legacy view way; same row as get_task_execution_context(task_id).';

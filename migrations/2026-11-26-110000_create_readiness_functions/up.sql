-- Readiness and execution-context functions, dependency levels and health counts.
--
-- Every rule is written once: the readiness rules in tasker_step_readiness (section 3),
-- the context rules in get_task_execution_contexts_batch (section 4), which reads
-- readiness through tasker_step_readiness. The other functions only pass ids and order.
--
-- Plans. All functions are plain `LANGUAGE sql`, STABLE, not STRICT, with no SET clause
-- and one SELECT each, so PostgreSQL inlines them into the calling statement (no
-- "Function Scan" in EXPLAIN): there is no PL/pgSQL plan cache to go stale. The caller's
-- own prepared statement does switch to a generic plan after five runs (Diesel keeps
-- statements prepared), and a generic plan does not know how many ids it will get. So
-- the queries leave the planner no choice that could scan: the given ids select rows by
-- index, and every lookup from there ("the current transition of this step", "the name
-- of this step", "the parents of this step") is a scalar subquery or a LATERAL
-- subquery with LIMIT 1 or an aggregate, which PostgreSQL cannot flatten into a hash
-- join and must run as an index probe per row. (LIMIT 1 drops nothing: a unique index
-- allows one current transition per step and per task.) The same nested loops come out with or without the values, on the 6th
-- call as on the 2,000th; tests/plans.rs checks both plan modes.
--
-- Time is `now() AT TIME ZONE 'UTC'`, the transaction's start in UTC, whatever the
-- session's TimeZone.

CREATE TYPE tasker_execution_status AS ENUM (
    'has_ready_steps',
    'processing',
    'blocked_by_failures',
    'all_complete',
    'waiting_for_dependencies'
);
COMMENT ON TYPE tasker_execution_status IS
    'What a task is doing, as get_task_execution_context reports it.';

CREATE TYPE tasker_recommended_action AS ENUM (
    'execute_ready_steps',
    'wait_for_completion',
    'handle_failures',
    'finalize_task',
    'wait_for_dependencies'
);
COMMENT ON TYPE tasker_recommended_action IS
    'What the orchestrator should do next with a task; one per execution status.';

CREATE TYPE tasker_health_status AS ENUM ('healthy', 'recovering', 'blocked');
COMMENT ON TYPE tasker_health_status IS
    'healthy: no step in error; blocked: a step failed for good and nothing is ready; recovering: otherwise.';

CREATE TYPE tasker_step_readiness_row AS (
    workflow_step_id bigint,
    task_id bigint,
    named_step_id integer,
    name text,
    -- text, as the original design has it (a label of tasker_step_state).
    current_state text,
    dependencies_satisfied boolean,
    retry_eligible boolean,
    ready_for_execution boolean,
    last_failure_at timestamp,
    next_retry_at timestamp,
    total_parents integer,
    completed_parents integer,
    attempts integer,
    retry_limit integer,
    backoff_request_seconds integer,
    last_attempted_at timestamp
);
COMMENT ON TYPE tasker_step_readiness_row IS
    'A row of get_step_readiness_status and its companions: one step, its state, whether its parents are done, whether it may be retried and whether it may run now.';

CREATE FUNCTION tasker_step_readiness(task_ids bigint[], step_ids bigint[])
RETURNS SETOF tasker_step_readiness_row
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT
        step.workflow_step_id,
        step.task_id,
        step.named_step_id,
        (SELECT named.name FROM tasker_named_steps AS named
          WHERE named.named_step_id = step.named_step_id)::text,
        state.current_state,
        parents.total = parents.completed,
        retry.eligible,
        state.current_state IN ('pending', 'error')
            AND NOT step.processed
            AND NOT step.in_process
            AND parents.total = parents.completed
            AND retry.eligible
            AND (gate.next_retry_at IS NULL
                 OR gate.next_retry_at <= (now() AT TIME ZONE 'UTC')),
        state.last_failure_at,
        gate.next_retry_at,
        parents.total,
        parents.completed,
        retry.attempts,
        retry.retry_limit,
        step.backoff_request_seconds,
        step.last_attempted_at
    FROM tasker_workflow_steps AS step
    -- Rules 1 and 5: the current transition, if any.
    LEFT JOIN LATERAL (
        SELECT transition.to_state, transition.created_at
        FROM tasker_workflow_step_transitions AS transition
        WHERE transition.workflow_step_id = step.workflow_step_id AND transition.most_recent
        LIMIT 1
    ) AS latest ON true
    CROSS JOIN LATERAL (
        SELECT coalesce(latest.to_state, 'pending') AS current_state,
               CASE WHEN latest.to_state = 'error' THEN latest.created_at END AS last_failure_at
    ) AS state
    -- Rule 2: every parent, whichever steps were asked for.
    CROSS JOIN LATERAL (
        SELECT count(*)::integer AS total,
               (count(*) FILTER (
                   WHERE parent.to_state IN ('complete', 'resolved_manually')))::integer AS completed
        FROM tasker_workflow_step_edges AS edge
        LEFT JOIN LATERAL (
            SELECT transition.to_state
            FROM tasker_workflow_step_transitions AS transition
            WHERE transition.workflow_step_id = edge.from_step_id AND transition.most_recent
            LIMIT 1
        ) AS parent ON true
        WHERE edge.to_step_id = step.workflow_step_id
    ) AS parents
    -- Rules 3 and 4.
    CROSS JOIN LATERAL (
        SELECT coalesce(step.attempts, 0) AS attempts,
               coalesce(step.retry_limit, 3) AS retry_limit
    ) AS counted
    CROSS JOIN LATERAL (
        SELECT counted.attempts,
               counted.retry_limit,
               counted.attempts < counted.retry_limit
                   AND (step.retryable OR counted.attempts = 0) AS eligible
    ) AS retry
    -- Rule 6: greatest() skips a gate that is NULL, and is NULL when both are.
    CROSS JOIN LATERAL (
        SELECT greatest(
                   step.last_attempted_at + step.backoff_request_seconds * interval '1 second',
                   state.last_failure_at
                       + least(30, 1 << least(coalesce(step.attempts, 1), 5)) * interval '1 second'
               ) AS next_retry_at
    ) AS gate
    -- Callers pass one array and a NULL. `= ANY (NULL)` matches nothing, so the NULL
    -- side costs one empty index probe; the other side selects the steps by index.
    WHERE step.task_id = ANY (tasker_step_readiness.task_ids)
       OR step.workflow_step_id = ANY (tasker_step_readiness.step_ids)
$$;
COMMENT ON FUNCTION tasker_step_readiness(bigint[], bigint[]) IS
    'Readiness rows (one per step: state, parents done, retry eligibility, ready now) of the steps of task_ids and of the steps step_ids, unordered: the only definition of the readiness rules, which every readiness and context function calls. Index probes only: each step, its current transition, its edges to parents and their current transitions.';

CREATE FUNCTION get_step_readiness_status(step_ids bigint[])
RETURNS SETOF tasker_step_readiness_row
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT * FROM tasker_step_readiness(NULL, get_step_readiness_status.step_ids)
    ORDER BY task_id, workflow_step_id
$$;
COMMENT ON FUNCTION get_step_readiness_status(bigint[]) IS
    'Readiness of the given steps, one row per existing step (unknown ids give no row, duplicates one row, an empty or NULL array no rows), ordered by (task_id, workflow_step_id). Parents are read whichever steps are asked for. Cost: index probes per step and parent, independent of how many rows the tables hold.';

CREATE FUNCTION get_step_readiness_status_batch(task_ids bigint[])
RETURNS SETOF tasker_step_readiness_row
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT * FROM tasker_step_readiness(get_step_readiness_status_batch.task_ids, NULL)
    ORDER BY task_id, workflow_step_id
$$;
COMMENT ON FUNCTION get_step_readiness_status_batch(bigint[]) IS
    'Readiness of every step of the given tasks (unknown ids and duplicates add nothing, NULL gives no rows), ordered by (task_id, workflow_step_id). Cost: index probes per step and parent, independent of how many rows the tables hold.';

CREATE FUNCTION get_step_readiness_status(task_id bigint, step_ids bigint[] DEFAULT NULL)
RETURNS SETOF tasker_step_readiness_row
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT readiness.*
    FROM tasker_step_readiness(ARRAY[get_step_readiness_status.task_id], NULL) AS readiness
    WHERE get_step_readiness_status.step_ids IS NULL
       OR readiness.workflow_step_id = ANY (get_step_readiness_status.step_ids)
    ORDER BY readiness.workflow_step_id
$$;
COMMENT ON FUNCTION get_step_readiness_status(bigint, bigint[]) IS
    'Tasker-compatible form: readiness of the steps of one task, all of them when step_ids is NULL, else those of step_ids that belong to the task; ordered by workflow_step_id. A NULL task_id gives no rows.';

-- The thirteen columns of the original design, in its order and with its types: the
-- state and the statuses as text (labels of tasker_task_state, tasker_execution_status,
-- tasker_recommended_action and tasker_health_status), which the Rails engine's model is
-- built from. Cancelled steps are the total less the others.
CREATE TYPE tasker_task_execution_context_row AS (
    task_id bigint,
    named_task_id integer,
    status text,
    total_steps bigint,
    pending_steps bigint,
    in_progress_steps bigint,
    completed_steps bigint,
    failed_steps bigint,
    ready_steps bigint,
    execution_status text,
    recommended_action text,
    completion_percentage numeric,
    health_status text
);
COMMENT ON TYPE tasker_task_execution_context_row IS
    'A row of get_task_execution_context and get_task_execution_contexts_batch: one task, its steps counted by state, its execution status, the recommended next action and its health.';

CREATE FUNCTION get_task_execution_contexts_batch(task_ids bigint[])
RETURNS SETOF tasker_task_execution_context_row
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT
        task.task_id,
        task.named_task_id,
        coalesce(latest.to_state, 'pending'),
        steps.total,
        steps.pending,
        steps.in_progress,
        steps.completed,
        steps.failed,
        steps.ready,
        outcome.execution_status,
        CASE outcome.execution_status
            WHEN 'has_ready_steps' THEN 'execute_ready_steps'
            WHEN 'processing' THEN 'wait_for_completion'
            WHEN 'blocked_by_failures' THEN 'handle_failures'
            WHEN 'all_complete' THEN 'finalize_task'
            WHEN 'waiting_for_dependencies' THEN 'wait_for_dependencies'
        END::tasker_recommended_action,
        CASE WHEN steps.total = 0 THEN 0.00
             ELSE round(100.0 * steps.completed / steps.total, 2)
        END,
        CASE WHEN steps.failed = 0 THEN 'healthy'
             WHEN steps.permanently_failed > 0 AND steps.ready = 0 THEN 'blocked'
             ELSE 'recovering'
        END::tasker_health_status
    FROM tasker_tasks AS task
    CROSS JOIN LATERAL (
        SELECT count(*) AS total,
               count(*) FILTER (WHERE readiness.current_state = 'pending') AS pending,
               count(*) FILTER (WHERE readiness.current_state = 'in_progress') AS in_progress,
               count(*) FILTER (
                   WHERE readiness.current_state IN ('complete', 'resolved_manually')) AS completed,
               count(*) FILTER (WHERE readiness.current_state = 'error') AS failed,
               count(*) FILTER (WHERE readiness.current_state = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE readiness.ready_for_execution) AS ready,
               count(*) FILTER (
                   WHERE readiness.current_state = 'error'
                     AND NOT readiness.retry_eligible) AS permanently_failed
        FROM tasker_step_readiness(ARRAY[task.task_id], NULL) AS readiness
    ) AS steps
    LEFT JOIN LATERAL (
        SELECT transition.to_state
        FROM tasker_task_transitions AS transition
        WHERE transition.task_id = task.task_id AND transition.most_recent
        LIMIT 1
    ) AS latest ON true
    -- First match wins.
    CROSS JOIN LATERAL (
        SELECT CASE
            WHEN steps.ready > 0 THEN 'has_ready_steps'
            WHEN steps.in_progress > 0 THEN 'processing'
            WHEN steps.permanently_failed > 0 THEN 'blocked_by_failures'
            WHEN steps.total > 0 AND steps.completed + steps.cancelled = steps.total
                THEN 'all_complete'
            ELSE 'waiting_for_dependencies'
        END::tasker_execution_status AS execution_status
    ) AS outcome
    WHERE task.task_id = ANY (get_task_execution_contexts_batch.task_ids)
    ORDER BY task.task_id
$$;
COMMENT ON FUNCTION get_task_execution_contexts_batch(bigint[]) IS
    'Execution context (step counts by state, execution status, recommended action, health) of the given tasks, one row per distinct existing task (unknown ids give no row, NULL no rows), ordered by task_id: the only definition of the context rules, built on tasker_step_readiness. Cost: the readiness probes of each task''s steps.';

CREATE FUNCTION get_task_execution_context(task_id bigint)
RETURNS SETOF tasker_task_execution_context_row
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT * FROM get_task_execution_contexts_batch(ARRAY[get_task_execution_context.task_id])
$$;
COMMENT ON FUNCTION get_task_execution_context(bigint) IS
    'Execution context of one task: one row for an existing task, none for an unknown or NULL id.';

CREATE FUNCTION calculate_dependency_levels(task_id bigint)
RETURNS TABLE (workflow_step_id bigint, dependency_level integer)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    -- One topological pass over the task's steps and edges. Every edge from a step of
    -- the task leads to a step of the task, and the graph is acyclic (both checked when
    -- edges are written), so every step gets its level.
    SELECT level.workflow_step_id, level.dependency_level
    FROM (SELECT array_agg(edge.from_step_id) AS from_ids,
                 array_agg(edge.to_step_id) AS to_ids
          FROM tasker_workflow_steps AS step
          JOIN tasker_workflow_step_edges AS edge ON edge.from_step_id = step.workflow_step_id
          WHERE step.task_id = calculate_dependency_levels.task_id) AS edges,
         tasker_topological_levels(
             ARRAY(SELECT step.workflow_step_id FROM tasker_workflow_steps AS step
                   WHERE step.task_id = calculate_dependency_levels.task_id),
             coalesce(edges.from_ids, '{}'),
             coalesce(edges.to_ids, '{}')) AS level
    WHERE level.dependency_level IS NOT NULL
    ORDER BY level.dependency_level, level.workflow_step_id
$$;
COMMENT ON FUNCTION calculate_dependency_levels(bigint) IS
    'Each step of the task with its longest distance from a root (roots are level 0), ordered by level then step id. No rows for an unknown task. One topological pass: O(steps + edges).';

CREATE FUNCTION tasker_system_health_counts()
RETURNS TABLE (
    total_tasks bigint,
    pending_tasks bigint,
    in_progress_tasks bigint,
    complete_tasks bigint,
    error_tasks bigint,
    cancelled_tasks bigint,
    resolved_manually_tasks bigint,
    total_steps bigint,
    pending_steps bigint,
    in_progress_steps bigint,
    complete_steps bigint,
    error_steps bigint,
    cancelled_steps bigint,
    resolved_manually_steps bigint,
    retryable_error_steps bigint,
    exhausted_retry_steps bigint,
    active_connections bigint,
    max_connections integer
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    -- An entity is pending unless its current transition says otherwise, so pending is
    -- the total minus the entities currently in another state.
    WITH task_states AS (
        SELECT to_state, count(*) AS n
        FROM tasker_task_transitions
        WHERE most_recent AND to_state <> 'pending'
        GROUP BY to_state
    ), step_states AS (
        SELECT to_state, count(*) AS n
        FROM tasker_workflow_step_transitions
        WHERE most_recent AND to_state <> 'pending'
        GROUP BY to_state
    ), tasks AS (
        SELECT count(*) AS n FROM tasker_tasks
    ), steps AS (
        SELECT count(*) AS n FROM tasker_workflow_steps
    ), failed AS (
        SELECT count(*) FILTER (WHERE readiness.retry_eligible) AS retryable,
               count(*) FILTER (WHERE NOT readiness.retry_eligible) AS exhausted
        FROM tasker_workflow_step_transitions AS latest
        CROSS JOIN LATERAL tasker_step_readiness(NULL, ARRAY[latest.workflow_step_id]) AS readiness
        WHERE latest.most_recent AND latest.to_state = 'error'
    )
    SELECT
        tasks.n,
        tasks.n - (SELECT coalesce(sum(n), 0) FROM task_states)::bigint,
        coalesce((SELECT n FROM task_states WHERE to_state = 'in_progress'), 0),
        coalesce((SELECT n FROM task_states WHERE to_state = 'complete'), 0),
        coalesce((SELECT n FROM task_states WHERE to_state = 'error'), 0),
        coalesce((SELECT n FROM task_states WHERE to_state = 'cancelled'), 0),
        coalesce((SELECT n FROM task_states WHERE to_state = 'resolved_manually'), 0),
        steps.n,
        steps.n - (SELECT coalesce(sum(n), 0) FROM step_states)::bigint,
        coalesce((SELECT n FROM step_states WHERE to_state = 'in_progress'), 0),
        coalesce((SELECT n FROM step_states WHERE to_state = 'complete'), 0),
        coalesce((SELECT n FROM step_states WHERE to_state = 'error'), 0),
        coalesce((SELECT n FROM step_states WHERE to_state = 'cancelled'), 0),
        coalesce((SELECT n FROM step_states WHERE to_state = 'resolved_manually'), 0),
        failed.retryable,
        failed.exhausted,
        (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
        current_setting('max_connections')::integer
    FROM tasks, steps, failed
$$;
COMMENT ON FUNCTION tasker_system_health_counts() IS
    'One row of monitoring counts: tasks and steps by current state (no transition counts as pending), steps in error that may be retried and that may not, client connections and max_connections. Cost grows linearly with the tables: it counts tasks and steps and reads the current-transition indexes in full (index-only scans once vacuumed), plus readiness probes for steps in error. Poll it every few seconds, not per request.';

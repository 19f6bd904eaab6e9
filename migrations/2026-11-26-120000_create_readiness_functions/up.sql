-- Readiness and execution-context functions, dependency levels, health counts, and the
-- check and repair of the maintained readiness.
--
-- Every rule is written once. A step's readiness rules are the functions its maintained
-- columns are generated from (tasker_step_retry_eligible, tasker_step_next_retry_at,
-- tasker_step_runnable); tasker_step_readiness reads those columns and every readiness
-- and context function calls it. tasker_step_readiness_from_history applies the same
-- functions to the state it reads from the transitions: the oracle of the tests and of
-- tasker_readiness_drift. A task's context rules are in get_task_execution_contexts_batch.
--
-- Plans. The read functions are plain `LANGUAGE sql`, STABLE, not STRICT, with no SET
-- clause and one SELECT each, so PostgreSQL inlines them into the calling statement
-- (no "Function Scan" in EXPLAIN): there is no PL/pgSQL plan cache to go stale. The
-- caller's own prepared statement does switch to a generic plan after five runs (Diesel
-- keeps statements prepared), and a generic plan does not know how many ids it will
-- get, so the queries leave the planner no choice that could scan: the given ids select
-- rows by index and every lookup from there is an index probe per row. The crate's
-- plan tests check both plan modes.
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

-- Rules 1 to 7, read from the maintained columns of each step.
CREATE FUNCTION tasker_step_readiness(task_ids bigint[], step_ids bigint[])
RETURNS SETOF tasker_step_readiness_row
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT
        step.workflow_step_id,
        step.task_id,
        step.named_step_id,
        named.name::text,
        step.current_state,
        step.completed_parents = step.total_parents,
        step.retry_eligible,
        step.runnable
            AND coalesce(step.next_retry_at, '-infinity'::timestamp) <= (now() AT TIME ZONE 'UTC'),
        step.last_failure_at,
        step.next_retry_at,
        step.total_parents,
        step.completed_parents,
        coalesce(step.attempts, 0),
        coalesce(step.retry_limit, 3),
        step.backoff_request_seconds,
        step.last_attempted_at
    FROM tasker_workflow_steps AS step
    -- A join, not a lookup per row: the planner hashes a small catalog of names
    -- (a probe per row cost more than all the rest of a 100-step task) and probes
    -- a large one by its primary key. Every step has its named step (foreign key).
    JOIN tasker_named_steps AS named ON named.named_step_id = step.named_step_id
    -- Callers pass one array and a NULL: `= ANY (NULL)` matches nothing.
    WHERE step.task_id = ANY (tasker_step_readiness.task_ids)
       OR step.workflow_step_id = ANY (tasker_step_readiness.step_ids)
$$;
COMMENT ON FUNCTION tasker_step_readiness(bigint[], bigint[]) IS
    'Readiness rows (one per step: state, parents done, retry eligibility, ready now) of the steps of task_ids and of the steps step_ids, unordered, read from the maintained columns of each step: one index probe per step, joined to the step names. Every readiness and context function calls it. tasker_step_readiness_from_history computes the same rows from the history.';

-- The same rows recomputed from the history.
CREATE FUNCTION tasker_step_readiness_from_history(task_ids bigint[], step_ids bigint[])
RETURNS SETOF tasker_step_readiness_row
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    -- The rules are the functions the maintained columns use; what differs is where
    -- the state and the parents' states come from: the transitions, read here.
    SELECT
        step.workflow_step_id,
        step.task_id,
        step.named_step_id,
        (SELECT named.name FROM tasker_named_steps AS named
          WHERE named.named_step_id = step.named_step_id)::text,
        history.current_state,
        parents.total = parents.completed,
        tasker_step_retry_eligible(step.attempts, step.retry_limit, step.retryable),
        tasker_step_runnable(history.current_state, step.processed, step.in_process,
                             parents.total, parents.completed,
                             step.attempts, step.retry_limit, step.retryable)
            AND coalesce(gate.next_retry_at, '-infinity'::timestamp) <= (now() AT TIME ZONE 'UTC'),
        history.last_failure_at,
        gate.next_retry_at,
        parents.total,
        parents.completed,
        coalesce(step.attempts, 0),
        coalesce(step.retry_limit, 3),
        step.backoff_request_seconds,
        step.last_attempted_at
    FROM tasker_workflow_steps AS step
    CROSS JOIN LATERAL tasker_step_state_from_history(step.workflow_step_id) AS history
    -- Every parent, whichever steps were asked for, with its state from its history.
    CROSS JOIN LATERAL (
        SELECT count(*)::integer AS total,
               (count(*) FILTER (
                   WHERE parent.current_state IN ('complete', 'resolved_manually')))::integer
                   AS completed
        FROM tasker_workflow_step_edges AS edge
        CROSS JOIN LATERAL tasker_step_state_from_history(edge.from_step_id) AS parent
        WHERE edge.to_step_id = step.workflow_step_id
    ) AS parents
    CROSS JOIN LATERAL (
        SELECT tasker_step_next_retry_at(step.attempts, step.last_attempted_at,
                                         step.backoff_request_seconds,
                                         history.last_failure_at) AS next_retry_at
    ) AS gate
    WHERE step.task_id = ANY (tasker_step_readiness_from_history.task_ids)
       OR step.workflow_step_id = ANY (tasker_step_readiness_from_history.step_ids)
$$;
COMMENT ON FUNCTION tasker_step_readiness_from_history(bigint[], bigint[]) IS
    'Readiness rows (one per step: state, parents done, retry eligibility, ready now) of the steps of task_ids and of the steps step_ids, recomputed from the transition log and the edges: the oracle that maintained readiness is checked against (tests, tasker_readiness_drift) and the answer to why a step is or is not ready. Index probes per step, its current transition, its edges and its parents'' current transitions.';

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
        steps.total_steps,
        steps.pending_steps,
        steps.in_progress_steps,
        steps.completed_steps,
        steps.failed_steps,
        ready.steps,
        outcome.execution_status,
        CASE outcome.execution_status
            WHEN 'has_ready_steps' THEN 'execute_ready_steps'
            WHEN 'processing' THEN 'wait_for_completion'
            WHEN 'blocked_by_failures' THEN 'handle_failures'
            WHEN 'all_complete' THEN 'finalize_task'
            WHEN 'waiting_for_dependencies' THEN 'wait_for_dependencies'
        END::tasker_recommended_action,
        CASE WHEN steps.total_steps = 0 THEN 0.00
             ELSE round(100.0 * steps.completed_steps / steps.total_steps, 2)
        END,
        CASE WHEN steps.failed_steps = 0 THEN 'healthy'
             WHEN steps.permanently_failed_steps > 0 AND ready.steps = 0 THEN 'blocked'
             ELSE 'recovering'
        END::tasker_health_status
    FROM tasker_tasks AS task
    -- Every task has its counts row (a trigger adds it with the task).
    CROSS JOIN LATERAL tasker_task_step_counts_of(task.task_id) AS kept
    CROSS JOIN LATERAL (
        SELECT kept.total_steps,
               kept.pending_steps,
               kept.in_progress_steps,
               kept.complete_steps + kept.resolved_manually_steps AS completed_steps,
               kept.failed_steps,
               kept.cancelled_steps,
               kept.permanently_failed_steps,
               kept.runnable_steps
    ) AS steps
    -- Ready: the runnable steps whose time gate has passed, read from the active-set index
    -- (none when the task has no runnable step).
    CROSS JOIN LATERAL (
        SELECT count(*) AS steps
        FROM tasker_workflow_steps AS step
        WHERE steps.runnable_steps > 0
          AND step.task_id = task.task_id
          AND step.runnable
          AND coalesce(step.next_retry_at, '-infinity'::timestamp) <= (now() AT TIME ZONE 'UTC')
    ) AS ready
    LEFT JOIN LATERAL (
        SELECT transition.to_state
        FROM tasker_task_transitions AS transition
        WHERE transition.task_id = task.task_id AND transition.most_recent
        LIMIT 1
    ) AS latest ON true
    -- First match wins.
    CROSS JOIN LATERAL (
        SELECT CASE
            WHEN ready.steps > 0 THEN 'has_ready_steps'
            WHEN steps.in_progress_steps > 0 THEN 'processing'
            WHEN steps.permanently_failed_steps > 0 THEN 'blocked_by_failures'
            WHEN steps.total_steps > 0
                 AND steps.completed_steps + steps.cancelled_steps = steps.total_steps
                THEN 'all_complete'
            ELSE 'waiting_for_dependencies'
        END::tasker_execution_status AS execution_status
    ) AS outcome
    WHERE task.task_id = ANY (get_task_execution_contexts_batch.task_ids)
    ORDER BY task.task_id
$$;
COMMENT ON FUNCTION get_task_execution_contexts_batch(bigint[]) IS
    'Execution context (step counts by state, execution status, recommended action, health) of the given tasks, one row per distinct existing task (unknown ids give no row, NULL no rows), ordered by task_id: the only definition of the context rules. Counts come from tasker_task_step_counts, ready steps from the runnable-steps index. Cost: a few index probes per task, plus one index entry per runnable step.';

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
    -- A task is pending unless its current transition says otherwise, so pending is
    -- the total minus the tasks currently in another state.
    WITH task_states AS (
        SELECT to_state, count(*) AS n
        FROM tasker_task_transitions
        WHERE most_recent AND to_state <> 'pending'
        GROUP BY to_state
    ), tasks AS (
        SELECT count(*) AS n FROM tasker_tasks
    ), steps AS (
        SELECT coalesce(sum(c.total_steps), 0)::bigint AS total,
               coalesce(sum(c.pending_steps), 0)::bigint AS pending,
               coalesce(sum(c.in_progress_steps), 0)::bigint AS in_progress,
               coalesce(sum(c.complete_steps), 0)::bigint AS complete,
               coalesce(sum(c.failed_steps), 0)::bigint AS failed,
               coalesce(sum(c.cancelled_steps), 0)::bigint AS cancelled,
               coalesce(sum(c.resolved_manually_steps), 0)::bigint AS resolved_manually,
               coalesce(sum(c.permanently_failed_steps), 0)::bigint AS permanently_failed
        FROM (SELECT total_steps, pending_steps, in_progress_steps, complete_steps,
                     failed_steps, cancelled_steps, resolved_manually_steps,
                     permanently_failed_steps
              FROM tasker_task_step_counts
              UNION ALL
              SELECT total_steps, pending_steps, in_progress_steps, complete_steps,
                     failed_steps, cancelled_steps, resolved_manually_steps,
                     permanently_failed_steps
              FROM tasker_task_step_count_stripes) AS c
    )
    SELECT
        tasks.n,
        tasks.n - (SELECT coalesce(sum(n), 0) FROM task_states)::bigint,
        coalesce((SELECT n FROM task_states WHERE to_state = 'in_progress'), 0),
        coalesce((SELECT n FROM task_states WHERE to_state = 'complete'), 0),
        coalesce((SELECT n FROM task_states WHERE to_state = 'error'), 0),
        coalesce((SELECT n FROM task_states WHERE to_state = 'cancelled'), 0),
        coalesce((SELECT n FROM task_states WHERE to_state = 'resolved_manually'), 0),
        steps.total,
        steps.pending,
        steps.in_progress,
        steps.complete,
        steps.failed,
        steps.cancelled,
        steps.resolved_manually,
        steps.failed - steps.permanently_failed,
        steps.permanently_failed,
        (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
        current_setting('max_connections')::integer
    FROM tasks, steps
$$;
COMMENT ON FUNCTION tasker_system_health_counts() IS
    'One row of monitoring counts: tasks and steps by current state (no transition counts as pending), steps in error that may be retried and that may not, client connections and max_connections. Cost grows with the number of tasks, not steps: it counts tasks, reads the current-transition index of tasks in full (index-only once vacuumed) and sums tasker_task_step_counts. Poll it every few seconds, not per request.';

-- Check and repair ---------------------------------------------------------------------

CREATE FUNCTION tasker_readiness_drift(task_ids bigint[])
RETURNS TABLE (task_id bigint, workflow_step_id bigint, field text, maintained text, recomputed text)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT drift.task_id, drift.workflow_step_id, drift.field, drift.maintained, drift.recomputed
    FROM (
        SELECT step.task_id, step.workflow_step_id, value.field, value.maintained, value.recomputed
        FROM tasker_workflow_steps AS step
        CROSS JOIN LATERAL tasker_step_state_from_history(step.workflow_step_id) AS history
        CROSS JOIN LATERAL tasker_step_parent_counts(step.workflow_step_id) AS parents
        CROSS JOIN LATERAL (VALUES
            ('current_state', step.current_state::text, history.current_state::text),
            ('last_failure_at', step.last_failure_at::text, history.last_failure_at::text),
            ('total_parents', step.total_parents::text, parents.total_parents::text),
            ('completed_parents', step.completed_parents::text, parents.completed_parents::text)
        ) AS value (field, maintained, recomputed)
        WHERE (tasker_readiness_drift.task_ids IS NULL
               OR step.task_id = ANY (tasker_readiness_drift.task_ids))
          AND value.maintained IS DISTINCT FROM value.recomputed
        UNION ALL
        SELECT task.task_id, NULL::bigint, value.field, value.maintained, value.recomputed
        FROM tasker_tasks AS task
        LEFT JOIN LATERAL tasker_task_step_counts_of(task.task_id) AS kept ON true
        CROSS JOIN LATERAL tasker_task_step_recount(task.task_id) AS counted
        CROSS JOIN LATERAL (VALUES
            ('counts_row', (kept.task_id IS NOT NULL)::text, 'true'),
            ('total_steps', kept.total_steps::text, counted.total_steps::text),
            ('pending_steps', kept.pending_steps::text, counted.pending_steps::text),
            ('in_progress_steps', kept.in_progress_steps::text, counted.in_progress_steps::text),
            ('complete_steps', kept.complete_steps::text, counted.complete_steps::text),
            ('resolved_manually_steps', kept.resolved_manually_steps::text,
             counted.resolved_manually_steps::text),
            ('failed_steps', kept.failed_steps::text, counted.failed_steps::text),
            ('cancelled_steps', kept.cancelled_steps::text, counted.cancelled_steps::text),
            ('permanently_failed_steps', kept.permanently_failed_steps::text,
             counted.permanently_failed_steps::text),
            ('runnable_steps', kept.runnable_steps::text, counted.runnable_steps::text)
        ) AS value (field, maintained, recomputed)
        WHERE (tasker_readiness_drift.task_ids IS NULL
               OR task.task_id = ANY (tasker_readiness_drift.task_ids))
          AND value.maintained IS DISTINCT FROM value.recomputed
    ) AS drift
    ORDER BY drift.task_id, drift.workflow_step_id NULLS FIRST, drift.field
$$;
COMMENT ON FUNCTION tasker_readiness_drift(bigint[]) IS
    'Where maintained readiness disagrees with a recount, for the given tasks (NULL: every task): one row per wrong value, workflow_step_id NULL for a task''s counts. Steps are checked against their transitions and edges, counts against the task''s steps. No rows: no drift. Cost: a recount of every step of the tasks asked for.';

CREATE FUNCTION tasker_rebuild_readiness(task_ids bigint[])
RETURNS bigint
LANGUAGE plpgsql
-- Every statement filters on `task_ids IS NULL OR ... = ANY (task_ids)`: planned for
-- the list at hand it probes the indexes, while the generic plan that a session
-- switches to after five calls scans every step (12 s instead of 0.5 s for a batch
-- of 2,000 tasks among 250,000, as a backfill calls it).
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    fixed bigint := 0;
    n bigint;
    step_ids bigint[];
    writer_maintains text := current_setting('tasker.writer_maintains', true);
BEGIN
    -- Whole tasks are rebuilt, and a step's parents are in its task: the steps'
    -- update trigger would only adjust, row by row, children and counts that are
    -- recounted below (three times the cost of the rebuild). It is skipped until the
    -- end, when the caller's setting comes back.
    PERFORM set_config('tasker.writer_maintains', 'on', true);
    INSERT INTO tasker_task_step_counts (task_id)
    SELECT task.task_id FROM tasker_tasks AS task
    WHERE task_ids IS NULL OR task.task_id = ANY (task_ids)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    fixed := fixed + n;

    SELECT array_agg(s.workflow_step_id ORDER BY s.workflow_step_id) INTO step_ids
    FROM tasker_workflow_steps AS s
    WHERE task_ids IS NULL OR s.task_id = ANY (task_ids);
    -- States first, then every parent count from them.
    SELECT count(*) INTO n FROM tasker_readiness_drift(task_ids) AS d
    WHERE d.workflow_step_id IS NOT NULL;
    fixed := fixed + n;
    PERFORM tasker_refresh_step_states(step_ids);
    PERFORM tasker_refresh_parent_counts(step_ids);

    -- The tasks themselves, after their steps (the lock order): no step can be added
    -- to them until this commits (its foreign-key check waits), so the stripes deleted
    -- and the recount below see the same steps.
    PERFORM FROM tasker_tasks AS t
    WHERE task_ids IS NULL OR t.task_id = ANY (task_ids)
    ORDER BY t.task_id
    FOR UPDATE;
    PERFORM FROM tasker_task_step_counts AS c
    WHERE task_ids IS NULL OR c.task_id = ANY (task_ids)
    ORDER BY c.task_id
    FOR NO KEY UPDATE;
    SELECT count(*) INTO n
    FROM tasker_task_step_counts AS kept
    CROSS JOIN LATERAL tasker_task_step_counts_of(kept.task_id) AS summed
    CROSS JOIN LATERAL tasker_task_step_recount(kept.task_id) AS counted
    WHERE (task_ids IS NULL OR kept.task_id = ANY (task_ids))
      AND summed IS DISTINCT FROM counted;
    fixed := fixed + n;
    -- The stripes fold into the rows, which take the recount; a full rebuild also
    -- drops the stripes of tasks that no longer exist.
    DELETE FROM tasker_task_step_count_stripes AS s
    WHERE task_ids IS NULL OR s.task_id = ANY (task_ids);
    UPDATE tasker_task_step_counts AS c
    SET (total_steps, pending_steps, in_progress_steps, complete_steps,
         resolved_manually_steps, failed_steps, cancelled_steps, permanently_failed_steps,
         runnable_steps)
        = (counted.total_steps, counted.pending_steps, counted.in_progress_steps,
           counted.complete_steps, counted.resolved_manually_steps, counted.failed_steps,
           counted.cancelled_steps, counted.permanently_failed_steps, counted.runnable_steps)
    FROM tasker_task_step_counts AS kept
    CROSS JOIN LATERAL tasker_task_step_recount(kept.task_id) AS counted
    WHERE c.task_id = kept.task_id
      AND (task_ids IS NULL OR kept.task_id = ANY (task_ids))
      AND kept IS DISTINCT FROM counted;
    PERFORM set_config('tasker.writer_maintains', coalesce(writer_maintains, ''), true);
    IF fixed > 0 THEN
        -- Steps may have become runnable: wake the workers, as the trigger would have.
        PERFORM pg_notify('tasker_runnable_steps', '');
    END IF;
    RETURN fixed;
END;
$$;
COMMENT ON FUNCTION tasker_rebuild_readiness(bigint[]) IS
    'Rebuilds the maintained readiness of the given tasks (NULL: every task) from their transitions and edges: step states, parent counts, then task counts. Locks the steps in id order, then the counts rows. Returns how many values or rows it had to correct (0: there was no drift).';

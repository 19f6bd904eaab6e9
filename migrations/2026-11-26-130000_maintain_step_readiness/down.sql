-- Undoes the maintained readiness: the readiness, context, health and claim functions
-- get back their definitions of the previous migrations, recomputing from history.

DROP FUNCTION tasker_rebuild_readiness(bigint[]);
DROP FUNCTION tasker_readiness_drift(bigint[]);

DROP FUNCTION tasker_finalize_settled_tasks(integer, jsonb, bigint[]);
DROP FUNCTION tasker_step_work_inputs(bigint[]);
DROP FUNCTION tasker_settled_tasks(bigint, integer, bigint[]);
DROP INDEX tasker_task_transitions_in_progress_idx;
DROP FUNCTION tasker_report_and_claim(bigint[], bigint[], tasker_step_state[], jsonb[], integer[], bigint[], integer, integer, jsonb, boolean[], jsonb);
CREATE OR REPLACE FUNCTION tasker_fail_step(
    workflow_step_id bigint,
    claim_id bigint,
    error_info jsonb,
    retry_after_seconds integer DEFAULT NULL
)
RETURNS tasker_workflow_step_transitions
LANGUAGE plpgsql
AS $$
BEGIN
    IF retry_after_seconds < 0 THEN
        PERFORM tasker_refuse('invalid_argument',
            format('tasker_fail_step needs retry_after_seconds >= 0 or NULL, got %s', retry_after_seconds),
            jsonb_build_object('argument', 'retry_after_seconds',
                               'retry_after_seconds', retry_after_seconds));
    END IF;
    PERFORM tasker_held_claim(workflow_step_id, claim_id);
    -- The delay this failure asks for, or none; the next start clears it (see
    -- tasker_transition_workflow_step), so it never outlives the retry it was for.
    UPDATE tasker_workflow_steps AS s SET backoff_request_seconds = retry_after_seconds
    WHERE s.workflow_step_id = tasker_fail_step.workflow_step_id;
    RETURN tasker_transition_workflow_step(workflow_step_id, 'error',
                                    tasker_failure_metadata(error_info), 'in_progress');
END;
$$;
COMMENT ON FUNCTION tasker_fail_step(bigint, bigint, jsonb, integer) IS
    'Records the failure of a claimed step: moves it to error with tasker_failure_metadata(error_info) ({"error": error_info, "error_message": its text}) as the transition metadata and sets backoff_request_seconds to retry_after_seconds (NULL: no requested delay). The step is retried by a later claim once the readiness gates allow it (attempts below retry_limit, retryable, backoff passed), else it is permanently failed. Refused with claim_lost or claim_expired when the claim no longer holds.';

CREATE OR REPLACE FUNCTION tasker_complete_step(
    workflow_step_id bigint,
    claim_id bigint,
    results jsonb,
    metadata jsonb DEFAULT '{}'
)
RETURNS tasker_workflow_step_transitions
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM tasker_held_claim(workflow_step_id, claim_id);
    UPDATE tasker_workflow_steps AS s SET results = tasker_complete_step.results
    WHERE s.workflow_step_id = tasker_complete_step.workflow_step_id;
    RETURN tasker_transition_workflow_step(workflow_step_id, 'complete', metadata, 'in_progress');
END;
$$;
COMMENT ON FUNCTION tasker_complete_step(bigint, bigint, jsonb, jsonb) IS
    'Records the results of a claimed step and moves it to complete (processed). Refused with claim_lost or claim_expired when the claim no longer holds; then nothing is written.';

DROP FUNCTION tasker_reported_transition(tasker_step_report_row);
DROP FUNCTION tasker_report_steps(bigint[], bigint[], tasker_step_state[], jsonb[], integer[], jsonb, boolean[]);
DROP TYPE tasker_step_report_row;
DROP FUNCTION tasker_listen_for_work();
DROP INDEX tasker_workflow_steps_backoff_idx;

CREATE OR REPLACE FUNCTION tasker_transition_workflow_step(
    workflow_step_id bigint,
    to_state tasker_step_state,
    metadata jsonb DEFAULT '{}',
    expected_state tasker_step_state DEFAULT NULL
)
RETURNS tasker_workflow_step_transitions
LANGUAGE plpgsql
AS $$
DECLARE
    step_id CONSTANT bigint := tasker_transition_workflow_step.workflow_step_id;
    target CONSTANT tasker_step_state := tasker_transition_workflow_step.to_state;
    stamp CONSTANT timestamp := clock_timestamp() AT TIME ZONE 'UTC';
    step tasker_workflow_steps;
    latest tasker_workflow_step_transitions;
    current tasker_step_state;
    finished boolean;
    written tasker_workflow_step_transitions;
BEGIN
    SELECT * INTO step FROM tasker_workflow_steps AS s
    WHERE s.workflow_step_id = step_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM tasker_refuse('unknown_step', format('workflow step %s does not exist', step_id),
                              jsonb_build_object('workflow_step_id', step_id));
    END IF;

    SELECT * INTO latest FROM tasker_workflow_step_transitions AS t
    WHERE t.workflow_step_id = step_id AND t.most_recent;
    current := coalesce(latest.to_state, 'pending');

    IF expected_state IS NOT NULL AND expected_state <> current THEN
        PERFORM tasker_refuse('step_state_conflict',
            format('workflow step %s is %s, not the expected %s', step_id, current, expected_state),
            jsonb_build_object('workflow_step_id', step_id, 'expected', expected_state,
                               'actual', current));
    END IF;
    IF target IS NULL OR NOT tasker_step_transition_allowed(current, target) THEN
        PERFORM tasker_refuse('illegal_step_transition',
            format('workflow step %s (%s) cannot move from %s to %s', step_id,
                   (SELECT n.name FROM tasker_named_steps AS n
                     WHERE n.named_step_id = step.named_step_id),
                   current, coalesce(target::text, 'NULL')),
            jsonb_build_object('workflow_step_id', step_id, 'from', current, 'to', target,
                               'name', (SELECT n.name FROM tasker_named_steps AS n
                                         WHERE n.named_step_id = step.named_step_id)));
    END IF;

    UPDATE tasker_workflow_step_transitions AS t SET most_recent = false
    WHERE t.id = latest.id;
    INSERT INTO tasker_workflow_step_transitions
        (workflow_step_id, to_state, from_state, metadata, sort_key, most_recent,
         created_at, updated_at)
    VALUES (step_id, target, latest.to_state, coalesce(metadata, '{}'),
            coalesce((SELECT max(t.sort_key) FROM tasker_workflow_step_transitions AS t
                       WHERE t.workflow_step_id = step_id), 0) + 1,
            true, stamp, stamp)
    RETURNING * INTO written;

    -- The step's flags follow its state: in process exactly while in progress,
    -- processed once final; each start counts an attempt, and clears the delay the
    -- previous failure asked for, which that start has honoured.
    finished := target IN ('complete', 'cancelled', 'resolved_manually');
    UPDATE tasker_workflow_steps AS s SET
        in_process = (target = 'in_progress'),
        processed = finished,
        processed_at = CASE WHEN finished THEN stamp END,
        attempts = CASE WHEN target = 'in_progress' THEN coalesce(s.attempts, 0) + 1
                        ELSE s.attempts END,
        last_attempted_at = CASE WHEN target = 'in_progress' THEN stamp
                                 ELSE s.last_attempted_at END,
        backoff_request_seconds = CASE WHEN target = 'in_progress' THEN NULL
                                       ELSE s.backoff_request_seconds END,
        claimed_until = NULL,
        updated_at = stamp
    WHERE s.workflow_step_id = step_id;

    RETURN written;
END;
$$;

DROP FUNCTION tasker_claim_ready_steps(bigint[], integer, integer, jsonb, jsonb);
DROP FUNCTION tasker_step_in_scope(integer, bigint, bigint[]);
DROP FUNCTION tasker_step_filter_keys(jsonb);
CREATE FUNCTION tasker_claim_ready_steps(
    task_ids bigint[],
    max_steps integer,
    lease_seconds integer,
    metadata jsonb DEFAULT '{}'
)
RETURNS SETOF tasker_step_claim_row
LANGUAGE plpgsql
-- Every query below has one good plan whatever the arguments (index ranges and probes),
-- and planning the inlined readiness costs more than running it: with custom plans a
-- claim took 2.5 ms at 100K steps, with the cached generic plans under 1 ms.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    wanted record;
    locked bigint[];
    startable bigint[];
    claimable record;
    moved tasker_workflow_step_transitions;
    claimed tasker_step_claim_row;
BEGIN
    IF max_steps IS NULL OR max_steps < 1 OR lease_seconds IS NULL OR lease_seconds < 1 THEN
        PERFORM tasker_refuse('invalid_argument',
            format('tasker_claim_ready_steps needs max_steps >= 1 and lease_seconds >= 1, got %s and %s',
                   coalesce(max_steps::text, 'NULL'), coalesce(lease_seconds::text, 'NULL')),
            jsonb_build_object('max_steps', max_steps, 'lease_seconds', lease_seconds));
    END IF;

    -- 1. Lock up to max_steps steps that look ready, skipping the ones another
    -- transaction holds: the lock is taken on the step rows themselves. Only steps of
    -- tasks that are pending or in progress are claimed. Each query is an ordered walk
    -- of tasker_workflow_steps_claimable_idx that stops once enough steps are locked,
    -- so readiness is computed only for the steps looked at: over all tasks at once, or
    -- task by task in id order. (One query with a task-id range for both would do the
    -- same with custom plans, but its generic plan misjudges the range and sorts every
    -- candidate instead: 8 ms a claim instead of under 1 ms on a small table.)
    IF tasker_claim_ready_steps.task_ids IS NULL THEN
        SELECT array_agg(candidate.workflow_step_id) INTO locked FROM (
            SELECT step.workflow_step_id
            FROM tasker_workflow_steps AS step
            WHERE NOT step.processed AND NOT step.in_process
              AND (SELECT r.ready_for_execution
                     FROM tasker_step_readiness(NULL, ARRAY[step.workflow_step_id]) AS r)
              AND coalesce((SELECT t.to_state FROM tasker_task_transitions AS t
                             WHERE t.task_id = step.task_id AND t.most_recent),
                           'pending') IN ('pending', 'in_progress')
            ORDER BY step.task_id, step.workflow_step_id
            LIMIT max_steps
            FOR NO KEY UPDATE OF step SKIP LOCKED
        ) AS candidate;
    ELSE
        FOR wanted IN
            SELECT DISTINCT requested.task_id
            FROM unnest(tasker_claim_ready_steps.task_ids) AS requested (task_id)
            WHERE coalesce((SELECT t.to_state FROM tasker_task_transitions AS t
                             WHERE t.task_id = requested.task_id AND t.most_recent),
                           'pending') IN ('pending', 'in_progress')
            ORDER BY requested.task_id
        LOOP
            SELECT coalesce(locked, '{}') || array_agg(candidate.workflow_step_id)
            INTO locked FROM (
                SELECT step.workflow_step_id
                FROM tasker_workflow_steps AS step
                WHERE step.task_id = wanted.task_id
                  AND NOT step.processed AND NOT step.in_process
                  AND (SELECT r.ready_for_execution
                         FROM tasker_step_readiness(NULL, ARRAY[step.workflow_step_id]) AS r)
                ORDER BY step.workflow_step_id
                LIMIT max_steps - coalesce(cardinality(locked), 0)
                FOR NO KEY UPDATE OF step SKIP LOCKED
            ) AS candidate;
            EXIT WHEN cardinality(locked) >= max_steps;
        END LOOP;
    END IF;
    IF coalesce(cardinality(locked), 0) = 0 THEN
        RETURN;
    END IF;

    -- 2. Pending tasks (new ones, and ones moved back to pending to resume) start with
    -- their first claim. Their rows are locked in id order, waiting for a concurrent
    -- claim that is starting the same task (a short wait: it never waits for a step), so
    -- that claim's commit is seen and this one's steps of the task are kept.
    SELECT array_agg(task.task_id) INTO startable FROM (
        SELECT t.task_id FROM tasker_tasks AS t
        WHERE t.task_id IN (SELECT s.task_id FROM tasker_workflow_steps AS s
                             WHERE s.workflow_step_id = ANY (locked))
          AND coalesce((SELECT tt.to_state FROM tasker_task_transitions AS tt
                         WHERE tt.task_id = t.task_id AND tt.most_recent),
                       'pending') = 'pending'
        ORDER BY t.task_id
        FOR NO KEY UPDATE
    ) AS task;
    -- Now that the rows are locked, this statement's snapshot tells which are still pending.
    PERFORM tasker_transition_task(task.task_id, 'in_progress', tasker_claim_ready_steps.metadata, 'pending')
    FROM tasker_tasks AS task
    WHERE task.task_id = ANY (startable)
      AND coalesce((SELECT t.to_state FROM tasker_task_transitions AS t
                     WHERE t.task_id = task.task_id AND t.most_recent),
                   'pending') = 'pending';

    -- 3. Recheck with this statement's snapshot, which sees every commit made before
    -- the locks were granted, and move each step that is still ready; a step that
    -- failed last goes back to pending first (error -> pending -> in_progress).
    FOR claimable IN
        SELECT r.workflow_step_id, r.task_id, r.named_step_id, r.name, r.current_state
        FROM tasker_step_readiness(NULL, locked) AS r
        WHERE r.ready_for_execution
          AND coalesce((SELECT t.to_state FROM tasker_task_transitions AS t
                         WHERE t.task_id = r.task_id AND t.most_recent),
                       'pending') = 'in_progress'
        ORDER BY r.task_id, r.workflow_step_id
    LOOP
        IF claimable.current_state = 'error' THEN
            PERFORM tasker_transition_workflow_step(claimable.workflow_step_id, 'pending',
                                             tasker_claim_ready_steps.metadata, 'error');
        END IF;
        moved := tasker_transition_workflow_step(claimable.workflow_step_id, 'in_progress',
                                          tasker_claim_ready_steps.metadata, 'pending');
        claimed.claimed_until := moved.created_at + lease_seconds * interval '1 second';
        UPDATE tasker_workflow_steps AS s SET claimed_until = claimed.claimed_until
        WHERE s.workflow_step_id = claimable.workflow_step_id
        RETURNING s.attempts, s.inputs INTO claimed.attempt, claimed.inputs;
        claimed.workflow_step_id := claimable.workflow_step_id;
        claimed.task_id := claimable.task_id;
        claimed.named_step_id := claimable.named_step_id;
        claimed.name := claimable.name;
        claimed.claim_id := moved.id;
        RETURN NEXT claimed;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION tasker_claim_ready_steps(bigint[], integer, integer, jsonb) IS
    'Claims up to max_steps steps that are ready now, of the given tasks or (task_ids NULL) of any task, oldest task (lowest task_id) first, then by step id. Steps are locked with FOR NO KEY UPDATE SKIP LOCKED on their rows, so concurrent callers never get the same step; each is rechecked after locking, moved to in_progress (an error step via pending), counted as an attempt, and leased for lease_seconds. A pending task (new, or moved back to pending to resume it) moves to in_progress with its first claim; steps of tasks in any other state than pending or in_progress are not claimed. Cost: per candidate step, the index probes of its readiness; claiming from any task walks tasker_workflow_steps_claimable_idx in order until max_steps ready steps are found.';

CREATE OR REPLACE FUNCTION tasker_system_health_counts()
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

CREATE OR REPLACE FUNCTION get_task_execution_contexts_batch(task_ids bigint[])
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

CREATE OR REPLACE FUNCTION tasker_step_readiness(task_ids bigint[], step_ids bigint[])
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
DROP FUNCTION tasker_step_readiness_from_history(bigint[], bigint[]);
COMMENT ON FUNCTION tasker_step_readiness(bigint[], bigint[]) IS
    'Readiness rows (one per step: state, parents done, retry eligibility, ready now) of the steps of task_ids and of the steps step_ids, unordered: the only definition of the readiness rules, which every readiness and context function calls. Index probes only: each step, its current transition, its edges to parents and their current transitions.';

DROP TRIGGER tasker_tasks_count_delete ON tasker_tasks;
DROP FUNCTION tasker_tasks_deleted();
DROP TRIGGER tasker_tasks_count_insert ON tasker_tasks;
DROP FUNCTION tasker_tasks_inserted();
DROP TRIGGER tasker_workflow_steps_maintain_update ON tasker_workflow_steps;
DROP FUNCTION tasker_steps_updated();
DROP FUNCTION tasker_apply_step_changes(tasker_step_change[]);
DROP TRIGGER tasker_workflow_steps_count_insert ON tasker_workflow_steps;
DROP TRIGGER tasker_workflow_steps_count_delete ON tasker_workflow_steps;
DROP FUNCTION tasker_steps_inserted_or_deleted();
DROP FUNCTION tasker_add_step_counts(bigint[], integer[], tasker_step_state[], boolean[], boolean[]);
DROP TYPE tasker_step_change;
DROP TRIGGER tasker_workflow_step_edges_apply_insert ON tasker_workflow_step_edges;
DROP TRIGGER tasker_workflow_step_edges_apply_update ON tasker_workflow_step_edges;
DROP TRIGGER tasker_workflow_step_edges_apply_delete ON tasker_workflow_step_edges;
DROP FUNCTION tasker_step_edges_changed();
DROP FUNCTION tasker_refresh_parent_counts(bigint[]);
DROP TRIGGER tasker_workflow_step_transitions_maintain_insert ON tasker_workflow_step_transitions;
DROP TRIGGER tasker_workflow_step_transitions_maintain_update ON tasker_workflow_step_transitions;
DROP TRIGGER tasker_workflow_step_transitions_maintain_delete ON tasker_workflow_step_transitions;
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
CREATE INDEX tasker_workflow_steps_claimable_idx
    ON tasker_workflow_steps (task_id, workflow_step_id)
    WHERE NOT processed AND NOT in_process;

DROP FUNCTION tasker_step_next_retry_at(integer, timestamp, integer, timestamp);
DROP FUNCTION tasker_step_runnable(tasker_step_state, boolean, boolean, integer, integer, integer, integer, boolean);
DROP FUNCTION tasker_step_retry_eligible(integer, integer, boolean);

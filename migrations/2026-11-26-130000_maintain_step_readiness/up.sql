-- Maintained readiness: each step keeps its current state and parent counts, each task
-- its step counts, updated by triggers in the transaction that changes the history,
-- whoever writes it (this crate, another Tasker implementation, psql). Readiness and
-- context then read one row per step or task instead of recomputing from the
-- transition log, and claiming from any task is a range scan of the active set.
--
-- What is kept, and by whom:
--   tasker_workflow_steps.current_state, last_failure_at  <- transitions triggers
--     (the state of the current transition, pending without one, and when the current
--     error began: tasker_step_state_from_history)
--   tasker_workflow_steps.total_parents, completed_parents <- edges triggers (recount)
--     and the steps trigger (a parent's completion adds or takes one from each child)
--   tasker_workflow_steps.retry_eligible, next_retry_at, runnable <- generated columns
--     (rules 3, 4, 6 and the time-free part of 7), recomputed on every write of the row
--   tasker_task_step_counts (+ tasker_task_step_count_stripes) <- steps triggers (deltas)
-- The crate's own write functions (claims, results, transitions) write all of it in the
-- statements that change the history and skip the triggers that would derive it again
-- (see tasker_apply_step_changes and the triggers at the end).
--
-- Locks. Children are locked in step id order before they are updated, so writers of
-- one step's children queue in one order; concurrent completions of parents of one
-- child (fan-in) take turns on the child's row until each commits. A task's counts
-- never make writers wait: one that finds the task's row locked adds its change to a
-- stripe of its own (tasker_add_step_counts).
--
-- The recompute-from-history readiness stays as tasker_step_readiness_from_history:
-- the oracle of the tests, and what explains a step. tasker_readiness_drift checks the
-- kept columns against the transitions and edges directly.

-- Rules on a step's own columns, written once -------------------------------------
--
-- The helpers below that are read in FROM return TABLE (a set of one row) so that
-- PostgreSQL inlines them into the calling statement instead of planning them on each
-- call.

CREATE FUNCTION tasker_step_retry_eligible(attempts integer, retry_limit integer, retryable boolean)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(attempts, 0) < coalesce(retry_limit, 3)
       AND (retryable OR coalesce(attempts, 0) = 0)
$$;
COMMENT ON FUNCTION tasker_step_retry_eligible(integer, integer, boolean) IS
    'Rules 3 and 4 of readiness: attempts (NULL: 0) below retry_limit (NULL: 3), and a step that is not retryable only before its first attempt.';

CREATE FUNCTION tasker_step_next_retry_at(
    attempts integer,
    last_attempted_at timestamp,
    backoff_request_seconds integer,
    last_failure_at timestamp
)
RETURNS timestamp
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    -- greatest() skips a gate that is NULL, and is NULL when both are.
    SELECT greatest(
        last_attempted_at + backoff_request_seconds * interval '1 second',
        last_failure_at + least(30, 1 << least(coalesce(attempts, 1), 5)) * interval '1 second')
$$;
COMMENT ON FUNCTION tasker_step_next_retry_at(integer, timestamp, integer, timestamp) IS
    'Rule 6 of readiness: the later of the requested backoff (last_attempted_at + backoff_request_seconds) and the failure backoff (last_failure_at + min(2^attempts, 30) s, NULL attempts as 1), NULL when neither applies.';

CREATE FUNCTION tasker_step_runnable(
    current_state tasker_step_state,
    processed boolean,
    in_process boolean,
    total_parents integer,
    completed_parents integer,
    attempts integer,
    retry_limit integer,
    retryable boolean
)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT current_state IN ('pending', 'error')
       AND NOT processed
       AND NOT in_process
       AND completed_parents = total_parents
       -- Below 0: parents not counted yet (a step the backfill has not reached).
       AND total_parents >= 0
       AND tasker_step_retry_eligible(attempts, retry_limit, retryable)
$$;
COMMENT ON FUNCTION tasker_step_runnable(tasker_step_state, boolean, boolean, integer, integer, integer, integer, boolean) IS
    'Rule 7 of readiness without its time gate: pending or error, not processed, not in process, every parent completed (and counted: total_parents >= 0), retry eligible. A step is ready when it is runnable and tasker_step_next_retry_at is NULL or past.';

-- Maintained columns ------------------------------------------------------------------

ALTER TABLE tasker_workflow_steps
    ADD COLUMN current_state tasker_step_state NOT NULL DEFAULT 'pending',
    ADD COLUMN last_failure_at timestamp,
    -- -1 on the rows that exist already (a database adopted from the Rails engine): their
    -- parents are not counted yet, so they are not runnable until the backfill
    -- (tasker_rebuild_readiness, in batches) reaches their task. New rows start at 0.
    ADD COLUMN total_parents integer NOT NULL DEFAULT -1,
    ADD COLUMN completed_parents integer NOT NULL DEFAULT 0,
    ADD COLUMN retry_eligible boolean NOT NULL
        GENERATED ALWAYS AS (tasker_step_retry_eligible(attempts, retry_limit, retryable)) STORED,
    ADD COLUMN next_retry_at timestamp
        GENERATED ALWAYS AS (tasker_step_next_retry_at(
            attempts, last_attempted_at, backoff_request_seconds, last_failure_at)) STORED,
    ADD COLUMN runnable boolean NOT NULL
        GENERATED ALWAYS AS (tasker_step_runnable(
            current_state, processed, in_process, total_parents, completed_parents,
            attempts, retry_limit, retryable)) STORED;
ALTER TABLE tasker_workflow_steps ALTER COLUMN total_parents SET DEFAULT 0;
COMMENT ON COLUMN tasker_workflow_steps.current_state IS
    'Maintained by trigger: to_state of the step''s most recent transition, else pending.';
COMMENT ON COLUMN tasker_workflow_steps.last_failure_at IS
    'Maintained by trigger: created_at of the most recent transition when it is to error, else NULL.';
COMMENT ON COLUMN tasker_workflow_steps.total_parents IS
    'Maintained by trigger: the number of parent steps (edges to this step); -1 until the backfill of a step that existed before the maintained readiness counts it.';
COMMENT ON COLUMN tasker_workflow_steps.completed_parents IS
    'Maintained by trigger: parents whose current_state is complete or resolved_manually.';
COMMENT ON COLUMN tasker_workflow_steps.retry_eligible IS
    'Generated: tasker_step_retry_eligible(attempts, retry_limit, retryable).';
COMMENT ON COLUMN tasker_workflow_steps.next_retry_at IS
    'Generated: the earliest time the step may run again (tasker_step_next_retry_at), NULL when no gate applies.';
COMMENT ON COLUMN tasker_workflow_steps.runnable IS
    'Generated: tasker_step_runnable of the step, ready for execution except for the time gate. Ready = runnable and next_retry_at NULL or past.';

-- The active set: steps that are ready or will be once their backoff passes. Ordered as
-- claims take them; the third key lets a scan skip steps still in backoff inside the index.
CREATE INDEX tasker_workflow_steps_runnable_idx
    ON tasker_workflow_steps
       (task_id, workflow_step_id, (coalesce(next_retry_at, '-infinity'::timestamp)))
    WHERE runnable;
DROP INDEX tasker_workflow_steps_claimable_idx;

CREATE TABLE tasker_task_step_counts (
    task_id bigint PRIMARY KEY REFERENCES tasker_tasks (task_id) ON DELETE CASCADE,
    total_steps bigint NOT NULL DEFAULT 0,
    pending_steps bigint NOT NULL DEFAULT 0,
    in_progress_steps bigint NOT NULL DEFAULT 0,
    complete_steps bigint NOT NULL DEFAULT 0,
    resolved_manually_steps bigint NOT NULL DEFAULT 0,
    failed_steps bigint NOT NULL DEFAULT 0,
    cancelled_steps bigint NOT NULL DEFAULT 0,
    permanently_failed_steps bigint NOT NULL DEFAULT 0,
    runnable_steps bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE tasker_task_step_counts IS
    'Maintained by triggers: per task, its steps counted by current_state, in error and not retry eligible (permanently failed), and runnable (ready but for the time gate). One row per task.';

-- A task's counts row is written by every state change of its steps, so workers on
-- one task would queue on it until each commits. A writer that finds the row locked
-- adds its change to a stripe of its own instead (tasker_add_step_counts): the row of
-- its backend (pg_backend_pid), which no other live backend writes. A task's counts
-- are its row plus its stripes, which stay empty while writers do not collide.
--
-- No foreign key to the task: its check would take a share lock on the task row, and a
-- writer holding a step of a task that is being deleted would then wait for the
-- deleter, which waits for that step (a deadlock). The stripes of deleted tasks go with
-- them (tasker_tasks_deleted); those of a task deleted while a writer added one are
-- removed by tasker_rebuild_readiness.
CREATE TABLE tasker_task_step_count_stripes (
    task_id bigint NOT NULL,
    stripe integer NOT NULL,
    total_steps bigint NOT NULL DEFAULT 0,
    pending_steps bigint NOT NULL DEFAULT 0,
    in_progress_steps bigint NOT NULL DEFAULT 0,
    complete_steps bigint NOT NULL DEFAULT 0,
    resolved_manually_steps bigint NOT NULL DEFAULT 0,
    failed_steps bigint NOT NULL DEFAULT 0,
    cancelled_steps bigint NOT NULL DEFAULT 0,
    permanently_failed_steps bigint NOT NULL DEFAULT 0,
    runnable_steps bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, stripe)
);
COMMENT ON TABLE tasker_task_step_count_stripes IS
    'Maintained by triggers and the write path: changes to a task''s step counts made while its tasker_task_step_counts row was locked by another writer, one row per task and writing backend (stripe = its pg_backend_pid). A task''s counts are its tasker_task_step_counts row plus the sum of its stripes.';

CREATE FUNCTION tasker_step_buckets(
    current_state tasker_step_state,
    retry_eligible boolean,
    runnable boolean
)
RETURNS TABLE (
    pending integer,
    in_progress integer,
    complete integer,
    resolved_manually integer,
    failed integer,
    cancelled integer,
    permanently_failed integer,
    runnable_count integer
)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (current_state = 'pending')::integer,
           (current_state = 'in_progress')::integer,
           (current_state = 'complete')::integer,
           (current_state = 'resolved_manually')::integer,
           (current_state = 'error')::integer,
           (current_state = 'cancelled')::integer,
           (current_state = 'error' AND NOT retry_eligible)::integer,
           runnable::integer
$$;
COMMENT ON FUNCTION tasker_step_buckets(tasker_step_state, boolean, boolean) IS
    'Which columns of tasker_task_step_counts one step counts in (1) or not (0); total_steps counts every step.';

CREATE FUNCTION tasker_task_step_recount(task_id bigint)
RETURNS SETOF tasker_task_step_counts
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT tasker_task_step_recount.task_id,
           count(*),
           coalesce(sum(b.pending), 0),
           coalesce(sum(b.in_progress), 0),
           coalesce(sum(b.complete), 0),
           coalesce(sum(b.resolved_manually), 0),
           coalesce(sum(b.failed), 0),
           coalesce(sum(b.cancelled), 0),
           coalesce(sum(b.permanently_failed), 0),
           coalesce(sum(b.runnable_count), 0)
    FROM tasker_workflow_steps AS step
    CROSS JOIN LATERAL tasker_step_buckets(step.current_state, step.retry_eligible, step.runnable) AS b
    WHERE step.task_id = tasker_task_step_recount.task_id
$$;
COMMENT ON FUNCTION tasker_task_step_recount(bigint) IS
    'What the tasker_task_step_counts row of a task should hold, counted from the maintained state of its steps.';

-- A task's counts as kept: its row plus its stripes (none while its writers did not
-- collide). Inlined into the callers' statements.
CREATE FUNCTION tasker_task_step_counts_of(task_id bigint)
RETURNS SETOF tasker_task_step_counts
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT kept.task_id,
           kept.total_steps + coalesce(extra.total_steps, 0),
           kept.pending_steps + coalesce(extra.pending_steps, 0),
           kept.in_progress_steps + coalesce(extra.in_progress_steps, 0),
           kept.complete_steps + coalesce(extra.complete_steps, 0),
           kept.resolved_manually_steps + coalesce(extra.resolved_manually_steps, 0),
           kept.failed_steps + coalesce(extra.failed_steps, 0),
           kept.cancelled_steps + coalesce(extra.cancelled_steps, 0),
           kept.permanently_failed_steps + coalesce(extra.permanently_failed_steps, 0),
           kept.runnable_steps + coalesce(extra.runnable_steps, 0)
    FROM tasker_task_step_counts AS kept
    LEFT JOIN LATERAL (
        SELECT sum(s.total_steps)::bigint AS total_steps,
               sum(s.pending_steps)::bigint AS pending_steps,
               sum(s.in_progress_steps)::bigint AS in_progress_steps,
               sum(s.complete_steps)::bigint AS complete_steps,
               sum(s.resolved_manually_steps)::bigint AS resolved_manually_steps,
               sum(s.failed_steps)::bigint AS failed_steps,
               sum(s.cancelled_steps)::bigint AS cancelled_steps,
               sum(s.permanently_failed_steps)::bigint AS permanently_failed_steps,
               sum(s.runnable_steps)::bigint AS runnable_steps
        FROM tasker_task_step_count_stripes AS s
        WHERE s.task_id = kept.task_id
    ) AS extra ON true
    WHERE kept.task_id = tasker_task_step_counts_of.task_id
$$;
COMMENT ON FUNCTION tasker_task_step_counts_of(bigint) IS
    'A task''s step counts as maintained: its tasker_task_step_counts row plus its rows of tasker_task_step_count_stripes. No row when the task has no counts row.';

-- Rules 1 and 5: a step's state follows its current transition (NULL: none).
CREATE FUNCTION tasker_step_state_after(to_state tasker_step_state, created_at timestamp)
RETURNS TABLE (current_state tasker_step_state, last_failure_at timestamp)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(to_state, 'pending'), CASE WHEN to_state = 'error' THEN created_at END
$$;
COMMENT ON FUNCTION tasker_step_state_after(tasker_step_state, timestamp) IS
    'A step''s current_state and last_failure_at given the to_state and created_at of its most recent transition (both NULL when it has none): that to_state, else pending; and created_at when it is to error, else NULL.';

-- Rules 1 and 5, from the history.
CREATE FUNCTION tasker_step_state_from_history(workflow_step_id bigint)
RETURNS TABLE (current_state tasker_step_state, last_failure_at timestamp)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT state.current_state, state.last_failure_at
    FROM (SELECT) AS one
    LEFT JOIN LATERAL (
        SELECT transition.to_state, transition.created_at
        FROM tasker_workflow_step_transitions AS transition
        WHERE transition.workflow_step_id = tasker_step_state_from_history.workflow_step_id
          AND transition.most_recent
        LIMIT 1
    ) AS latest ON true
    CROSS JOIN LATERAL tasker_step_state_after(latest.to_state, latest.created_at) AS state
$$;
COMMENT ON FUNCTION tasker_step_state_from_history(bigint) IS
    'A step''s current state (to_state of its most recent transition, else pending) and last_failure_at (created_at of that transition when it is to error), read from the transitions.';

CREATE FUNCTION tasker_step_parent_counts(workflow_step_id bigint)
RETURNS TABLE (total_parents integer, completed_parents integer)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT count(*)::integer,
           (count(*) FILTER (
               WHERE parent.current_state IN ('complete', 'resolved_manually')))::integer
    FROM tasker_workflow_step_edges AS edge
    JOIN tasker_workflow_steps AS parent ON parent.workflow_step_id = edge.from_step_id
    WHERE edge.to_step_id = tasker_step_parent_counts.workflow_step_id
$$;
COMMENT ON FUNCTION tasker_step_parent_counts(bigint) IS
    'A step''s parents counted from its edges: all of them, and those whose current_state is complete or resolved_manually.';

-- Triggers ----------------------------------------------------------------------------
--
-- They run inside every write, so their statements use their cached generic plans
-- (index probes whatever the arrays hold): with custom plans each call planned its
-- statements again, which cost more than running them.
--
-- The functions of the dispatch path (claims, results, counts) also run with
-- enable_seqscan off, and their lookups of a current transition are subqueries kept
-- apart by OFFSET 0: they only probe by key, and a generic plan made while a table
-- was still nearly empty (a new database, statistics not yet updated) would otherwise
-- scan or join that whole table on every call for as long as the connection lives.

-- Sets the maintained state of the given steps from their history, locking them in id order.
CREATE FUNCTION tasker_refresh_step_states(step_ids bigint[])
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM FROM tasker_workflow_steps AS s
    WHERE s.workflow_step_id = ANY (step_ids)
    ORDER BY s.workflow_step_id
    FOR NO KEY UPDATE;
    -- A probe of the primary key per id (a filter `= ANY (step_ids)` on each row
    -- would cost ids times rows).
    UPDATE tasker_workflow_steps AS s
    SET current_state = fresh.current_state, last_failure_at = fresh.last_failure_at
    FROM unnest(step_ids) AS changed (workflow_step_id)
    CROSS JOIN LATERAL tasker_step_state_from_history(changed.workflow_step_id) AS fresh
    WHERE s.workflow_step_id = changed.workflow_step_id
      AND (s.current_state, s.last_failure_at)
          IS DISTINCT FROM (fresh.current_state, fresh.last_failure_at);
END;
$$;
COMMENT ON FUNCTION tasker_refresh_step_states(bigint[]) IS
    'Sets current_state and last_failure_at of the given steps from their transitions, locking the steps in id order; rows already right are not written.';

CREATE FUNCTION tasker_step_transitions_changed()
RETURNS trigger
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    current_ids bigint[];
    current_states tasker_step_state[];
    current_times timestamp[];
    reread bigint[];
BEGIN
    -- A step's state follows its current (most_recent) transition, and a step has at
    -- most one. So a statement that writes a current transition tells the new state
    -- itself; the history is read (one index probe) only for a step whose current
    -- transition this statement took away without writing another.
    IF TG_OP <> 'DELETE' THEN
        SELECT array_agg(n.workflow_step_id), array_agg(n.to_state), array_agg(n.created_at)
        INTO current_ids, current_states, current_times
        FROM changed_rows AS n
        WHERE n.most_recent;
    END IF;
    IF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT o.workflow_step_id) INTO reread
        FROM old_rows AS o
        WHERE o.most_recent;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(lost.workflow_step_id) INTO reread FROM (
            SELECT o.workflow_step_id FROM old_rows AS o WHERE o.most_recent
            EXCEPT
            SELECT n.workflow_step_id FROM changed_rows AS n WHERE n.most_recent
        ) AS lost;
    END IF;
    IF current_ids IS NULL AND reread IS NULL THEN
        RETURN NULL;
    END IF;

    PERFORM FROM tasker_workflow_steps AS s
    WHERE s.workflow_step_id = ANY (current_ids) OR s.workflow_step_id = ANY (reread)
    ORDER BY s.workflow_step_id
    FOR NO KEY UPDATE;
    -- Rows already right are not written: this crate's transitions set the state in
    -- the statement that writes the history.
    UPDATE tasker_workflow_steps AS s
    SET current_state = fresh.current_state, last_failure_at = fresh.last_failure_at
    FROM unnest(current_ids, current_states, current_times)
             AS written (workflow_step_id, to_state, created_at)
    CROSS JOIN LATERAL tasker_step_state_after(written.to_state, written.created_at) AS fresh
    WHERE s.workflow_step_id = written.workflow_step_id
      AND (s.current_state, s.last_failure_at)
          IS DISTINCT FROM (fresh.current_state, fresh.last_failure_at);
    IF reread IS NOT NULL THEN
        PERFORM tasker_refresh_step_states(reread);
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION tasker_step_transitions_changed() IS
    'Trigger: after a statement writes step transitions, sets the maintained state of the steps whose current transition it wrote, and refreshes from the history the steps whose current transition it removed without writing another. Locks those steps in id order.';


-- Recounts the parents of the given steps, locking them in id order first (so the
-- recount, a new statement, sees every parent change committed while it waited).
CREATE FUNCTION tasker_refresh_parent_counts(step_ids bigint[])
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM FROM tasker_workflow_steps AS s
    WHERE s.workflow_step_id = ANY (step_ids)
    ORDER BY s.workflow_step_id
    FOR NO KEY UPDATE;
    UPDATE tasker_workflow_steps AS s
    SET total_parents = fresh.total_parents, completed_parents = fresh.completed_parents
    FROM unnest(step_ids) AS changed (workflow_step_id)
    CROSS JOIN LATERAL tasker_step_parent_counts(changed.workflow_step_id) AS fresh
    WHERE s.workflow_step_id = changed.workflow_step_id
      AND (s.total_parents, s.completed_parents)
          IS DISTINCT FROM (fresh.total_parents, fresh.completed_parents);
END;
$$;
COMMENT ON FUNCTION tasker_refresh_parent_counts(bigint[]) IS
    'Sets total_parents and completed_parents of the given steps from their edges and their parents'' current_state, locking the steps in id order; rows already right are not written.';

CREATE FUNCTION tasker_step_edges_changed()
RETURNS trigger
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    step_ids bigint[];
BEGIN
    -- The parents of the edges first (FOR SHARE: a parent changing state holds FOR NO
    -- KEY UPDATE), so a parent's state change in flight commits before its state is
    -- read here; one that starts later finds the edge. Parents before children, as a
    -- parent's own state change locks them. A step row this transaction wrote (xmin:
    -- it created the step, invisible to others, or updated it and holds its lock)
    -- needs no lock: the steps of a task being created are never locked.
    IF TG_OP = 'DELETE' THEN
        PERFORM FROM tasker_workflow_steps AS s
        WHERE s.workflow_step_id IN (SELECT o.from_step_id FROM old_rows AS o)
        ORDER BY s.workflow_step_id
        FOR SHARE;
    ELSE
        PERFORM FROM tasker_workflow_steps AS s
        WHERE s.workflow_step_id IN (SELECT n.from_step_id FROM changed_rows AS n)
          AND s.xmin <> pg_current_xact_id()::xid
        ORDER BY s.workflow_step_id
        FOR SHARE;
    END IF;

    IF TG_OP = 'INSERT' THEN
        -- New edges only add parents: count them in, with those already completed.
        PERFORM FROM tasker_workflow_steps AS s
        WHERE s.workflow_step_id IN (SELECT n.to_step_id FROM changed_rows AS n)
          AND s.xmin <> pg_current_xact_id()::xid
        ORDER BY s.workflow_step_id
        FOR NO KEY UPDATE;
        -- A child whose every edge is new gets exactly what the new edges bring; any
        -- other child adds them to its counts. Counting a child's edges costs its
        -- in-degree, so it is done only for a child this transaction wrote whose total
        -- already equals its new edges: one created with its final counts (as the
        -- crate's create_tasks writes its steps), which needs no write at all.
        UPDATE tasker_workflow_steps AS s
        SET total_parents = counted.total, completed_parents = counted.completed
        FROM (
            SELECT child.workflow_step_id,
                   CASE WHEN checked.only_new THEN added.total
                        ELSE child.total_parents + added.total END AS total,
                   CASE WHEN checked.only_new THEN added.completed
                        ELSE child.completed_parents + added.completed END AS completed
            FROM (
                SELECT n.to_step_id,
                       count(*)::integer AS total,
                       (count(*) FILTER (
                           WHERE parent.current_state IN ('complete', 'resolved_manually')))::integer
                           AS completed
                FROM changed_rows AS n
                JOIN tasker_workflow_steps AS parent ON parent.workflow_step_id = n.from_step_id
                GROUP BY n.to_step_id
            ) AS added
            JOIN tasker_workflow_steps AS child ON child.workflow_step_id = added.to_step_id
                -- A child whose parents are not counted yet waits for its backfill.
                AND child.total_parents >= 0
            -- OFFSET 0 keeps the count one subquery, evaluated once per child.
            CROSS JOIN LATERAL (SELECT CASE
                WHEN child.xmin = pg_current_xact_id()::xid AND child.total_parents = added.total
                THEN (SELECT count(*) FROM tasker_workflow_step_edges AS e
                      WHERE e.to_step_id = child.workflow_step_id) = added.total
                ELSE false END AS only_new
                OFFSET 0) AS checked
        ) AS counted
        WHERE s.workflow_step_id = counted.workflow_step_id
          AND (s.total_parents, s.completed_parents) IS DISTINCT FROM (counted.total, counted.completed);
        RETURN NULL;
    END IF;

    -- An edge that is deleted or moved may go with its parent (a cascade from deleting
    -- the step), whose state can no longer be read: recount the children it leaves.
    IF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT o.to_step_id) INTO step_ids FROM old_rows AS o;
    ELSE
        SELECT array_agg(DISTINCT id) INTO step_ids FROM (
            SELECT n.to_step_id FROM changed_rows AS n
            UNION ALL
            SELECT o.to_step_id FROM old_rows AS o
        ) AS both_sides (id);
    END IF;
    PERFORM tasker_refresh_parent_counts(step_ids);
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION tasker_step_edges_changed() IS
    'Trigger: after a statement inserts step edges, adds them to the parent counts of the steps they lead to; after one updates or deletes edges, recounts the parents of the steps they led or lead to.';


-- Adds sign times each step's buckets to its task's counts: to the task's row when no
-- other transaction holds it, else to this backend's stripe of the task, so concurrent
-- writers of one task never wait for each other here. Sends the wake-up when steps
-- became runnable.
CREATE FUNCTION tasker_add_step_counts(
    task_ids bigint[],
    signs integer[],
    states tasker_step_state[],
    eligible boolean[],
    runnable boolean[]
)
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    woken boolean;
BEGIN
    WITH delta AS MATERIALIZED (
        SELECT step.task_id,
               sum(step.sign) AS total,
               sum(step.sign * b.pending) AS pending,
               sum(step.sign * b.in_progress) AS in_progress,
               sum(step.sign * b.complete) AS complete,
               sum(step.sign * b.resolved_manually) AS resolved_manually,
               sum(step.sign * b.failed) AS failed,
               sum(step.sign * b.cancelled) AS cancelled,
               sum(step.sign * b.permanently_failed) AS permanently_failed,
               sum(step.sign * b.runnable_count) AS runnable,
               -- Whether a step became runnable, whatever others of the task did.
               bool_or(step.sign > 0 AND step.runnable) AS gained
        FROM unnest(task_ids, signs, states, eligible, runnable)
                 AS step (task_id, sign, current_state, retry_eligible, runnable)
        CROSS JOIN LATERAL tasker_step_buckets(
            step.current_state, step.retry_eligible, step.runnable) AS b
        GROUP BY step.task_id
    ), free AS (
        -- A probe of the primary key per task in delta (a filter `= ANY (task_ids)` on
        -- each row would cost tasks times rows).
        SELECT c.task_id FROM tasker_task_step_counts AS c
        WHERE c.task_id IN (SELECT d.task_id FROM delta AS d)
        FOR NO KEY UPDATE SKIP LOCKED
    ), kept AS (
        UPDATE tasker_task_step_counts AS c SET
            total_steps = c.total_steps + d.total,
            pending_steps = c.pending_steps + d.pending,
            in_progress_steps = c.in_progress_steps + d.in_progress,
            complete_steps = c.complete_steps + d.complete,
            resolved_manually_steps = c.resolved_manually_steps + d.resolved_manually,
            failed_steps = c.failed_steps + d.failed,
            cancelled_steps = c.cancelled_steps + d.cancelled,
            permanently_failed_steps = c.permanently_failed_steps + d.permanently_failed,
            runnable_steps = c.runnable_steps + d.runnable
        FROM delta AS d
        WHERE c.task_id = d.task_id AND c.task_id IN (SELECT f.task_id FROM free AS f)
        RETURNING c.task_id
    ), striped AS (
        -- This backend's stripe: no other live backend writes it, so this never
        -- waits (but for a rebuild, which holds the task's steps first).
        INSERT INTO tasker_task_step_count_stripes AS s
            (task_id, stripe, total_steps, pending_steps, in_progress_steps, complete_steps,
             resolved_manually_steps, failed_steps, cancelled_steps, permanently_failed_steps,
             runnable_steps)
        SELECT d.task_id, pg_backend_pid(), d.total, d.pending,
               d.in_progress, d.complete, d.resolved_manually, d.failed, d.cancelled,
               d.permanently_failed, d.runnable
        FROM delta AS d
        WHERE d.task_id NOT IN (SELECT k.task_id FROM kept AS k)
          -- Not the steps of a task this transaction is deleting (its rows went first).
          AND EXISTS (SELECT FROM tasker_tasks AS t WHERE t.task_id = d.task_id)
        ORDER BY d.task_id
        ON CONFLICT (task_id, stripe) DO UPDATE SET
            total_steps = s.total_steps + excluded.total_steps,
            pending_steps = s.pending_steps + excluded.pending_steps,
            in_progress_steps = s.in_progress_steps + excluded.in_progress_steps,
            complete_steps = s.complete_steps + excluded.complete_steps,
            resolved_manually_steps = s.resolved_manually_steps + excluded.resolved_manually_steps,
            failed_steps = s.failed_steps + excluded.failed_steps,
            cancelled_steps = s.cancelled_steps + excluded.cancelled_steps,
            permanently_failed_steps = s.permanently_failed_steps + excluded.permanently_failed_steps,
            runnable_steps = s.runnable_steps + excluded.runnable_steps
    )
    SELECT bool_or(d.gained) INTO woken FROM delta AS d;
    IF woken THEN
        -- One per statement whatever it changed, delivered at commit (PostgreSQL folds
        -- equal notifications of one transaction into one).
        PERFORM pg_notify('tasker_runnable_steps', '');
    END IF;
END;
$$;
COMMENT ON FUNCTION tasker_add_step_counts(bigint[], integer[], tasker_step_state[], boolean[], boolean[]) IS
    'Adds (sign +1) or takes away (-1) steps, given as parallel arrays, from their tasks'' counts: a task''s tasker_task_step_counts row when no other transaction holds it, else this backend''s row of tasker_task_step_count_stripes. Never waits for another writer of the counts. Sends NOTIFY tasker_runnable_steps when a step became runnable.';

-- What changed on a step in one write: its task and, before and after, the columns the
-- counts and its children follow.
CREATE TYPE tasker_step_change AS (
    workflow_step_id bigint,
    task_id bigint,
    old_state tasker_step_state,
    old_eligible boolean,
    old_runnable boolean,
    new_state tasker_step_state,
    new_eligible boolean,
    new_runnable boolean
);
COMMENT ON TYPE tasker_step_change IS
    'A step''s current_state, retry_eligible and runnable before and after a write, with its task: what tasker_apply_step_changes follows.';

-- Everything that follows from changes to steps: children of steps that became (or
-- stopped being) complete or resolved_manually gain (or lose) a completed parent, and
-- every step that changed buckets moves between them in its task's counts. The steps
-- trigger calls it for other writers; the crate's write functions call it with the
-- changes they made (they run with tasker.writer_maintains on, which skips the
-- triggers that would derive the same again), and so does it for the children it writes.
CREATE FUNCTION tasker_apply_step_changes(changes tasker_step_change[])
RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET tasker.writer_maintains = 'on'
SET enable_seqscan = off
AS $$
DECLARE
    done CONSTANT tasker_step_state[] := '{complete,resolved_manually}';
    moved_ids bigint[];
    moved_signs integer[];
    children tasker_step_change[];
    counted record;
BEGIN
    SELECT array_agg(c.workflow_step_id),
           array_agg(CASE WHEN c.new_state = ANY (done) THEN 1 ELSE -1 END)
    INTO moved_ids, moved_signs
    FROM unnest(changes) AS c
    WHERE (c.old_state = ANY (done)) <> (c.new_state = ANY (done));
    IF moved_ids IS NOT NULL THEN
        PERFORM FROM tasker_workflow_steps AS s
        WHERE s.workflow_step_id IN (SELECT e.to_step_id FROM tasker_workflow_step_edges AS e
                                      WHERE e.from_step_id = ANY (moved_ids))
        ORDER BY s.workflow_step_id
        FOR NO KEY UPDATE;
        -- The self-join reads each child as it was before this statement: its old
        -- buckets, returned beside the new.
        WITH updated AS (
            UPDATE tasker_workflow_steps AS s
            SET completed_parents = s.completed_parents + change.delta
            FROM (
                SELECT e.to_step_id, sum(moved.sign)::integer AS delta
                FROM unnest(moved_ids, moved_signs) AS moved (workflow_step_id, sign)
                JOIN tasker_workflow_step_edges AS e ON e.from_step_id = moved.workflow_step_id
                GROUP BY e.to_step_id
            ) AS change
            JOIN tasker_workflow_steps AS before ON before.workflow_step_id = change.to_step_id
            WHERE s.workflow_step_id = change.to_step_id AND change.delta <> 0
            RETURNING ROW(s.workflow_step_id, s.task_id,
                          before.current_state, before.retry_eligible, before.runnable,
                          s.current_state, s.retry_eligible, s.runnable)::tasker_step_change
                      AS child
        )
        SELECT array_agg(u.child) INTO children FROM updated AS u;
    END IF;

    -- Each step that changed buckets leaves its old ones (-1) and joins its new ones (+1).
    SELECT array_agg(side.task_id) AS task_ids, array_agg(side.sign) AS signs,
           array_agg(side.current_state) AS states, array_agg(side.retry_eligible) AS eligible,
           array_agg(side.runnable) AS runnable
    INTO counted
    FROM unnest(changes || coalesce(children, '{}')) AS c
    CROSS JOIN LATERAL (VALUES
        (c.task_id, -1, c.old_state, c.old_eligible, c.old_runnable),
        (c.task_id, 1, c.new_state, c.new_eligible, c.new_runnable)
    ) AS side (task_id, sign, current_state, retry_eligible, runnable)
    WHERE (c.old_state, c.old_eligible, c.old_runnable)
          IS DISTINCT FROM (c.new_state, c.new_eligible, c.new_runnable);
    IF counted.task_ids IS NOT NULL THEN
        PERFORM tasker_add_step_counts(counted.task_ids, counted.signs, counted.states,
                                       counted.eligible, counted.runnable);
    END IF;
END;
$$;
COMMENT ON FUNCTION tasker_apply_step_changes(tasker_step_change[]) IS
    'Applies what follows from changes to steps: each child of a step that became (or stopped being) complete or resolved_manually gains (or loses) a completed parent, children locked in id order; then every step that changed current_state, retry_eligible or runnable (the children included) moves between the buckets of its task''s counts.';

CREATE FUNCTION tasker_steps_inserted_or_deleted()
RETURNS trigger
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM tasker_add_step_counts(array_agg(n.task_id), array_fill(1, ARRAY[count(*)::integer]),
                                       array_agg(n.current_state), array_agg(n.retry_eligible),
                                       array_agg(n.runnable))
        FROM changed_rows AS n;
    ELSE
        PERFORM tasker_add_step_counts(array_agg(o.task_id), array_fill(-1, ARRAY[count(*)::integer]),
                                       array_agg(o.current_state), array_agg(o.retry_eligible),
                                       array_agg(o.runnable))
        FROM old_rows AS o;
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION tasker_steps_inserted_or_deleted() IS
    'Trigger: counts inserted steps into their tasks'' tasker_task_step_counts, or deleted steps out of them.';


CREATE FUNCTION tasker_steps_updated()
RETURNS trigger
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    changes tasker_step_change[];
BEGIN
    SELECT array_agg(ROW(n.workflow_step_id, n.task_id,
                         o.current_state, o.retry_eligible, o.runnable,
                         n.current_state, n.retry_eligible, n.runnable)::tasker_step_change)
    INTO changes
    FROM old_rows AS o
    JOIN changed_rows AS n ON n.workflow_step_id = o.workflow_step_id
    WHERE (o.current_state, o.retry_eligible, o.runnable)
          IS DISTINCT FROM (n.current_state, n.retry_eligible, n.runnable);
    IF changes IS NOT NULL THEN
        PERFORM tasker_apply_step_changes(changes);
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION tasker_steps_updated() IS
    'Trigger: after a statement updates steps, applies the changes of those whose current_state, retry_eligible or runnable changed (tasker_apply_step_changes): their tasks'' counts, and the completed parents of the children of steps that became or stopped being complete or resolved_manually. Skipped inside the crate''s write functions, which apply their changes themselves.';


CREATE FUNCTION tasker_tasks_inserted()
RETURNS trigger
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    INSERT INTO tasker_task_step_counts (task_id) SELECT n.task_id FROM changed_rows AS n;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION tasker_tasks_inserted() IS
    'Trigger: gives each new task its (empty) tasker_task_step_counts row.';


CREATE FUNCTION tasker_tasks_deleted()
RETURNS trigger
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    DELETE FROM tasker_task_step_count_stripes AS s
    WHERE s.task_id IN (SELECT o.task_id FROM old_rows AS o);
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION tasker_tasks_deleted() IS
    'Trigger: removes the count stripes of deleted tasks (their counts rows go by foreign key).';


-- Readiness and context read the maintained state --------------------------------------

-- Readiness recomputed from the history, as the previous migration computed it.
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

-- Every readiness and context function calls tasker_step_readiness by name, so they all
-- read the maintained state from here on.
CREATE OR REPLACE FUNCTION tasker_step_readiness(task_ids bigint[], step_ids bigint[])
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

CREATE OR REPLACE FUNCTION get_task_execution_contexts_batch(task_ids bigint[])
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

-- Transitions write the history in one statement -------------------------------------

CREATE OR REPLACE FUNCTION tasker_transition_workflow_step(
    workflow_step_id bigint,
    to_state tasker_step_state,
    metadata jsonb DEFAULT '{}',
    expected_state tasker_step_state DEFAULT NULL
)
RETURNS tasker_workflow_step_transitions
LANGUAGE plpgsql
-- The state this function writes is complete: the maintenance triggers skip its writes.
SET tasker.writer_maintains = 'on'
SET enable_seqscan = off
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
    after tasker_workflow_steps;
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

    -- One statement writes the history and the step's flags and state, so the triggers
    -- that keep readiness run once, at its end, on the final rows: the step's children
    -- (when its completion changes) and then its task's counts are updated once, never
    -- through a passing state in between (the old transition cleared, the new one not yet
    -- written), which would also lock the counts before the children.
    --
    -- The step's flags follow its state: in process exactly while in progress,
    -- processed once final; each start counts an attempt, and clears the delay the
    -- previous failure asked for, which that start has honoured. current_state and
    -- last_failure_at are what the transitions trigger derives from the new transition
    -- (it checks them, and finds nothing to change).
    finished := target IN ('complete', 'cancelled', 'resolved_manually');
    WITH cleared AS (
        UPDATE tasker_workflow_step_transitions AS t SET most_recent = false
        WHERE t.id = latest.id
        RETURNING t.id
    ), flagged AS (
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
            current_state = target,
            last_failure_at = CASE WHEN target = 'error' THEN stamp END,
            updated_at = stamp
        WHERE s.workflow_step_id = step_id
        RETURNING s.workflow_step_id
    )
    INSERT INTO tasker_workflow_step_transitions
        (workflow_step_id, to_state, from_state, metadata, sort_key, most_recent,
         created_at, updated_at)
    SELECT step_id, target, latest.to_state, coalesce(metadata, '{}'),
           coalesce((SELECT max(t.sort_key) FROM tasker_workflow_step_transitions AS t
                      WHERE t.workflow_step_id = step_id), 0) + 1,
           true, stamp, stamp
    -- Reading the CTEs runs them first: the old row loses most_recent before the new
    -- one is inserted (the unique index allows one current transition per step).
    FROM (SELECT count(*) FROM cleared) AS old_one, (SELECT count(*) FROM flagged) AS step
    RETURNING * INTO written;

    SELECT * INTO after FROM tasker_workflow_steps AS s WHERE s.workflow_step_id = step_id;
    PERFORM tasker_apply_step_changes(ARRAY[ROW(step_id, step.task_id,
        step.current_state, step.retry_eligible, step.runnable,
        after.current_state, after.retry_eligible, after.runnable)::tasker_step_change]);
    RETURN written;
END;
$$;

-- Claims walk the active set ----------------------------------------------------------

-- Which steps a worker takes: a filter of step kinds (a step name, optionally of one
-- task namespace, name and version), resolved once per claim into the named steps it
-- takes from any task and the (named task, named step) pairs it takes only from those
-- tasks, as keys named_task_id << 32 | named_step_id.
CREATE FUNCTION tasker_step_filter_keys(step_filter jsonb)
RETURNS TABLE (any_task integer[], scoped bigint[])
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF jsonb_typeof(step_filter) IS DISTINCT FROM 'array' OR EXISTS (
        SELECT FROM jsonb_array_elements(step_filter) AS kind (value)
        WHERE jsonb_typeof(kind.value) <> 'object'
           OR jsonb_typeof(kind.value -> 'step') IS DISTINCT FROM 'string'
           OR EXISTS (SELECT FROM jsonb_each(kind.value) AS field (key, value)
                       WHERE field.key NOT IN ('step', 'namespace', 'task', 'version')
                          OR jsonb_typeof(field.value) NOT IN ('string', 'null'))) THEN
        PERFORM tasker_refuse('invalid_argument',
            'a step filter is a JSON array of objects {"step": name} with optional "namespace", "task" and "version" strings',
            jsonb_build_object('argument', 'step_filter', 'step_filter', step_filter));
    END IF;
    RETURN QUERY
    WITH kind AS (
        SELECT k.value ->> 'step' AS step, k.value ->> 'namespace' AS namespace,
               k.value ->> 'task' AS task, k.value ->> 'version' AS version
        FROM jsonb_array_elements(step_filter) AS k (value)
    )
    SELECT coalesce((SELECT array_agg(DISTINCT named.named_step_id)
                     FROM kind JOIN tasker_named_steps AS named ON named.name = kind.step
                     WHERE num_nulls(kind.namespace, kind.task, kind.version) = 3), '{}'),
           coalesce((SELECT array_agg(DISTINCT (task.named_task_id::bigint << 32)
                                              | named.named_step_id)
                     FROM kind
                     JOIN tasker_named_steps AS named ON named.name = kind.step
                     JOIN tasker_named_tasks AS task
                       ON (kind.task IS NULL OR task.name = kind.task)
                      AND (kind.version IS NULL OR task.version = kind.version)
                     JOIN tasker_task_namespaces AS namespace
                       ON namespace.task_namespace_id = task.task_namespace_id
                      AND (kind.namespace IS NULL OR namespace.name = kind.namespace)
                     WHERE num_nulls(kind.namespace, kind.task, kind.version) < 3), '{}');
END;
$$;
COMMENT ON FUNCTION tasker_step_filter_keys(jsonb) IS
    'Resolves a claim''s step filter, a JSON array of {"step": name, "namespace": ..., "task": ..., "version": ...} (all but step optional), into the named steps taken from any task (any_task) and the pairs taken from some tasks only (scoped: named_task_id << 32 | named_step_id). Refused (invalid_argument) when it has another shape.';

-- PL/pgSQL: a SQL function with a subquery is not inlined, and each call of one plans
-- its statement again. Claims call it only for a step that no unscoped kind of their
-- filter takes, and only when the filter has scoped kinds.
CREATE FUNCTION tasker_step_in_scope(named_step_id integer, task_id bigint, scoped bigint[])
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN ((SELECT t.named_task_id FROM tasker_tasks AS t
              WHERE t.task_id = tasker_step_in_scope.task_id)::bigint << 32
            | named_step_id) = ANY (scoped);
END;
$$;
COMMENT ON FUNCTION tasker_step_in_scope(integer, bigint, bigint[]) IS
    'Whether a step of named step named_step_id in task task_id is of one of the task-scoped kinds of a claim''s step filter (scoped, from tasker_step_filter_keys).';

-- The step filter is a new last argument: the signature of migration 120000 goes.
DROP FUNCTION tasker_claim_ready_steps(bigint[], integer, integer, jsonb);
CREATE FUNCTION tasker_claim_ready_steps(
    task_ids bigint[],
    max_steps integer,
    lease_seconds integer,
    metadata jsonb DEFAULT '{}',
    step_filter jsonb DEFAULT NULL
)
RETURNS SETOF tasker_step_claim_row
LANGUAGE plpgsql
-- Every query below has one good plan whatever the arguments (index ranges and probes),
-- and planning the inlined readiness costs more than running it: with custom plans a
-- claim took 2.5 ms at 100K steps, with the cached generic plans under 1 ms.
SET plan_cache_mode = force_generic_plan
SET tasker.writer_maintains = 'on'
SET enable_seqscan = off
AS $$
DECLARE
    stamp timestamp;
    wanted record;
    locked bigint[];
    startable bigint[];
    claimed tasker_step_claim_row[];
    changes tasker_step_change[];
    any_task integer[];
    scoped bigint[];
BEGIN
    IF max_steps IS NULL OR max_steps < 1 OR lease_seconds IS NULL OR lease_seconds < 1 THEN
        PERFORM tasker_refuse('invalid_argument',
            format('tasker_claim_ready_steps needs max_steps >= 1 and lease_seconds >= 1, got %s and %s',
                   coalesce(max_steps::text, 'NULL'), coalesce(lease_seconds::text, 'NULL')),
            jsonb_build_object('argument', CASE WHEN max_steps IS NULL OR max_steps < 1
                                                THEN 'max_steps' ELSE 'lease_seconds' END,
                               'max_steps', max_steps, 'lease_seconds', lease_seconds));
    END IF;
    -- A claim on a standby (or in a read-only transaction) must fail, not find nothing: a
    -- worker routed there by mistake would otherwise see no work at all.
    IF current_setting('transaction_read_only')::boolean THEN
        RAISE EXCEPTION 'tasker_claim_ready_steps cannot claim in a read-only transaction'
            USING ERRCODE = 'read_only_sql_transaction';
    END IF;
    IF step_filter IS NOT NULL THEN
        SELECT keys.any_task, keys.scoped INTO any_task, scoped
        FROM tasker_step_filter_keys(step_filter) AS keys;
        -- No step of the schema has a kind the filter names.
        IF cardinality(any_task) = 0 AND cardinality(scoped) = 0 THEN
            RETURN;
        END IF;
    END IF;

    -- 1. Lock up to max_steps steps that look ready, skipping the ones another
    -- transaction holds: the lock is taken on the step rows themselves. Only steps of
    -- tasks that are pending or in progress are claimed. Each query is an ordered walk
    -- of tasker_workflow_steps_runnable_idx (the active set; steps still in backoff are
    -- passed over inside the index) that stops once enough steps are locked: over all
    -- tasks at once, or task by task in id order. (One query with a task-id range for both would do the
    -- same with custom plans, but its generic plan misjudges the range and sorts every
    -- candidate instead: 8 ms a claim instead of under 1 ms on a small table.)
    IF tasker_claim_ready_steps.task_ids IS NULL THEN
        SELECT array_agg(candidate.workflow_step_id) INTO locked FROM (
            SELECT step.workflow_step_id
            FROM tasker_workflow_steps AS step
            WHERE step.runnable
              AND coalesce(step.next_retry_at, '-infinity'::timestamp)
                  <= (now() AT TIME ZONE 'UTC')
              AND coalesce((SELECT t.to_state FROM tasker_task_transitions AS t
                             WHERE t.task_id = step.task_id AND t.most_recent),
                           'pending') IN ('pending', 'in_progress')
              AND (any_task IS NULL OR step.named_step_id = ANY (any_task)
                   OR (cardinality(scoped) > 0
                       AND tasker_step_in_scope(step.named_step_id, step.task_id, scoped)))
            ORDER BY step.task_id, step.workflow_step_id
            LIMIT max_steps
            FOR NO KEY UPDATE OF step SKIP LOCKED
        ) AS candidate;
    ELSE
        -- A task id costs one probe of the runnable index when its task has nothing to
        -- claim (or does not exist), before anything else is read of it: a scalar
        -- subquery, run per id (an EXISTS may become a join that reads the whole active
        -- set), and OFFSET 0 keeps the task's state check from being pushed below it.
        FOR wanted IN
            SELECT DISTINCT requested.task_id
            FROM (SELECT listed.task_id
                  FROM unnest(tasker_claim_ready_steps.task_ids) AS listed (task_id)
                  WHERE (SELECT true FROM tasker_workflow_steps AS step
                          WHERE step.task_id = listed.task_id AND step.runnable
                          LIMIT 1)
                  OFFSET 0) AS requested
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
                  AND step.runnable
                  AND coalesce(step.next_retry_at, '-infinity'::timestamp)
                      <= (now() AT TIME ZONE 'UTC')
                  AND (any_task IS NULL OR step.named_step_id = ANY (any_task)
                   OR (cardinality(scoped) > 0
                       AND tasker_step_in_scope(step.named_step_id, step.task_id, scoped)))
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
    -- Every lock is held: the moves are stamped now, after whatever they waited for.
    stamp := clock_timestamp() AT TIME ZONE 'UTC';
    -- Now that the rows are locked, this statement's snapshot tells which are still
    -- pending; they move to in_progress together (pending -> in_progress is a move of
    -- the task state machine, and a pending task is not complete).
    IF startable IS NOT NULL THEN
        WITH pending AS MATERIALIZED (
            SELECT task.task_id, latest.id AS latest_id, latest.to_state AS latest_state,
                   coalesce(top.sort_key, 0) AS top_key
            FROM tasker_tasks AS task
            LEFT JOIN LATERAL (
                SELECT t.id, t.to_state FROM tasker_task_transitions AS t
                WHERE t.task_id = task.task_id AND t.most_recent
                -- OFFSET 0: probed per row, never joined as a whole (see above).
                OFFSET 0
            ) AS latest ON true
            CROSS JOIN LATERAL (
                SELECT max(t.sort_key) AS sort_key FROM tasker_task_transitions AS t
                WHERE t.task_id = task.task_id
            ) AS top
            WHERE task.task_id = ANY (startable)
              AND coalesce(latest.to_state, 'pending') = 'pending'
        ), cleared AS (
            UPDATE tasker_task_transitions AS t SET most_recent = false
            WHERE t.id = ANY (ARRAY(SELECT p.latest_id FROM pending AS p))
            RETURNING t.id
        )
        INSERT INTO tasker_task_transitions
            (task_id, to_state, from_state, metadata, sort_key, most_recent, created_at,
             updated_at)
        SELECT p.task_id, 'in_progress', p.latest_state, coalesce(tasker_claim_ready_steps.metadata, '{}'),
               p.top_key + 1, true, stamp, stamp
        -- Reading cleared runs it first: one current transition per task at any time.
        FROM pending AS p, (SELECT count(*) FROM cleared) AS old_ones;
    END IF;

    -- 3. Recheck with this statement's snapshot, which sees every commit made before
    -- the locks were granted, and move every step that is still ready in one statement:
    -- its history (a step that failed last goes back to pending first: error -> pending
    -- -> in_progress), its flags as tasker_transition_workflow_step sets them for a start (an
    -- attempt, in process, the requested delay honoured), its maintained state and its
    -- lease.
    WITH ready AS MATERIALIZED (
        SELECT step.workflow_step_id, step.task_id, step.named_step_id, named.name::text AS name,
               step.current_state, step.retry_eligible, step.runnable,
               latest.id AS latest_id, latest.to_state AS latest_state,
               coalesce(latest.to_state = 'error', false) AS via_pending,
               coalesce(top.sort_key, 0) AS top_key
        FROM tasker_workflow_steps AS step
        JOIN tasker_named_steps AS named ON named.named_step_id = step.named_step_id
        LEFT JOIN LATERAL (
            SELECT t.id, t.to_state FROM tasker_workflow_step_transitions AS t
            WHERE t.workflow_step_id = step.workflow_step_id AND t.most_recent
            -- OFFSET 0: probed per row, never joined as a whole (see above).
            OFFSET 0
        ) AS latest ON true
        CROSS JOIN LATERAL (
            SELECT max(t.sort_key) AS sort_key FROM tasker_workflow_step_transitions AS t
            WHERE t.workflow_step_id = step.workflow_step_id
        ) AS top
        WHERE step.workflow_step_id = ANY (locked)
          AND step.runnable
          AND coalesce(step.next_retry_at, '-infinity'::timestamp) <= (now() AT TIME ZONE 'UTC')
          AND coalesce((SELECT t.to_state FROM tasker_task_transitions AS t
                         WHERE t.task_id = step.task_id AND t.most_recent),
                       'pending') = 'in_progress'
    ), cleared AS (
        UPDATE tasker_workflow_step_transitions AS t SET most_recent = false
        WHERE t.id = ANY (ARRAY(SELECT r.latest_id FROM ready AS r))
        RETURNING t.id
    ), via_pending AS (
        INSERT INTO tasker_workflow_step_transitions
            (workflow_step_id, to_state, from_state, metadata, sort_key, most_recent,
             created_at, updated_at)
        SELECT r.workflow_step_id, 'pending', 'error', coalesce(tasker_claim_ready_steps.metadata, '{}'),
               r.top_key + 1, false, stamp, stamp
        FROM ready AS r
        WHERE r.via_pending
        RETURNING id
    ), started AS (
        INSERT INTO tasker_workflow_step_transitions
            (workflow_step_id, to_state, from_state, metadata, sort_key, most_recent,
             created_at, updated_at)
        SELECT r.workflow_step_id, 'in_progress',
               CASE WHEN r.via_pending THEN 'pending' ELSE r.latest_state END,
               coalesce(tasker_claim_ready_steps.metadata, '{}'),
               r.top_key + 1 + r.via_pending::integer, true, stamp, stamp
        -- Reading cleared runs it first: one current transition per step at any time;
        -- reading via_pending gives the pending moves the lower ids.
        FROM ready AS r, (SELECT count(*) FROM cleared) AS old_ones,
             (SELECT count(*) FROM via_pending) AS before_these
        RETURNING id, workflow_step_id
    ), moved AS (
        UPDATE tasker_workflow_steps AS s SET
            in_process = true,
            processed = false,
            processed_at = NULL,
            attempts = coalesce(s.attempts, 0) + 1,
            last_attempted_at = stamp,
            backoff_request_seconds = NULL,
            claimed_until = stamp + tasker_claim_ready_steps.lease_seconds * interval '1 second',
            current_state = 'in_progress',
            last_failure_at = NULL,
            updated_at = stamp
        FROM ready AS r
        WHERE s.workflow_step_id = r.workflow_step_id
        RETURNING s.workflow_step_id, s.attempts, s.inputs, s.claimed_until, s.retry_eligible,
                  s.runnable
    )
    SELECT array_agg(ROW(r.workflow_step_id, r.task_id, r.named_step_id, r.name, m.attempts,
                         st.id, m.claimed_until, m.inputs)::tasker_step_claim_row
                     ORDER BY r.task_id, r.workflow_step_id),
           array_agg(ROW(r.workflow_step_id, r.task_id,
                         r.current_state, r.retry_eligible, r.runnable,
                         'in_progress', m.retry_eligible, m.runnable)::tasker_step_change)
    INTO claimed, changes
    FROM ready AS r
    JOIN moved AS m ON m.workflow_step_id = r.workflow_step_id
    JOIN started AS st ON st.workflow_step_id = r.workflow_step_id;

    IF changes IS NOT NULL THEN
        PERFORM tasker_apply_step_changes(changes);
    END IF;
    RETURN QUERY SELECT * FROM unnest(claimed);
END;
$$;
COMMENT ON FUNCTION tasker_claim_ready_steps(bigint[], integer, integer, jsonb, jsonb) IS
    'Claims up to max_steps steps that are ready now, of the given tasks or (task_ids NULL) of any task, and of the step kinds step_filter names (NULL: of every kind; see tasker_step_filter_keys), oldest task (lowest task_id) first, then by step id. Steps are locked with FOR NO KEY UPDATE SKIP LOCKED on their rows, so concurrent callers never get the same step; each is rechecked after locking, moved to in_progress (an error step via pending), counted as an attempt, and leased for lease_seconds. A pending task (new, or moved back to pending to resume it) moves to in_progress with its first claim; steps of tasks in any other state than pending or in_progress are not claimed. Cost: claiming walks tasker_workflow_steps_runnable_idx (runnable steps only) in order until max_steps ready steps are found, with one probe per candidate for its task''s state (and, with a step filter naming task-scoped kinds, one for its task); ready steps the filter leaves are walked past.';

-- Waiting for work -----------------------------------------------------------------------

-- Steps in backoff that will be ready again, by when: where an idle worker finds how
-- long it may sleep.
CREATE INDEX tasker_workflow_steps_backoff_idx
    ON tasker_workflow_steps (next_retry_at)
    WHERE runnable AND next_retry_at IS NOT NULL;

CREATE FUNCTION tasker_listen_for_work()
RETURNS double precision
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $$
DECLARE
    next_gate timestamp;
BEGIN
    -- Registered at the end of this statement's transaction; from then on every commit
    -- that makes steps runnable notifies this session (tasker_add_step_counts).
    LISTEN tasker_runnable_steps;
    IF EXISTS (
        SELECT FROM tasker_workflow_steps AS step
        WHERE step.runnable
          AND coalesce(step.next_retry_at, '-infinity'::timestamp) <= (now() AT TIME ZONE 'UTC')
          AND coalesce((SELECT t.to_state FROM tasker_task_transitions AS t
                         WHERE t.task_id = step.task_id AND t.most_recent),
                       'pending') IN ('pending', 'in_progress')
    ) THEN
        RETURN 0;
    END IF;
    SELECT min(step.next_retry_at) INTO next_gate FROM tasker_workflow_steps AS step
    WHERE step.runnable AND step.next_retry_at > (now() AT TIME ZONE 'UTC');
    RETURN extract(epoch FROM next_gate - (now() AT TIME ZONE 'UTC'));
END;
$$;
COMMENT ON FUNCTION tasker_listen_for_work() IS
    'LISTENs on tasker_runnable_steps (notified by every commit that makes steps runnable) and returns in how many seconds work can next be claimed: 0 when a step is claimable now, else until the earliest end of a backoff of a runnable step; NULL when no step waits for either. An idle worker calls it before it sleeps on the notifications.';

-- Results, one at a time or many in one statement -------------------------------------

CREATE TYPE tasker_step_report_row AS (
    workflow_step_id bigint,
    claim_id bigint,
    transition_id bigint,
    refusal jsonb
);
COMMENT ON TYPE tasker_step_report_row IS
    'The outcome of one result reported by tasker_report_steps: the id of the transition it wrote (for a result reported again under the same claim, the one the first report wrote), or (transition_id NULL) why it was refused, as the JSON detail tasker_refuse raises (unknown_step, claim_lost, claim_expired, invalid_argument).';

CREATE FUNCTION tasker_report_steps(
    workflow_step_ids bigint[],
    claim_ids bigint[],
    outcomes tasker_step_state[],
    payloads jsonb[],
    retry_after_seconds integer[] DEFAULT NULL,
    metadata jsonb DEFAULT '{}',
    permanent boolean[] DEFAULT NULL
)
RETURNS SETOF tasker_step_report_row
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET tasker.writer_maintains = 'on'
SET enable_seqscan = off
AS $$
DECLARE
    stamp timestamp;
    n CONSTANT integer := coalesce(cardinality(workflow_step_ids), 0);
    reported tasker_step_report_row[];
    changes tasker_step_change[];
BEGIN
    IF coalesce(cardinality(claim_ids), 0) <> n OR coalesce(cardinality(outcomes), 0) <> n
       OR coalesce(cardinality(payloads), 0) <> n
       OR (retry_after_seconds IS NOT NULL AND cardinality(retry_after_seconds) <> n)
       OR (permanent IS NOT NULL AND cardinality(permanent) <> n) THEN
        PERFORM tasker_refuse('invalid_argument',
            format('tasker_report_steps needs one claim id, outcome and payload (and retry delay and permanence, when given) per step, got %s steps, %s claim ids, %s outcomes, %s payloads, %s delays and %s permanence flags',
                   n, coalesce(cardinality(claim_ids), 0), coalesce(cardinality(outcomes), 0),
                   coalesce(cardinality(payloads), 0),
                   coalesce(cardinality(retry_after_seconds)::text, 'no'),
                   coalesce(cardinality(permanent)::text, 'no')),
            jsonb_build_object('argument', 'workflow_step_ids', 'steps', n));
    END IF;
    IF EXISTS (SELECT FROM unnest(outcomes) AS o (outcome)
                WHERE o.outcome IS NULL OR o.outcome NOT IN ('complete', 'error', 'pending')) THEN
        PERFORM tasker_refuse('invalid_argument',
            'tasker_report_steps takes the outcomes complete, error and pending (a release) only',
            jsonb_build_object('argument', 'outcomes', 'outcomes', outcomes));
    END IF;
    IF (SELECT count(DISTINCT id) FROM unnest(workflow_step_ids) AS i (id)) <> n THEN
        PERFORM tasker_refuse('invalid_argument',
            'tasker_report_steps takes each workflow step at most once per call',
            jsonb_build_object('argument', 'workflow_step_ids',
                               'workflow_step_ids', workflow_step_ids));
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;

    -- The steps, in id order (the lock order of every writer of steps); then one
    -- statement checks each claim and writes the results of those that hold.
    PERFORM FROM tasker_workflow_steps AS s
    WHERE s.workflow_step_id = ANY (workflow_step_ids)
    ORDER BY s.workflow_step_id
    FOR NO KEY UPDATE;
    stamp := clock_timestamp() AT TIME ZONE 'UTC';

    WITH input AS (
        SELECT *
        FROM unnest(workflow_step_ids, claim_ids, outcomes, payloads,
                    coalesce(retry_after_seconds, array_fill(NULL::integer, ARRAY[n])),
                    coalesce(permanent, array_fill(NULL::boolean, ARRAY[n])))
             WITH ORDINALITY AS i (workflow_step_id, claim_id, outcome, payload, retry_after,
                                   permanent, position)
    ), checked AS MATERIALIZED (
        SELECT i.*, step.task_id, step.current_state, step.retry_eligible, step.runnable,
               latest.id AS latest_id, coalesce(top.sort_key, 0) AS top_key,
               recorded.metadata AS written_metadata,
               CASE WHEN repeated.id IS NULL THEN first.refusal END AS refusal,
               repeated.id AS repeated_id
        FROM input AS i
        LEFT JOIN tasker_workflow_steps AS step ON step.workflow_step_id = i.workflow_step_id
        LEFT JOIN LATERAL (
            SELECT t.id, t.to_state FROM tasker_workflow_step_transitions AS t
            WHERE t.workflow_step_id = i.workflow_step_id AND t.most_recent
            -- OFFSET 0: probed per row, never joined as a whole (see above).
            OFFSET 0
        ) AS latest ON true
        LEFT JOIN LATERAL (
            SELECT max(t.sort_key) AS sort_key FROM tasker_workflow_step_transitions AS t
            WHERE t.workflow_step_id = i.workflow_step_id
        ) AS top ON true
        -- The transition that records the result: a completion, a failure, or the
        -- failure a release goes through (error, then pending).
        CROSS JOIN LATERAL (
            SELECT CASE i.outcome
                       WHEN 'complete' THEN 'complete'::tasker_step_state
                       ELSE 'error'::tasker_step_state
                   END AS to_state,
                   CASE i.outcome
                       WHEN 'complete' THEN coalesce(tasker_report_steps.metadata, '{}')
                       WHEN 'error' THEN tasker_failure_metadata(i.payload)
                       ELSE tasker_failure_metadata(i.payload) || '{"released": true}'::jsonb
                   END AS metadata
        ) AS recorded
        CROSS JOIN LATERAL (
            SELECT CASE WHEN i.retry_after < 0 THEN jsonb_build_object(
                        'refusal', 'invalid_argument', 'argument', 'retry_after_seconds',
                        'message', format('a retry delay must be >= 0 seconds or none, got %s for workflow step %s',
                                          i.retry_after, i.workflow_step_id),
                        'workflow_step_id', i.workflow_step_id,
                        'retry_after_seconds', i.retry_after)
                    ELSE tasker_claim_refusal(i.workflow_step_id, i.claim_id,
                                              step.workflow_step_id IS NOT NULL,
                                              latest.id, latest.to_state, step.claimed_until)
               END AS refusal
        ) AS first
        -- A result reported again under the same claim (a retry after the connection
        -- was lost before the first report's answer came back): the transition right
        -- after the claim's records the same result. It is that report's outcome, not a
        -- lost claim.
        LEFT JOIN LATERAL (
            SELECT after.id
            FROM tasker_workflow_step_transitions AS claim
            JOIN tasker_workflow_step_transitions AS after
              ON after.workflow_step_id = claim.workflow_step_id
             AND after.sort_key = claim.sort_key + 1
            WHERE first.refusal ->> 'refusal' = 'claim_lost'
              AND claim.id = i.claim_id
              AND claim.workflow_step_id = i.workflow_step_id
              AND claim.to_state = 'in_progress'
              AND after.to_state = recorded.to_state
              AND after.metadata = recorded.metadata
              AND (i.outcome <> 'complete' OR step.results IS NOT DISTINCT FROM i.payload)
            OFFSET 0
        ) AS repeated ON true
    ), held AS (
        SELECT * FROM checked AS c WHERE c.refusal IS NULL AND c.repeated_id IS NULL
    ), cleared AS (
        UPDATE tasker_workflow_step_transitions AS t SET most_recent = false
        WHERE t.id = ANY (ARRAY(SELECT h.latest_id FROM held AS h))
        RETURNING t.id
    ), written AS (
        INSERT INTO tasker_workflow_step_transitions
            (workflow_step_id, to_state, from_state, metadata, sort_key, most_recent,
             created_at, updated_at)
        SELECT h.workflow_step_id,
               CASE WHEN h.outcome = 'complete' THEN 'complete'::tasker_step_state
                    ELSE 'error' END,
               'in_progress', h.written_metadata, h.top_key + 1, h.outcome <> 'pending',
               stamp, stamp
        -- Reading cleared runs it first: one current transition per step at any time.
        FROM held AS h, (SELECT count(*) FROM cleared) AS old_ones
        RETURNING id, workflow_step_id
    ), returned AS (
        -- A release goes on from error to pending: no failure backoff gates it, so
        -- another worker may claim it at once.
        INSERT INTO tasker_workflow_step_transitions
            (workflow_step_id, to_state, from_state, metadata, sort_key, most_recent,
             created_at, updated_at)
        SELECT h.workflow_step_id, 'pending', 'error', coalesce(tasker_report_steps.metadata, '{}'),
               h.top_key + 2, true, stamp, stamp
        -- Reading written gives the failures the lower ids.
        FROM held AS h, (SELECT count(*) FROM written) AS before_these
        WHERE h.outcome = 'pending'
        RETURNING id
    ), moved AS (
        -- The flags as tasker_transition_workflow_step sets them for complete and error; a
        -- failure's requested delay is kept until the next start honours it. A
        -- permanent failure makes the step not retryable (it has been attempted, so
        -- it is not retry eligible either); a release gives the attempt back.
        UPDATE tasker_workflow_steps AS s SET
            results = CASE WHEN h.outcome = 'complete' THEN h.payload ELSE s.results END,
            backoff_request_seconds = CASE WHEN h.outcome = 'error' THEN h.retry_after
                                           ELSE s.backoff_request_seconds END,
            retryable = CASE WHEN h.outcome = 'error' AND h.permanent THEN false
                             ELSE s.retryable END,
            attempts = CASE WHEN h.outcome = 'pending'
                            THEN greatest(coalesce(s.attempts, 0) - 1, 0)
                            ELSE s.attempts END,
            in_process = false,
            processed = (h.outcome = 'complete'),
            processed_at = CASE WHEN h.outcome = 'complete' THEN stamp END,
            claimed_until = NULL,
            current_state = h.outcome,
            last_failure_at = CASE WHEN h.outcome = 'error' THEN stamp END,
            updated_at = stamp
        FROM held AS h, (SELECT count(*) FROM returned) AS released
        WHERE s.workflow_step_id = h.workflow_step_id
        RETURNING s.workflow_step_id, s.retry_eligible, s.runnable
    )
    SELECT array_agg(ROW(c.workflow_step_id, c.claim_id, coalesce(w.id, c.repeated_id),
                         c.refusal)::tasker_step_report_row
                     ORDER BY c.position),
           array_agg(ROW(c.workflow_step_id, c.task_id,
                         c.current_state, c.retry_eligible, c.runnable,
                         c.outcome, m.retry_eligible, m.runnable)::tasker_step_change)
               FILTER (WHERE m.workflow_step_id IS NOT NULL)
    INTO reported, changes
    FROM checked AS c
    LEFT JOIN written AS w ON w.workflow_step_id = c.workflow_step_id
    LEFT JOIN moved AS m ON m.workflow_step_id = c.workflow_step_id;

    IF changes IS NOT NULL THEN
        PERFORM tasker_apply_step_changes(changes);
    END IF;
    RETURN QUERY SELECT * FROM unnest(reported);
END;
$$;
COMMENT ON FUNCTION tasker_report_steps(bigint[], bigint[], tasker_step_state[], jsonb[], integer[], jsonb, boolean[]) IS
    'Reports the results of many claimed steps in one statement, one row per step in the order given. Outcome complete records the payload as the step''s results and completes it (metadata in the transition); outcome error moves it to error with tasker_failure_metadata(payload) ({"error": payload, "error_message": its text}) as the transition metadata and the step''s retry delay (retry_after_seconds, NULL: none) as backoff_request_seconds, and when its permanent flag is true makes the step not retryable; outcome pending releases the claim: error with that metadata and "released": true, then pending, the attempt not counted, claimable at once. Each result is checked on its own: one whose claim no longer holds (or whose delay is negative) is refused in its row, transition_id NULL, and the others are written; a result reported again under the same claim (same outcome and payload) is not written twice, its row gives the transition the first report wrote. Refused as a whole (invalid_argument) when the arrays differ in length, an outcome is not complete, error or pending, or a step appears twice.';

-- The single-step calls are the one-element case; a refusal is raised.
CREATE FUNCTION tasker_reported_transition(outcome tasker_step_report_row)
RETURNS tasker_workflow_step_transitions
LANGUAGE plpgsql
AS $$
DECLARE
    written tasker_workflow_step_transitions;
BEGIN
    IF outcome.refusal IS NOT NULL THEN
        PERFORM tasker_refuse(outcome.refusal ->> 'refusal', outcome.refusal ->> 'message',
                              outcome.refusal - 'refusal' - 'message');
    END IF;
    SELECT * INTO written FROM tasker_workflow_step_transitions AS t
    WHERE t.id = outcome.transition_id;
    RETURN written;
END;
$$;
COMMENT ON FUNCTION tasker_reported_transition(tasker_step_report_row) IS
    'The transition a tasker_report_steps row wrote, or its refusal raised.';

CREATE OR REPLACE FUNCTION tasker_complete_step(
    workflow_step_id bigint,
    claim_id bigint,
    results jsonb,
    metadata jsonb DEFAULT '{}'
)
RETURNS tasker_workflow_step_transitions
-- PL/pgSQL, whose plans are kept: a SQL function that is not inlined plans its
-- statement on every call.
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN (SELECT tasker_reported_transition(r)
            FROM tasker_report_steps(ARRAY[tasker_complete_step.workflow_step_id],
                              ARRAY[tasker_complete_step.claim_id], '{complete}',
                              ARRAY[tasker_complete_step.results], NULL, tasker_complete_step.metadata) AS r);
END;
$$;

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
    RETURN (SELECT tasker_reported_transition(r)
            FROM tasker_report_steps(ARRAY[tasker_fail_step.workflow_step_id], ARRAY[tasker_fail_step.claim_id],
                              '{error}', ARRAY[tasker_fail_step.error_info],
                              ARRAY[tasker_fail_step.retry_after_seconds]) AS r);
END;
$$;

CREATE FUNCTION tasker_report_and_claim(
    workflow_step_ids bigint[],
    claim_ids bigint[],
    outcomes tasker_step_state[],
    payloads jsonb[],
    retry_after_seconds integer[],
    task_ids bigint[],
    max_steps integer,
    lease_seconds integer,
    metadata jsonb DEFAULT '{}',
    permanent boolean[] DEFAULT NULL,
    step_filter jsonb DEFAULT NULL
)
RETURNS TABLE (
    reported tasker_step_report_row,
    claimed tasker_step_claim_row
)
LANGUAGE plpgsql
AS $$
BEGIN
    -- Results first: a step completed here may make its children claimable below.
    RETURN QUERY
        SELECT r, NULL::tasker_step_claim_row
        FROM tasker_report_steps(workflow_step_ids, claim_ids, outcomes, payloads,
                          retry_after_seconds, metadata, permanent) AS r;
    IF max_steps > 0 THEN
        RETURN QUERY
            SELECT NULL::tasker_step_report_row, c
            FROM tasker_claim_ready_steps(task_ids, max_steps, lease_seconds, metadata,
                                   step_filter) AS c;
    END IF;
END;
$$;
COMMENT ON FUNCTION tasker_report_and_claim(bigint[], bigint[], tasker_step_state[], jsonb[], integer[], bigint[], integer, integer, jsonb, boolean[], jsonb) IS
    'A worker''s round trip: reports results as tasker_report_steps does, then (max_steps > 0) claims up to max_steps steps as tasker_claim_ready_steps does, in one statement. One row per reported result (claimed NULL), in the order given, then one per claimed step (reported NULL).';

CREATE FUNCTION tasker_step_work_inputs(workflow_step_ids bigint[])
RETURNS TABLE (
    workflow_step_id bigint,
    namespace text,
    task_name text,
    task_version text,
    task_context jsonb,
    parent_results jsonb
)
LANGUAGE sql STABLE
AS $$
    SELECT step.workflow_step_id, namespace.name::text, named_task.name::text,
           named_task.version::text, task.context,
           (SELECT coalesce(jsonb_object_agg(parent_name.name, parent.results), '{}')
            FROM tasker_workflow_step_edges AS edge
            JOIN tasker_workflow_steps AS parent ON parent.workflow_step_id = edge.from_step_id
            JOIN tasker_named_steps AS parent_name
              ON parent_name.named_step_id = parent.named_step_id
            WHERE edge.to_step_id = step.workflow_step_id)
    FROM tasker_workflow_steps AS step
    JOIN tasker_tasks AS task ON task.task_id = step.task_id
    JOIN tasker_named_tasks AS named_task ON named_task.named_task_id = task.named_task_id
    JOIN tasker_task_namespaces AS namespace
      ON namespace.task_namespace_id = named_task.task_namespace_id
    WHERE step.workflow_step_id = ANY (tasker_step_work_inputs.workflow_step_ids)
$$;
COMMENT ON FUNCTION tasker_step_work_inputs(bigint[]) IS
    'What a worker needs to run claimed steps, one row per existing step: its task''s namespace, name, version and context, and the results of its parents as a JSON object keyed by parent step name. Cost: a few index probes per step and per parent.';

-- Finalizing ------------------------------------------------------------------------

-- The tasks a finalizer looks at: those in progress (a task starts with its first
-- claim), found without reading the others.
CREATE INDEX tasker_task_transitions_in_progress_idx
    ON tasker_task_transitions (task_id)
    WHERE most_recent AND to_state = 'in_progress';

CREATE FUNCTION tasker_settled_tasks(
    after_task_id bigint,
    max_tasks integer,
    among bigint[] DEFAULT NULL
)
RETURNS SETOF bigint
LANGUAGE sql STABLE
AS $$
    SELECT active.task_id
    FROM tasker_task_transitions AS active
    CROSS JOIN LATERAL get_task_execution_contexts_batch(ARRAY[active.task_id]) AS context
    WHERE active.most_recent
      AND active.to_state = 'in_progress'
      AND active.task_id > coalesce(after_task_id, 0)
      -- Filtered before the context is read: only these tasks' contexts are.
      AND (among IS NULL OR active.task_id = ANY (among))
      -- What tasker_finalize_task finalizes: every step complete, or blocked with no failed
      -- step that has a retry left (such a step is runnable).
      AND (context.execution_status = 'all_complete'
           OR (context.execution_status = 'blocked_by_failures'
               AND (SELECT counts.runnable_steps
                    FROM tasker_task_step_counts_of(active.task_id) AS counts) = 0))
    ORDER BY active.task_id
    LIMIT max_tasks
$$;
COMMENT ON FUNCTION tasker_settled_tasks(bigint, integer, bigint[]) IS
    'Up to max_tasks tasks in progress with an id above after_task_id (NULL: 0), and among the given ones (NULL: any), that tasker_finalize_task would finalize now (all steps complete, or blocked by failures with no retry left), in id order. Cost: a walk of tasker_task_transitions_in_progress_idx (tasks in progress only, one index entry each) with the execution context of each candidate, until max_tasks are found.';

CREATE FUNCTION tasker_finalize_settled_tasks(
    max_tasks integer,
    metadata jsonb DEFAULT '{}',
    among bigint[] DEFAULT NULL
)
RETURNS TABLE (task_id bigint, task_state tasker_task_state)
LANGUAGE plpgsql
AS $$
DECLARE
    settled bigint;
BEGIN
    IF max_tasks IS NULL OR max_tasks < 1 THEN
        PERFORM tasker_refuse('invalid_argument',
            format('tasker_finalize_settled_tasks needs max_tasks >= 1, got %s',
                   coalesce(max_tasks::text, 'NULL')),
            jsonb_build_object('argument', 'max_tasks', 'max_tasks', max_tasks));
    END IF;
    FOR settled IN SELECT s FROM tasker_settled_tasks(0, max_tasks, among) AS s LOOP
        BEGIN
            task_state := tasker_finalize_task(settled, metadata);
            task_id := settled;
            RETURN NEXT;
        EXCEPTION WHEN SQLSTATE 'TK001' THEN
            -- A step of the task changed since it was found (a manual retry, say): it
            -- is not settled any more, and the others are finalized all the same.
            NULL;
        END;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION tasker_finalize_settled_tasks(integer, jsonb, bigint[]) IS
    'Finalizes (tasker_finalize_task) up to max_tasks tasks that tasker_settled_tasks finds (among the given ones, NULL: any), lowest id first, and returns each with the state it was finalized to; a task that changed in between is passed over. For a sweeper that finalizes tasks whoever ran their last step: call it until it returns fewer than max_tasks rows. Cost: that of tasker_settled_tasks plus tasker_finalize_task per task.';

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

-- No backfill here: rows that exist already (only a database adopted from the Rails
-- engine has any) keep total_parents -1, which is never runnable, and their tasks have
-- no counts row (so no context) until tasker_rebuild_readiness reaches them, in bounded
-- batches that leave the tables open to writers (tasker_diesel::adoption). The triggers
-- below keep every change made meanwhile, and the rebuild recounts what it finds.

-- The crate's write functions (claims, results, transitions) write the maintained state
-- in the statements that change the history and apply what follows from it
-- themselves (tasker_apply_step_changes); they run with tasker.writer_maintains on, and
-- these three triggers, which would derive the same again, skip their statements.
-- Every other writer gets them.
CREATE TRIGGER tasker_workflow_step_transitions_maintain_insert
    AFTER INSERT ON tasker_workflow_step_transitions
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT
    WHEN (current_setting('tasker.writer_maintains', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION tasker_step_transitions_changed();

CREATE TRIGGER tasker_workflow_step_transitions_maintain_update
    AFTER UPDATE ON tasker_workflow_step_transitions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS changed_rows
    FOR EACH STATEMENT
    WHEN (current_setting('tasker.writer_maintains', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION tasker_step_transitions_changed();

CREATE TRIGGER tasker_workflow_step_transitions_maintain_delete
    AFTER DELETE ON tasker_workflow_step_transitions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasker_step_transitions_changed();

-- Named to sort before tasker_workflow_step_edges_check_*, which lock the task: triggers
-- of one event fire in name order, and steps are locked before their task.
CREATE TRIGGER tasker_workflow_step_edges_apply_insert
    AFTER INSERT ON tasker_workflow_step_edges
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasker_step_edges_changed();

CREATE TRIGGER tasker_workflow_step_edges_apply_update
    AFTER UPDATE ON tasker_workflow_step_edges
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasker_step_edges_changed();

CREATE TRIGGER tasker_workflow_step_edges_apply_delete
    AFTER DELETE ON tasker_workflow_step_edges
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasker_step_edges_changed();

CREATE TRIGGER tasker_workflow_steps_count_insert
    AFTER INSERT ON tasker_workflow_steps
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasker_steps_inserted_or_deleted();

CREATE TRIGGER tasker_workflow_steps_count_delete
    AFTER DELETE ON tasker_workflow_steps
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasker_steps_inserted_or_deleted();

CREATE TRIGGER tasker_workflow_steps_maintain_update
    AFTER UPDATE ON tasker_workflow_steps
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS changed_rows
    FOR EACH STATEMENT
    WHEN (current_setting('tasker.writer_maintains', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION tasker_steps_updated();

CREATE TRIGGER tasker_tasks_count_insert
    AFTER INSERT ON tasker_tasks
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasker_tasks_inserted();

CREATE TRIGGER tasker_tasks_count_delete
    AFTER DELETE ON tasker_tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasker_tasks_deleted();

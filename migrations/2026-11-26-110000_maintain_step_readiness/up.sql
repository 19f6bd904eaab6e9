-- Maintained readiness: each step keeps its current state, its parent counts and
-- whether it may run, each task its step counts, updated in the transaction that
-- changes the history, whoever writes it (this crate, the Rails engine, psql).
-- Readiness and context then read one row per step or task instead of recomputing
-- them from the transition log, and claiming from any task is a range scan of the
-- active set.
--
-- What is kept, and by whom:
--   tasker_workflow_steps.claimed_until                   <- the write path (claims)
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
-- The readiness recomputed from the history (tasker_step_readiness_from_history, with
-- the readiness functions) is the tests' oracle and what explains a step;
-- tasker_readiness_drift checks the kept columns against it.

ALTER TABLE tasker_workflow_steps ADD COLUMN claimed_until timestamp;
COMMENT ON COLUMN tasker_workflow_steps.claimed_until IS
    'While a worker holds a claim on the step (in_process): until when the claim holds (UTC). Past it the claim has expired: tasker_release_expired_claims makes the step claimable again and the old claim''s result is refused. NULL: no claim, or a step moved to in_progress without a lease.';

-- The expired-claim sweep reads only steps in process.
CREATE INDEX tasker_workflow_steps_claimed_until_idx
    ON tasker_workflow_steps (claimed_until)
    WHERE in_process;

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

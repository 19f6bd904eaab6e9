-- The write path: state transitions of steps and tasks, claiming ready steps with a
-- lease, reporting results one at a time or in batches, waiting for work, releasing
-- expired claims, cancelling and finalizing tasks. Each public function is one round
-- trip and atomic (a function runs inside the caller's statement: an error undoes all
-- of it).
--
-- Rules written once:
--   * the two state machines: tasker_step_transition_allowed / tasker_task_transition_allowed;
--   * how a transition is written and which step flags follow from each state:
--     tasker_transition_workflow_step / tasker_transition_task, which every other function calls;
--   * readiness: the maintained columns (tasker_step_runnable and next_retry_at), which
--     claims read from the active set.
--
-- Locking. A step or task row is locked (FOR NO KEY UPDATE, which leaves foreign-key
-- checks of inserted transitions alone) before its history changes, so writers of one
-- entity queue up and each one reads the state its predecessor committed (READ
-- COMMITTED: every statement of a PL/pgSQL function takes a new snapshot). Lock order:
-- a task's steps, in id order, before the task. tasker_claim_ready_steps never waits for a
-- step (it skips locked ones, SKIP LOCKED); it waits only for the row of a pending task
-- that another transaction is starting, in task id order. No holder of a task lock
-- waits for a step lock, so there is no cycle.
--
-- Refusals (an illegal move, a lost claim, ...) are raised by tasker_refuse with
-- SQLSTATE TK001, CONSTRAINT 'tasker_refused' and a JSON DETAIL naming the refusal and
-- its values, which the Rust crate turns into typed errors.
--
-- Time. Transitions and leases are stamped with clock_timestamp() in UTC, the moment
-- the change is made, so a history's timestamps follow the order of the commits
-- (a child's start is always later than its parents' completion). Readiness keeps
-- using the transaction's now().

-- What a failed attempt's transition records: the crate's {"error": ...} and the
-- error_message the Rails engine's transition formatter reads, as text.
CREATE FUNCTION tasker_failure_metadata(error jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT jsonb_build_object(
        'error', error,
        'error_message', CASE jsonb_typeof(error)
                             WHEN 'string' THEN error #>> '{}'
                             WHEN 'object' THEN coalesce(error ->> 'message', error::text)
                             ELSE error::text
                         END)
$$;
COMMENT ON FUNCTION tasker_failure_metadata(jsonb) IS
    'The metadata of a failure transition: {"error": error, "error_message": text}, the text being the error itself when it is a JSON string, its "message" when it is an object that has one, else its JSON text (the Rails engine reads error_message).';

CREATE FUNCTION tasker_refuse(refusal text, message text, detail jsonb)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'TK001',
        MESSAGE = message,
        DETAIL = (jsonb_build_object('refusal', refusal, 'message', message) || detail)::text,
        CONSTRAINT = 'tasker_refused';
END;
$$;
COMMENT ON FUNCTION tasker_refuse(text, text, jsonb) IS
    'Raises a write-path refusal: SQLSTATE TK001, constraint name tasker_refused, DETAIL = the JSON object {"refusal": refusal, "message": message} || detail.';

-- State machines ------------------------------------------------------------------------

CREATE FUNCTION tasker_step_transition_allowed(from_state tasker_step_state, to_state tasker_step_state)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(CASE from_state
        WHEN 'pending' THEN to_state IN ('in_progress', 'error', 'cancelled', 'resolved_manually')
        WHEN 'in_progress' THEN to_state IN ('complete', 'error', 'cancelled')
        WHEN 'error' THEN to_state IN ('pending', 'resolved_manually')
        ELSE false
    END, false)
$$;
COMMENT ON FUNCTION tasker_step_transition_allowed(tasker_step_state, tasker_step_state) IS
    'The step state machine: whether a step may move from from_state to to_state. complete, cancelled and resolved_manually are final; same-state moves are refused.';

CREATE FUNCTION tasker_task_transition_allowed(from_state tasker_task_state, to_state tasker_task_state)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(CASE from_state
        WHEN 'pending' THEN to_state IN ('in_progress', 'cancelled', 'error')
        WHEN 'in_progress' THEN to_state IN ('complete', 'error', 'cancelled', 'pending')
        WHEN 'error' THEN to_state IN ('pending', 'resolved_manually')
        WHEN 'complete' THEN to_state = 'cancelled'
        WHEN 'resolved_manually' THEN to_state = 'cancelled'
        ELSE false
    END, false)
$$;
COMMENT ON FUNCTION tasker_task_transition_allowed(tasker_task_state, tasker_task_state) IS
    'The task state machine: whether a task may move from from_state to to_state. cancelled is final; same-state moves are refused.';

-- Transitions write the history in one statement -------------------------------------

CREATE FUNCTION tasker_transition_workflow_step(
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
COMMENT ON FUNCTION tasker_transition_workflow_step(bigint, tasker_step_state, jsonb, tasker_step_state) IS
    'Moves a step to to_state in one call: locks the step, checks the move against the step state machine (and, when expected_state is given, that the step is in it: compare-and-swap), clears the old most_recent, appends the transition with the next sort_key and metadata, and sets the step''s flags: in_process while in_progress, processed and processed_at once complete, cancelled or resolved_manually, attempts + 1, last_attempted_at and backoff_request_seconds cleared on each move to in_progress, claimed_until cleared. Returns the new transition. Refusals: unknown_step, step_state_conflict, illegal_step_transition.';

CREATE FUNCTION tasker_transition_task(
    task_id bigint,
    to_state tasker_task_state,
    metadata jsonb DEFAULT '{}',
    expected_state tasker_task_state DEFAULT NULL
)
RETURNS tasker_task_transitions
LANGUAGE plpgsql
AS $$
DECLARE
    the_task_id CONSTANT bigint := tasker_transition_task.task_id;
    target CONSTANT tasker_task_state := tasker_transition_task.to_state;
    stamp CONSTANT timestamp := clock_timestamp() AT TIME ZONE 'UTC';
    latest tasker_task_transitions;
    current tasker_task_state;
    written tasker_task_transitions;
BEGIN
    PERFORM FROM tasker_tasks AS t WHERE t.task_id = the_task_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        PERFORM tasker_refuse('unknown_task', format('task %s does not exist', the_task_id),
                              jsonb_build_object('task_id', the_task_id));
    END IF;

    SELECT * INTO latest FROM tasker_task_transitions AS t
    WHERE t.task_id = the_task_id AND t.most_recent;
    current := coalesce(latest.to_state, 'pending');

    IF expected_state IS NOT NULL AND expected_state <> current THEN
        PERFORM tasker_refuse('task_state_conflict',
            format('task %s is %s, not the expected %s', the_task_id, current, expected_state),
            jsonb_build_object('task_id', the_task_id, 'expected', expected_state,
                               'actual', current));
    END IF;
    IF target IS NULL OR NOT tasker_task_transition_allowed(current, target) THEN
        PERFORM tasker_refuse('illegal_task_transition',
            format('task %s cannot move from %s to %s', the_task_id, current,
                   coalesce(target::text, 'NULL')),
            jsonb_build_object('task_id', the_task_id, 'from', current, 'to', target));
    END IF;

    UPDATE tasker_task_transitions AS t SET most_recent = false WHERE t.id = latest.id;
    INSERT INTO tasker_task_transitions
        (task_id, to_state, from_state, metadata, sort_key, most_recent, created_at, updated_at)
    VALUES (the_task_id, target, latest.to_state, coalesce(metadata, '{}'),
            coalesce((SELECT max(t.sort_key) FROM tasker_task_transitions AS t
                       WHERE t.task_id = the_task_id), 0) + 1,
            true, stamp, stamp)
    RETURNING * INTO written;

    UPDATE tasker_tasks AS t SET complete = (target = 'complete'), updated_at = stamp
    WHERE t.task_id = the_task_id;

    RETURN written;
END;
$$;
COMMENT ON FUNCTION tasker_transition_task(bigint, tasker_task_state, jsonb, tasker_task_state) IS
    'Moves a task to to_state in one call: locks the task, checks the move against the task state machine (and expected_state when given: compare-and-swap), clears the old most_recent, appends the transition with the next sort_key and metadata, and sets tasker_tasks.complete to whether the new state is complete. Returns the new transition. Refusals: unknown_task, task_state_conflict, illegal_task_transition.';

-- Claims --------------------------------------------------------------------------------

CREATE TYPE tasker_step_claim_row AS (
    workflow_step_id bigint,
    task_id bigint,
    named_step_id integer,
    name text,
    attempt integer,
    claim_id bigint,
    claimed_until timestamp,
    inputs jsonb
);
COMMENT ON TYPE tasker_step_claim_row IS
    'A step handed to a worker by tasker_claim_ready_steps. claim_id is the id of the step''s in_progress transition: the claim holds while that transition is the step''s most recent one and claimed_until has not passed.';

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

-- Why a result reported under claim claim_id on a step is refused, or NULL when the
-- claim holds: written once for the single calls and the batches.
CREATE FUNCTION tasker_claim_refusal(
    workflow_step_id bigint,
    claim_id bigint,
    step_exists boolean,
    current_id bigint,
    current_state tasker_step_state,
    claimed_until timestamp
)
RETURNS jsonb
-- PL/pgSQL: a SQL function that reads the clock is not inlined, and each call of one
-- plans its statement again.
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF NOT step_exists THEN
        RETURN jsonb_build_object(
            'refusal', 'unknown_step',
            'message', format('workflow step %s does not exist', workflow_step_id),
            'workflow_step_id', workflow_step_id);
    ELSIF current_id IS DISTINCT FROM claim_id OR current_state <> 'in_progress' THEN
        RETURN jsonb_build_object(
            'refusal', 'claim_lost',
            'message', format('claim %s on workflow step %s is lost: the step is now %s',
                              claim_id, workflow_step_id, coalesce(current_state, 'pending')),
            'workflow_step_id', workflow_step_id, 'claim_id', claim_id,
            'state', coalesce(current_state, 'pending'));
    ELSIF claimed_until <= clock_timestamp() AT TIME ZONE 'UTC' THEN
        RETURN jsonb_build_object(
            'refusal', 'claim_expired',
            'message', format('claim %s on workflow step %s expired at %s',
                              claim_id, workflow_step_id, claimed_until),
            'workflow_step_id', workflow_step_id, 'claim_id', claim_id,
            'claimed_until', claimed_until);
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION tasker_claim_refusal(bigint, bigint, boolean, bigint, tasker_step_state, timestamp) IS
    'Whether claim claim_id still holds on a step, given whether the step exists, the id and to_state of its most recent transition and its claimed_until: NULL when it holds, else the refusal (unknown_step, claim_lost, claim_expired) as the JSON detail tasker_refuse raises.';

CREATE FUNCTION tasker_held_claim(workflow_step_id bigint, claim_id bigint)
RETURNS tasker_workflow_steps
LANGUAGE plpgsql
AS $$
DECLARE
    step_id CONSTANT bigint := tasker_held_claim.workflow_step_id;
    step tasker_workflow_steps;
    latest tasker_workflow_step_transitions;
    refusal jsonb;
BEGIN
    SELECT * INTO step FROM tasker_workflow_steps AS s
    WHERE s.workflow_step_id = step_id
    FOR NO KEY UPDATE;
    SELECT * INTO latest FROM tasker_workflow_step_transitions AS t
    WHERE t.workflow_step_id = step_id AND t.most_recent;
    refusal := tasker_claim_refusal(step_id, claim_id, step.workflow_step_id IS NOT NULL,
                                    latest.id, latest.to_state, step.claimed_until);
    IF refusal IS NOT NULL THEN
        PERFORM tasker_refuse(refusal ->> 'refusal', refusal ->> 'message',
                              refusal - 'refusal' - 'message');
    END IF;
    RETURN step;
END;
$$;
COMMENT ON FUNCTION tasker_held_claim(bigint, bigint) IS
    'Locks a step and checks that claim claim_id still holds on it: its in_progress transition is still the most recent one and the lease has not passed. Returns the step. Refusals: unknown_step, claim_lost, claim_expired.';

CREATE FUNCTION tasker_extend_step_claim(workflow_step_id bigint, claim_id bigint, lease_seconds integer)
RETURNS timestamp
LANGUAGE plpgsql
AS $$
DECLARE
    until timestamp;
BEGIN
    IF lease_seconds IS NULL OR lease_seconds < 1 THEN
        PERFORM tasker_refuse('invalid_argument',
            format('tasker_extend_step_claim needs lease_seconds >= 1, got %s',
                   coalesce(lease_seconds::text, 'NULL')),
            jsonb_build_object('argument', 'lease_seconds', 'lease_seconds', lease_seconds));
    END IF;
    PERFORM tasker_held_claim(workflow_step_id, claim_id);
    until := clock_timestamp() AT TIME ZONE 'UTC' + lease_seconds * interval '1 second';
    UPDATE tasker_workflow_steps AS s SET claimed_until = until
    WHERE s.workflow_step_id = tasker_extend_step_claim.workflow_step_id;
    RETURN until;
END;
$$;
COMMENT ON FUNCTION tasker_extend_step_claim(bigint, bigint, integer) IS
    'Heartbeat: extends a claim that still holds to lease_seconds from now and returns the new claimed_until. Refusals: claim_lost, claim_expired, invalid_argument.';

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

CREATE FUNCTION tasker_complete_step(
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
COMMENT ON FUNCTION tasker_complete_step(bigint, bigint, jsonb, jsonb) IS
    'Records the results of a claimed step and moves it to complete (processed). Refused with claim_lost or claim_expired when the claim no longer holds; then nothing is written.';

CREATE FUNCTION tasker_fail_step(
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
COMMENT ON FUNCTION tasker_fail_step(bigint, bigint, jsonb, integer) IS
    'Records the failure of a claimed step: moves it to error with tasker_failure_metadata(error_info) ({"error": error_info, "error_message": its text}) as the transition metadata and sets backoff_request_seconds to retry_after_seconds (NULL: no requested delay). The step is retried by a later claim once the readiness gates allow it (attempts below retry_limit, retryable, backoff passed), else it is permanently failed. Refused with claim_lost or claim_expired when the claim no longer holds.';

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

CREATE FUNCTION tasker_release_expired_claims(max_steps integer DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql
AS $$
DECLARE
    expired record;
BEGIN
    FOR expired IN
        SELECT s.workflow_step_id, s.claimed_until,
               (SELECT t.id FROM tasker_workflow_step_transitions AS t
                 WHERE t.workflow_step_id = s.workflow_step_id AND t.most_recent) AS claim_id
        FROM tasker_workflow_steps AS s
        WHERE s.in_process AND s.claimed_until <= clock_timestamp() AT TIME ZONE 'UTC'
          -- A row whose flags disagree with its history (written by hand) is left alone
          -- rather than failing the whole sweep.
          AND EXISTS (SELECT FROM tasker_workflow_step_transitions AS t
                       WHERE t.workflow_step_id = s.workflow_step_id AND t.most_recent
                         AND t.to_state = 'in_progress')
        ORDER BY s.claimed_until, s.workflow_step_id
        LIMIT max_steps
        FOR NO KEY UPDATE OF s SKIP LOCKED
    LOOP
        PERFORM tasker_transition_workflow_step(expired.workflow_step_id, 'error',
            tasker_failure_metadata(jsonb_build_object(
                'message', 'claim expired', 'claim_id', expired.claim_id,
                'claimed_until', expired.claimed_until)),
            'in_progress');
        RETURN NEXT expired.workflow_step_id;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION tasker_release_expired_claims(integer) IS
    'Moves steps whose claim has expired (in process, claimed_until passed) to error, as a failed attempt, so they are retried under the usual retry rules and the late result of the old claim is refused; returns their ids. At most max_steps when given; locked steps are skipped. Cost: a range scan of tasker_workflow_steps_claimed_until_idx over expired claims.';

-- Task lifecycle ------------------------------------------------------------------------

CREATE FUNCTION tasker_cancel_task(task_id bigint, metadata jsonb DEFAULT '{}')
RETURNS tasker_task_transitions
LANGUAGE plpgsql
AS $$
DECLARE
    written tasker_task_transitions;
    finished tasker_task_state;
BEGIN
    -- Lock the task's unfinished steps first (processed ones are final), in id order
    -- (steps before their task), waiting for writers in flight (a worker completing a
    -- step); then the next statements' snapshots see their commits and pick exactly the
    -- steps still unfinished.
    PERFORM FROM tasker_workflow_steps AS s
    WHERE s.task_id = tasker_cancel_task.task_id AND NOT s.processed
    ORDER BY s.workflow_step_id
    FOR NO KEY UPDATE;
    -- Then the task: a finalize that holds it commits first, and the state read next
    -- sees it, so a late cancel refuses instead of overwriting the finalize.
    PERFORM FROM tasker_tasks AS t WHERE t.task_id = tasker_cancel_task.task_id FOR NO KEY UPDATE;
    SELECT t.to_state INTO finished FROM tasker_task_transitions AS t
    WHERE t.task_id = tasker_cancel_task.task_id AND t.most_recent
      AND t.to_state IN ('complete', 'resolved_manually', 'cancelled');
    IF finished IS NOT NULL THEN
        PERFORM tasker_refuse('task_finished',
            format('task %s is already %s: there is nothing left to cancel',
                   tasker_cancel_task.task_id, finished),
            jsonb_build_object('task_id', tasker_cancel_task.task_id, 'state', finished));
    END IF;
    written := tasker_transition_task(tasker_cancel_task.task_id, 'cancelled', metadata);
    PERFORM tasker_transition_workflow_step(step.workflow_step_id, 'cancelled', metadata)
    FROM (
        SELECT s.workflow_step_id FROM tasker_workflow_steps AS s
        WHERE s.task_id = tasker_cancel_task.task_id AND NOT s.processed
          AND coalesce((SELECT t.to_state FROM tasker_workflow_step_transitions AS t
                         WHERE t.workflow_step_id = s.workflow_step_id AND t.most_recent),
                       'pending') IN ('pending', 'in_progress')
        ORDER BY s.workflow_step_id
    ) AS step;
    RETURN written;
END;
$$;
COMMENT ON FUNCTION tasker_cancel_task(bigint, jsonb) IS
    'Cancels a task and its pending and in-progress steps (a worker''s claim on a cancelled step is lost). Steps in error stay in error: the step state machine has no error -> cancelled move. Refused (task_finished) for a task already complete, resolved_manually or cancelled, also when its finalize committed while this call waited for the task: cancelling stops work that is not done (tasker_transition_task moves a finished task to cancelled for an operator who means it). Other refusals as tasker_transition_task (an errored task cannot be cancelled: error -> cancelled is not a task move).';

CREATE FUNCTION tasker_finalize_task(task_id bigint, metadata jsonb DEFAULT '{}')
RETURNS tasker_task_state
LANGUAGE plpgsql
AS $$
DECLARE
    the_task_id CONSTANT bigint := tasker_finalize_task.task_id;
    ctx tasker_task_execution_context_row;
BEGIN
    -- The task's unfinished steps, then the task (the lock order): no claim can take a
    -- step while the task is finalized, and claims in flight commit first, so the
    -- context read next sees them.
    PERFORM FROM tasker_workflow_steps AS s
    WHERE s.task_id = the_task_id AND NOT s.processed
    ORDER BY s.workflow_step_id
    FOR NO KEY UPDATE;
    PERFORM FROM tasker_tasks AS t WHERE t.task_id = the_task_id FOR NO KEY UPDATE;
    SELECT * INTO ctx FROM get_task_execution_context(the_task_id);
    IF ctx.task_id IS NULL THEN
        PERFORM tasker_refuse('unknown_task', format('task %s does not exist', the_task_id),
                              jsonb_build_object('task_id', the_task_id));
    END IF;
    -- Finished otherwise: left as it is (a cancelled task's context reads all_complete,
    -- which must not turn it into a complete one).
    IF ctx.status IN ('cancelled', 'resolved_manually') THEN
        RETURN ctx.status;
    END IF;

    IF ctx.execution_status = 'all_complete' THEN
        IF ctx.status = 'complete' THEN
            RETURN 'complete';
        END IF;
        -- A task blocked earlier whose failed steps were since resolved resumes first.
        IF ctx.status = 'error' THEN
            PERFORM tasker_transition_task(the_task_id, 'pending', metadata, 'error');
        END IF;
        IF ctx.status IN ('pending', 'error') THEN
            PERFORM tasker_transition_task(the_task_id, 'in_progress', metadata, 'pending');
        END IF;
        PERFORM tasker_transition_task(the_task_id, 'complete', metadata);
        RETURN 'complete';
    ELSIF ctx.execution_status = 'blocked_by_failures' THEN
        IF ctx.status = 'error' THEN
            RETURN 'error';
        END IF;
        -- Blocked for good only once no failed step has a retry left: one still in its
        -- backoff will be ready again and may unblock the rest.
        IF NOT EXISTS (SELECT FROM tasker_step_readiness(ARRAY[the_task_id], NULL) AS r
                        WHERE r.current_state = 'error' AND r.retry_eligible) THEN
            PERFORM tasker_transition_task(the_task_id, 'error', metadata);
            RETURN 'error';
        END IF;
    END IF;
    PERFORM tasker_refuse('task_not_finished',
        format('task %s cannot be finalized: it is %s', the_task_id, ctx.execution_status)
            || CASE WHEN ctx.execution_status = 'blocked_by_failures'
                    THEN ' and a failed step still has a retry left' ELSE '' END,
        jsonb_build_object('task_id', the_task_id, 'execution_status', ctx.execution_status));
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION tasker_finalize_task(bigint, jsonb) IS
    'Finalizes a task from its execution context: all_complete moves it to complete (through in_progress when still pending, and through pending and in_progress when in error after its failed steps were resolved; tasker_tasks.complete becomes true), blocked_by_failures moves it to error once no failed step has a retry left. The task''s unfinished steps are locked first, so no claim slips in between. Idempotent: a task already in that state is left as it is, and so is a task already cancelled or resolved_manually (its state is returned). Returns the task''s state. Refusals: unknown_task, task_not_finished (work remains, or a blocked task''s failed step still has a retry left).';

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

-- The write path: state transitions of steps and tasks,
-- claiming ready steps with a lease, recording results, releasing expired claims,
-- cancelling and finalizing tasks. Each public function is one round trip and atomic
-- (a function runs inside the caller's statement: an error undoes all of it).
--
-- Rules written once:
--   * the two state machines: tasker_step_transition_allowed / tasker_task_transition_allowed;
--   * how a transition is written and which step flags follow from each state:
--     tasker_transition_workflow_step / tasker_transition_task, which every other function calls;
--   * readiness: tasker_step_readiness (previous migration), which the claim rechecks.
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

ALTER TABLE tasker_workflow_steps ADD COLUMN claimed_until timestamp;
COMMENT ON COLUMN tasker_workflow_steps.claimed_until IS
    'While a worker holds a claim on the step (in_process): until when the claim holds (UTC). Past it the claim has expired: tasker_release_expired_claims makes the step claimable again and the old claim''s result is refused. NULL: no claim, or a step moved to in_progress without a lease.';

-- The expired-claim sweep reads only steps in process.
CREATE INDEX tasker_workflow_steps_claimed_until_idx
    ON tasker_workflow_steps (claimed_until)
    WHERE in_process;
-- Claiming from any task walks the steps that may still run, oldest task first.
CREATE INDEX tasker_workflow_steps_claimable_idx
    ON tasker_workflow_steps (task_id, workflow_step_id)
    WHERE NOT processed AND NOT in_process;

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

-- Transitions ---------------------------------------------------------------------------

CREATE FUNCTION tasker_transition_workflow_step(
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

-- Results -------------------------------------------------------------------------------

CREATE FUNCTION tasker_complete_step(
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

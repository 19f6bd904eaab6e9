-- The benchmark's dataset generator, run against a freshly
-- migrated database of its own. It installs, in the schema `bench`, the shapes, the
-- fates a step can have, and one function per table that fills it for a range of
-- groups, so the runner can fill the tables chunk by chunk and report progress.
--
-- A group is five tasks, one of each shape, 216 steps in all:
--   chain     10 steps, each depending on the one before;
--   diamond    4 steps: a -> (b, c) -> d;
--   layered  100 steps, 10 levels of 10, each below the first depending on 2 above;
--   fan_out   51 steps: one root, 50 children;
--   fan_in    51 steps: 50 roots, one child.
-- Ids are arithmetic (task g*5 + shape + 1, step g*216 + offset + 1), so edges and
-- transitions need no joins. One group in five is active (g % 5 = 2); the rest is
-- history. Every random choice is a hash of ids: the same size gives the same data.
--
-- The fill is what any writer of the Tasker schema would run: one INSERT … SELECT per
-- table and chunk, with the crate's triggers on. It writes the columns a Rails-era
-- writer writes (flags, attempts, timestamps, claims) and leaves the maintained ones
-- (each step's current_state, last_failure_at and parent counts, each task's
-- tasker_task_step_counts row) to the triggers, which derive them from the edges and
-- transitions as they arrive.

CREATE SCHEMA bench;

CREATE TABLE bench.dataset (
    target_steps bigint NOT NULL,
    groups bigint NOT NULL,
    generator text NOT NULL,
    started_at timestamp NOT NULL,
    completed_at timestamp,
    phases jsonb
);

CREATE TABLE bench.shape (
    shape int PRIMARY KEY,
    name text NOT NULL,
    step_offset int NOT NULL,
    steps int NOT NULL,
    max_level int NOT NULL,
    named_task_id int
);
INSERT INTO bench.shape (shape, name, step_offset, steps, max_level) VALUES
    (0, 'chain', 0, 10, 9),
    (1, 'diamond', 10, 4, 2),
    (2, 'layered', 14, 100, 9),
    (3, 'fan_out', 114, 51, 1),
    (4, 'fan_in', 165, 51, 1);

CREATE TABLE bench.shape_step (
    shape int NOT NULL REFERENCES bench.shape,
    pos int NOT NULL,
    level int NOT NULL,
    group_offset int,
    named_step_id int,
    PRIMARY KEY (shape, pos)
);
INSERT INTO bench.shape_step (shape, pos, level)
    SELECT 0, p, p FROM generate_series(0, 9) AS p
    UNION ALL VALUES (1, 0, 0), (1, 1, 1), (1, 2, 1), (1, 3, 2)
    UNION ALL SELECT 2, k, k / 10 FROM generate_series(0, 99) AS k
    UNION ALL SELECT 3, p, least(p, 1) FROM generate_series(0, 50) AS p
    UNION ALL SELECT 4, p, p / 50 FROM generate_series(0, 50) AS p;
UPDATE bench.shape_step AS ss SET group_offset = s.step_offset + ss.pos
    FROM bench.shape AS s WHERE s.shape = ss.shape;

CREATE TABLE bench.shape_edge (
    shape int NOT NULL,
    from_pos int NOT NULL,
    to_pos int NOT NULL,
    from_offset int,
    to_offset int
);
INSERT INTO bench.shape_edge (shape, from_pos, to_pos)
    SELECT 0, p - 1, p FROM generate_series(1, 9) AS p
    UNION ALL VALUES (1, 0, 1), (1, 0, 2), (1, 1, 3), (1, 2, 3)
    UNION ALL SELECT 2, parent, k
        FROM generate_series(10, 99) AS k,
             LATERAL (VALUES (k - 10), (k - 10 - k % 10 + (k % 10 + 1) % 10)) AS parents (parent)
    UNION ALL SELECT 3, 0, p FROM generate_series(1, 50) AS p
    UNION ALL SELECT 4, p, 50 FROM generate_series(0, 49) AS p;
UPDATE bench.shape_edge AS se
    SET from_offset = s.step_offset + se.from_pos, to_offset = s.step_offset + se.to_pos
    FROM bench.shape AS s WHERE s.shape = se.shape;

-- What happened to a step, and the history that leaves: its transitions in order
-- (the last one is most_recent) and the flags the write path would have set.
CREATE TABLE bench.fate (
    fate text PRIMARY KEY,
    attempts int NOT NULL,
    last_attempt_sort int,
    processed boolean NOT NULL,
    in_process boolean NOT NULL
);
INSERT INTO bench.fate VALUES
    ('pending', 0, NULL, false, false),
    ('complete', 1, 1, true, false),
    ('retried', 2, 4, true, false),
    ('in_progress', 1, 1, false, true),
    ('error_once', 1, 1, false, false),
    ('error_twice', 2, 4, false, false);

CREATE TABLE bench.fate_history (
    fate text NOT NULL REFERENCES bench.fate,
    sort_key int NOT NULL,
    from_state tasker_step_state NOT NULL,
    to_state tasker_step_state NOT NULL,
    most_recent boolean NOT NULL,
    PRIMARY KEY (fate, sort_key)
);
INSERT INTO bench.fate_history VALUES
    ('complete', 1, 'pending', 'in_progress', false),
    ('complete', 2, 'in_progress', 'complete', true),
    ('retried', 1, 'pending', 'in_progress', false),
    ('retried', 2, 'in_progress', 'error', false),
    ('retried', 3, 'error', 'pending', false),
    ('retried', 4, 'pending', 'in_progress', false),
    ('retried', 5, 'in_progress', 'complete', true),
    ('in_progress', 1, 'pending', 'in_progress', true),
    ('error_once', 1, 'pending', 'in_progress', false),
    ('error_once', 2, 'in_progress', 'error', true),
    ('error_twice', 1, 'pending', 'in_progress', false),
    ('error_twice', 2, 'in_progress', 'error', false),
    ('error_twice', 3, 'error', 'pending', false),
    ('error_twice', 4, 'pending', 'in_progress', false),
    ('error_twice', 5, 'in_progress', 'error', true);

-- A non-negative pseudo-random number below n, from a key.
CREATE FUNCTION bench.pick(key bigint, n int) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ((hashint8(key)::bigint & 2147483647) % n)::int;

CREATE FUNCTION bench.active(g bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN g % 5 = 2;

-- A historical task finished every step (one in five after a failed first attempt).
-- An active task has a frontier level picked per task: the levels above it are
-- complete; on it, each step is complete, in progress, in error or not started; the
-- levels below have not started.
CREATE FUNCTION bench.step_fate(g bigint, shape int, step_id bigint, level int, max_level int)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN NOT bench.active(g) THEN
        CASE WHEN bench.pick(step_id, 5) = 0 THEN 'retried' ELSE 'complete' END
    WHEN level < bench.pick(-(g * 5 + shape + 1), max_level + 1) THEN 'complete'
    WHEN level > bench.pick(-(g * 5 + shape + 1), max_level + 1) THEN 'pending'
    ELSE (ARRAY['complete', 'in_progress', 'error_once', 'error_twice', 'pending'])
             [bench.pick(step_id, 5) + 1]
END;

-- When a task started: history spread over the days before the generation, ten
-- seconds apart; active tasks an hour before it.
CREATE FUNCTION bench.task_started_at(g bigint, groups bigint, generated_at timestamp)
RETURNS timestamp
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN bench.active(g) THEN generated_at - interval '1 hour'
            ELSE generated_at - interval '1 hour' - (groups - g) * interval '10 seconds' END;

-- The time of a step's transition: a minute per level, five seconds per transition.
CREATE FUNCTION bench.step_time(started_at timestamp, level int, sort_key int)
RETURNS timestamp
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN started_at + level * interval '1 minute' + sort_key * interval '5 seconds';

-- Steps with their place in the group and their fate, for
-- groups first_group .. last_group.
CREATE FUNCTION bench.planned_steps(first_group bigint, last_group bigint, groups bigint, generated_at timestamp)
RETURNS TABLE (g bigint, task_id bigint, workflow_step_id bigint, group_offset int,
               named_step_id int, level int, started_at timestamp, fate text)
LANGUAGE sql STABLE
AS $$
    SELECT g, g * 5 + s.shape + 1, g * 216 + ss.group_offset + 1, ss.group_offset,
           ss.named_step_id, ss.level,
           bench.task_started_at(g, groups, generated_at),
           bench.step_fate(g, s.shape, g * 216 + ss.group_offset + 1, ss.level, s.max_level)
    FROM generate_series(first_group, last_group) AS g
    CROSS JOIN bench.shape AS s
    JOIN bench.shape_step AS ss ON ss.shape = s.shape
$$;

CREATE FUNCTION bench.insert_tasks(first_group bigint, last_group bigint, groups bigint, generated_at timestamp)
RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO tasker_tasks (task_id, named_task_id, complete, requested_at, initiator,
                              source_system, reason, context, identity_hash, created_at, updated_at)
    SELECT g * 5 + s.shape + 1, s.named_task_id, NOT bench.active(g), t.started_at, 'bench',
           'bench', 'generated', jsonb_build_object('group', g),
           'bench-' || (g * 5 + s.shape + 1), t.started_at, t.started_at
    FROM generate_series(first_group, last_group) AS g
    CROSS JOIN bench.shape AS s
    CROSS JOIN LATERAL (SELECT bench.task_started_at(g, groups, generated_at) AS started_at) AS t;

    INSERT INTO tasker_task_transitions (task_id, to_state, from_state, sort_key, most_recent,
                                         created_at, updated_at)
    SELECT g * 5 + s.shape + 1, h.to_state, h.from_state, h.sort_key,
           h.sort_key = 2 OR bench.active(g), h.at, h.at
    FROM generate_series(first_group, last_group) AS g
    CROSS JOIN bench.shape AS s
    CROSS JOIN LATERAL (SELECT bench.task_started_at(g, groups, generated_at) AS started_at) AS t
    CROSS JOIN LATERAL (
        VALUES (1, 'pending'::tasker_task_state, 'in_progress'::tasker_task_state, t.started_at),
               (2, 'in_progress', 'complete', t.started_at + (s.max_level + 1) * interval '1 minute')
    ) AS h (sort_key, from_state, to_state, at)
    WHERE h.sort_key = 1 OR NOT bench.active(g);
$$;

-- Steps, with what the write path would have left in the columns it owns.
CREATE FUNCTION bench.insert_steps(first_group bigint, last_group bigint, groups bigint, generated_at timestamp)
RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO tasker_workflow_steps (workflow_step_id, task_id, named_step_id, retryable,
                                       retry_limit, in_process, processed, processed_at, attempts,
                                       last_attempted_at, backoff_request_seconds, skippable,
                                       created_at, updated_at, claimed_until)
    SELECT p.workflow_step_id, p.task_id, p.named_step_id, true, 3, f.in_process, f.processed,
           CASE WHEN f.processed THEN bench.step_time(p.started_at, p.level, f.last_attempt_sort + 1) END,
           f.attempts,
           bench.step_time(p.started_at, p.level, f.last_attempt_sort),
           -- Half the failed steps asked for a day's backoff; the rest may retry.
           CASE WHEN f.fate LIKE 'error%' AND bench.pick(-p.workflow_step_id, 2) = 0 THEN 86400 END,
           false, p.started_at, p.started_at,
           -- Steps in progress are held by a live claim.
           CASE WHEN f.in_process THEN generated_at + interval '1 day' END
    FROM bench.planned_steps(first_group, last_group, groups, generated_at) AS p
    JOIN bench.fate AS f USING (fate)
$$;

CREATE FUNCTION bench.insert_edges(first_group bigint, last_group bigint)
RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name)
    SELECT g * 216 + e.from_offset + 1, g * 216 + e.to_offset + 1, 'needs'
    FROM generate_series(first_group, last_group) AS g
    CROSS JOIN bench.shape_edge AS e
$$;

CREATE FUNCTION bench.insert_step_transitions(first_group bigint, last_group bigint, groups bigint, generated_at timestamp)
RETURNS void
LANGUAGE sql
AS $$
    INSERT INTO tasker_workflow_step_transitions (workflow_step_id, to_state, from_state, sort_key,
                                                  most_recent, created_at, updated_at)
    SELECT p.workflow_step_id, h.to_state, h.from_state, h.sort_key, h.most_recent,
           bench.step_time(p.started_at, p.level, h.sort_key),
           bench.step_time(p.started_at, p.level, h.sort_key)
    FROM bench.planned_steps(first_group, last_group, groups, generated_at) AS p
    JOIN bench.fate_history AS h USING (fate)
$$;

-- The catalog: one namespace and dependent system, a named task per shape and a
-- named step per position.
INSERT INTO tasker_task_namespaces (name) VALUES ('bench');
INSERT INTO tasker_dependent_systems (name) VALUES ('bench');
INSERT INTO tasker_named_tasks (task_namespace_id, name, version)
    SELECT n.task_namespace_id, s.name, '1' FROM tasker_task_namespaces AS n, bench.shape AS s;
UPDATE bench.shape AS s SET named_task_id = t.named_task_id
    FROM tasker_named_tasks AS t WHERE t.name = s.name;
INSERT INTO tasker_named_steps (dependent_system_id, name)
    SELECT d.dependent_system_id, s.name || '_' || ss.pos
    FROM tasker_dependent_systems AS d, bench.shape_step AS ss JOIN bench.shape AS s USING (shape);
UPDATE bench.shape_step AS ss SET named_step_id = n.named_step_id
    FROM bench.shape AS s, tasker_named_steps AS n
    WHERE s.shape = ss.shape AND n.name = s.name || '_' || ss.pos;
INSERT INTO tasker_named_tasks_named_steps (named_task_id, named_step_id)
    SELECT s.named_task_id, ss.named_step_id FROM bench.shape_step AS ss JOIN bench.shape AS s USING (shape);

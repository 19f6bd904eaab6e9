-- Fills an empty database in the Rails engine's shape (rails_schema.sql) with `tasks`
-- tasks as the engine writes them: its catalog rows, each task a diamond of four steps
-- (a -> b, a -> c, b -> d, c -> d) with Statesman histories (sort keys in steps of 10,
-- most_recent on the last), the step columns the engine keeps beside them, and every
-- timestamp written by the writer, as ActiveRecord does. Task n's history is the n-th
-- (n % 5) of five:
--   0  nothing has run
--   1  a complete; the task in progress
--   2  a complete, b failed once (retryable, its backoff long past), c running
--   3  every step complete; the task complete
--   4  a failed three times of three; the task in error
CREATE FUNCTION pg_temp.tasker_rails_history(kind bigint, letter text) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE kind
        WHEN 1 THEN CASE letter WHEN 'a' THEN ARRAY['in_progress', 'complete'] END
        WHEN 2 THEN CASE letter WHEN 'a' THEN ARRAY['in_progress', 'complete']
                                WHEN 'b' THEN ARRAY['in_progress', 'error']
                                WHEN 'c' THEN ARRAY['in_progress'] END
        WHEN 3 THEN ARRAY['in_progress', 'complete']
        WHEN 4 THEN CASE letter WHEN 'a' THEN ARRAY['in_progress', 'error',
            'in_progress', 'error', 'in_progress', 'error'] END
    END
$$;

CREATE FUNCTION pg_temp.tasker_fill_rails_engine(tasks bigint) RETURNS void
LANGUAGE sql AS $fill$
    INSERT INTO tasker_task_namespaces (name, created_at, updated_at)
    VALUES ('adopted', now(), now());
    INSERT INTO tasker_dependent_systems (name, created_at, updated_at)
    VALUES ('rails', now(), now());
    INSERT INTO tasker_named_tasks (name, task_namespace_id, version, created_at, updated_at)
    SELECT 'diamond', task_namespace_id, '1.0.0', now(), now() FROM tasker_task_namespaces;
    INSERT INTO tasker_named_steps (dependent_system_id, name, created_at, updated_at)
    SELECT dependent_system_id, letter, now(), now()
    FROM tasker_dependent_systems, unnest(ARRAY['a', 'b', 'c', 'd']) AS letter;
    INSERT INTO tasker_named_tasks_named_steps (named_task_id, named_step_id, created_at, updated_at)
    SELECT named_task_id, named_step_id, now(), now() FROM tasker_named_tasks, tasker_named_steps;

    INSERT INTO tasker_tasks (named_task_id, complete, requested_at, initiator, source_system,
                              reason, bypass_steps, tags, context, identity_hash,
                              created_at, updated_at)
    SELECT nt.named_task_id, n % 5 = 3, now() - interval '1 hour', 'rails', 'adoption',
           'history ' || n % 5, '[]'::json, '["adopted"]'::jsonb, jsonb_build_object('n', n),
           'rails-' || n, now() - interval '1 hour', now() - interval '1 hour'
    FROM tasker_named_tasks AS nt, generate_series(1, tasks) AS n
    ORDER BY n;

    INSERT INTO tasker_workflow_steps (task_id, named_step_id, retryable, retry_limit,
                                       in_process, processed, processed_at, attempts,
                                       last_attempted_at, inputs, created_at, updated_at)
    SELECT t.task_id, ns.named_step_id, true, 3,
           coalesce(h.states[cardinality(h.states)] = 'in_progress', false),
           coalesce(h.states[cardinality(h.states)] = 'complete', false),
           CASE WHEN h.states[cardinality(h.states)] = 'complete' THEN now() - interval '50 minutes' END,
           (SELECT count(*) FROM unnest(h.states) AS s WHERE s = 'in_progress'),
           CASE WHEN h.states IS NOT NULL THEN now() - interval '55 minutes' END,
           jsonb_build_object('step', ns.name), now() - interval '1 hour', now() - interval '1 hour'
    FROM tasker_tasks AS t
    CROSS JOIN tasker_named_steps AS ns
    CROSS JOIN LATERAL (SELECT pg_temp.tasker_rails_history(t.task_id % 5, ns.name) AS states) AS h
    ORDER BY t.task_id, ns.name;

    INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name, created_at, updated_at)
    SELECT parent.workflow_step_id, child.workflow_step_id, 'provides',
           now() - interval '1 hour', now() - interval '1 hour'
    FROM (VALUES ('a', 'b'), ('a', 'c'), ('b', 'd'), ('c', 'd')) AS pair (up, down)
    JOIN tasker_named_steps AS up_name ON up_name.name = pair.up
    JOIN tasker_named_steps AS down_name ON down_name.name = pair.down
    JOIN tasker_workflow_steps AS parent ON parent.named_step_id = up_name.named_step_id
    JOIN tasker_workflow_steps AS child
      ON child.named_step_id = down_name.named_step_id AND child.task_id = parent.task_id
    ORDER BY parent.task_id;

    INSERT INTO tasker_workflow_step_transitions (to_state, from_state, metadata, sort_key,
                                                  most_recent, workflow_step_id,
                                                  created_at, updated_at)
    SELECT h.state, h.states[h.position - 1],
           CASE WHEN h.state = 'error' THEN jsonb_build_object('error_message', 'timed out')
                ELSE '{}'::jsonb END,
           h.position * 10, h.position = cardinality(h.states), s.workflow_step_id,
           now() - interval '55 minutes' + h.position * interval '1 minute',
           now() - interval '55 minutes' + h.position * interval '1 minute'
    FROM tasker_workflow_steps AS s
    JOIN tasker_named_steps AS ns ON ns.named_step_id = s.named_step_id
    CROSS JOIN LATERAL (
        SELECT states.states, u.state, u.position
        FROM (SELECT pg_temp.tasker_rails_history(s.task_id % 5, ns.name) AS states) AS states
        CROSS JOIN LATERAL unnest(states.states) WITH ORDINALITY AS u (state, position)
    ) AS h
    ORDER BY s.workflow_step_id, h.position;

    INSERT INTO tasker_task_transitions (to_state, from_state, metadata, sort_key, most_recent,
                                         task_id, created_at, updated_at)
    SELECT u.state, h.states[u.position - 1], '{}'::jsonb, u.position * 10,
           u.position = cardinality(h.states), t.task_id,
           now() - interval '55 minutes' + u.position * interval '1 minute',
           now() - interval '55 minutes' + u.position * interval '1 minute'
    FROM tasker_tasks AS t
    CROSS JOIN LATERAL (SELECT CASE t.task_id % 5
        WHEN 1 THEN ARRAY['in_progress'] WHEN 2 THEN ARRAY['in_progress']
        WHEN 3 THEN ARRAY['in_progress', 'complete'] WHEN 4 THEN ARRAY['in_progress', 'error']
    END AS states) AS h
    CROSS JOIN LATERAL unnest(h.states) WITH ORDINALITY AS u (state, position)
    ORDER BY t.task_id, u.position;
$fill$;

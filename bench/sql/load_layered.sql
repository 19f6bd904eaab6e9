-- Loads layered 100-step tasks into a migrated, empty database, for
-- bench/sql/explain_readiness.sql:
--
--   psql -v tasks=10000 -d <db> -f bench/sql/load_layered.sql    # 1M steps, about a minute
--
-- Each task has 10 levels of 10 steps; every step below the first level depends on
-- two steps of the level above. Four tasks in five are history (every step complete
-- after two transitions); the fifth is active: levels 0-4 complete, level 5 mixed
-- (in progress, in error, complete, pending), the rest pending.
\set ON_ERROR_STOP on
\timing on

BEGIN;
-- The DAGs are acyclic by construction: skip the per-statement edge check.
SET LOCAL session_replication_role = replica;
INSERT INTO tasker_task_namespaces (name) VALUES ('bench');
INSERT INTO tasker_dependent_systems (name) VALUES ('bench');
INSERT INTO tasker_named_tasks (task_namespace_id, name, version)
    SELECT task_namespace_id, 'layered', '1' FROM tasker_task_namespaces;
INSERT INTO tasker_named_steps (dependent_system_id, name)
    SELECT dependent_system_id, 'step_' || k FROM tasker_dependent_systems, generate_series(0, 99) AS k;
CREATE TEMP TABLE step_template AS
    SELECT named_step_id, row_number() OVER (ORDER BY named_step_id) - 1 AS k FROM tasker_named_steps;
INSERT INTO tasker_tasks (named_task_id, identity_hash)
    SELECT named_task_id, 'bench-' || n FROM tasker_named_tasks, generate_series(1, :tasks) AS n;
INSERT INTO tasker_workflow_steps (task_id, named_step_id, attempts)
    SELECT task.task_id, template.named_step_id, 1
    FROM tasker_tasks AS task CROSS JOIN step_template AS template
    ORDER BY task.task_id, template.k;
CREATE TEMP TABLE step_position AS
    SELECT step.workflow_step_id, step.task_id, template.k, task.task_id % 5 = 0 AS active
    FROM tasker_workflow_steps AS step
    JOIN step_template AS template USING (named_step_id)
    JOIN tasker_tasks AS task USING (task_id);
CREATE INDEX ON step_position (task_id, k);
INSERT INTO tasker_workflow_step_edges (from_step_id, to_step_id, name)
    SELECT parent.workflow_step_id, child.workflow_step_id, 'needs'
    FROM step_position AS child
    JOIN step_position AS parent
      ON parent.task_id = child.task_id
     AND parent.k IN (child.k - 10, child.k - 10 - child.k % 10 + (child.k % 10 + 1) % 10)
    WHERE child.k >= 10;
-- History: in_progress then complete; active tasks: by level and position.
INSERT INTO tasker_workflow_step_transitions (workflow_step_id, to_state, from_state, sort_key, most_recent)
    SELECT position.workflow_step_id, history.to_state, history.from_state, history.sort_key,
           history.sort_key = 2
    FROM step_position AS position
    CROSS JOIN LATERAL (
        SELECT CASE WHEN NOT position.active OR position.k < 50 THEN 'complete'
                    WHEN position.k < 60 THEN (ARRAY['in_progress', 'error', 'complete', NULL])[position.k % 4 + 1]
               END::tasker_step_state AS final_state
    ) AS target
    CROSS JOIN LATERAL (
        VALUES ('in_progress'::tasker_step_state, NULL::tasker_step_state, 1),
               (target.final_state, 'in_progress', 2)
    ) AS history (to_state, from_state, sort_key)
    WHERE target.final_state IS NOT NULL
      AND (history.sort_key = 1 OR target.final_state <> 'in_progress');
UPDATE tasker_workflow_step_transitions SET most_recent = true
    WHERE sort_key = 1 AND to_state = 'in_progress'
      AND NOT EXISTS (SELECT FROM tasker_workflow_step_transitions AS later
                      WHERE later.workflow_step_id = tasker_workflow_step_transitions.workflow_step_id
                        AND later.sort_key = 2);
INSERT INTO tasker_task_transitions (task_id, to_state, sort_key, most_recent)
    SELECT task_id, CASE WHEN task_id % 5 = 0 THEN 'in_progress' ELSE 'complete' END::tasker_task_state, 1, true
    FROM tasker_tasks;
-- The triggers that keep readiness were off: fill the kept state from the history.
SELECT tasker_rebuild_readiness(NULL) AS kept_values_filled;
COMMIT;
VACUUM ANALYZE;

SELECT count(*) AS steps FROM tasker_workflow_steps;
SELECT count(*) AS step_transitions FROM tasker_workflow_step_transitions;
SELECT count(*) AS edges FROM tasker_workflow_step_edges;


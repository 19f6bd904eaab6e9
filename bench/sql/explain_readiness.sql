-- Prints the plans, with buffers, of the readiness and context functions for one
-- active task of a database loaded by bench/sql/load_layered.sql:
--
--   psql -d <db> -f bench/sql/explain_readiness.sql
\set ON_ERROR_STOP on

-- An active task near the end of the table, and 100 of its steps by id.
SELECT max(task_id) AS task FROM tasker_tasks WHERE task_id % 5 = 0 \gset
SELECT array_agg(workflow_step_id)::text AS step_ids FROM tasker_workflow_steps WHERE task_id = :task \gset

EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON)
    SELECT * FROM get_step_readiness_status(:task::bigint);
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON)
    SELECT * FROM get_step_readiness_status(:'step_ids'::bigint[]);
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON)
    SELECT * FROM get_task_execution_context(:task::bigint);

-- The same statements as a generic plan, as a prepared statement may cache.
SET plan_cache_mode = force_generic_plan;
PREPARE readiness (bigint) AS SELECT * FROM get_step_readiness_status($1);
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON) EXECUTE readiness (:task);
PREPARE context (bigint) AS SELECT * FROM get_task_execution_context($1);
EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY ON) EXECUTE context (:task);

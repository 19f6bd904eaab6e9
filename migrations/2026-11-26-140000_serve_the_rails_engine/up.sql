-- What the Rails Tasker engine reads beyond the readiness and context functions: its
-- health and analytics endpoints call the *_v01 functions, its step serializer, GraphQL
-- types and step finder read the view tasker_step_dag_relationships. Each keeps the
-- name, arguments and row the engine expects; each is computed from this schema's
-- maintained state (a step's current_state, a task's current transition), and the
-- timestamps, stored in UTC without a time zone, are returned as timestamptz, as
-- declared.

CREATE FUNCTION get_system_health_counts_v01()
RETURNS TABLE (
    total_tasks bigint,
    pending_tasks bigint,
    in_progress_tasks bigint,
    complete_tasks bigint,
    error_tasks bigint,
    cancelled_tasks bigint,
    total_steps bigint,
    pending_steps bigint,
    in_progress_steps bigint,
    complete_steps bigint,
    error_steps bigint,
    retryable_error_steps bigint,
    exhausted_retry_steps bigint,
    in_backoff_steps bigint,
    active_connections bigint,
    max_connections bigint
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT h.total_tasks, h.pending_tasks, h.in_progress_tasks, h.complete_tasks,
           h.error_tasks, h.cancelled_tasks, h.total_steps, h.pending_steps,
           h.in_progress_steps, h.complete_steps, h.error_steps, h.retryable_error_steps,
           h.exhausted_retry_steps,
           -- Failed steps with a retry left whose backoff has not passed: in the active
           -- set (runnable), so a walk of its index.
           (SELECT count(*) FROM tasker_workflow_steps AS s
             WHERE s.runnable AND s.current_state = 'error'
               AND s.next_retry_at > (now() AT TIME ZONE 'UTC')),
           h.active_connections,
           h.max_connections::bigint
    FROM tasker_system_health_counts() AS h
$$;
COMMENT ON FUNCTION get_system_health_counts_v01() IS
    'The Rails engine''s health counts (its /health endpoint): tasker_system_health_counts without the resolved_manually and cancelled step columns, with in_backoff_steps (failed steps with a retry left whose backoff has not passed).';

CREATE FUNCTION get_analytics_metrics_v01(since_timestamp timestamptz DEFAULT NULL)
RETURNS TABLE (
    active_tasks_count bigint,
    total_namespaces_count bigint,
    unique_task_types_count bigint,
    system_health_score numeric,
    task_throughput bigint,
    completion_count bigint,
    error_count bigint,
    completion_rate numeric,
    error_rate numeric,
    avg_task_duration numeric,
    avg_step_duration numeric,
    step_throughput bigint,
    analysis_period_start timestamptz,
    calculated_at timestamptz
)
LANGUAGE sql STABLE
AS $$
    WITH period AS (
        SELECT coalesce(since_timestamp, now() - interval '1 hour') AS start
    ), task_state AS (
        SELECT t.task_id, t.named_task_id, t.created_at,
               coalesce(latest.to_state, 'pending') AS state, latest.created_at AS since
        FROM tasker_tasks AS t
        LEFT JOIN tasker_task_transitions AS latest
               ON latest.task_id = t.task_id AND latest.most_recent
    ), recent AS (
        SELECT ts.* FROM task_state AS ts, period
        WHERE ts.created_at > (period.start AT TIME ZONE 'UTC')
    ), recent_counts AS (
        SELECT count(*) AS tasks,
               count(*) FILTER (WHERE state = 'complete') AS completions,
               count(*) FILTER (WHERE state = 'error') AS errors,
               avg(extract(epoch FROM since - created_at))
                   FILTER (WHERE state = 'complete') AS task_seconds
        FROM recent
    ), recent_steps AS (
        SELECT count(*) AS steps,
               avg(extract(epoch FROM done.created_at - s.created_at))
                   FILTER (WHERE s.current_state = 'complete') AS step_seconds
        FROM recent AS r
        JOIN tasker_workflow_steps AS s ON s.task_id = r.task_id
        LEFT JOIN tasker_workflow_step_transitions AS done
               ON done.workflow_step_id = s.workflow_step_id AND done.most_recent
              AND s.current_state = 'complete'
    )
    SELECT
        (SELECT count(*) FROM task_state WHERE state IN ('pending', 'in_progress')),
        (SELECT count(DISTINCT n.task_namespace_id)
           FROM tasker_named_tasks AS n
          WHERE EXISTS (SELECT FROM tasker_tasks AS t WHERE t.named_task_id = n.named_task_id)),
        (SELECT count(DISTINCT n.name)
           FROM tasker_named_tasks AS n
          WHERE EXISTS (SELECT FROM tasker_tasks AS t WHERE t.named_task_id = n.named_task_id)),
        CASE WHEN rc.completions + rc.errors > 0
             THEN round(rc.completions::numeric / (rc.completions + rc.errors), 3)
             ELSE 1.0 END,
        rc.tasks,
        rc.completions,
        rc.errors,
        CASE WHEN rc.tasks > 0 THEN round(100 * rc.completions::numeric / rc.tasks, 2)
             ELSE 0.0 END,
        CASE WHEN rc.tasks > 0 THEN round(100 * rc.errors::numeric / rc.tasks, 2)
             ELSE 0.0 END,
        round(coalesce(rc.task_seconds, 0), 3),
        round(coalesce(rs.step_seconds, 0), 3),
        rs.steps,
        period.start,
        now()
    FROM period, recent_counts AS rc, recent_steps AS rs
$$;
COMMENT ON FUNCTION get_analytics_metrics_v01(timestamptz) IS
    'The Rails engine''s analytics (its /analytics endpoint) over the tasks created since since_timestamp (default: the last hour): tasks not yet finished (active, of all time), namespaces and task names that have tasks, and of the period''s tasks: how many, complete, in error, the rates in percent, the health score (complete / (complete + error), 1.0 with neither), the mean seconds from a task''s creation to its completion and from a step''s creation to its completion, and the number of steps.';

CREATE FUNCTION get_slowest_steps_v01(
    since_timestamp timestamptz DEFAULT NULL,
    limit_count integer DEFAULT 10,
    namespace_filter text DEFAULT NULL,
    task_name_filter text DEFAULT NULL,
    version_filter text DEFAULT NULL
)
RETURNS TABLE (
    workflow_step_id bigint,
    task_id bigint,
    step_name character varying,
    task_name character varying,
    namespace_name character varying,
    version character varying,
    duration_seconds numeric,
    attempts integer,
    created_at timestamptz,
    completed_at timestamptz,
    retryable boolean,
    step_status character varying
)
LANGUAGE sql STABLE
AS $$
    SELECT s.workflow_step_id, s.task_id, ns.name, nt.name, tn.name, nt.version,
           round(extract(epoch FROM done.created_at - s.created_at), 3) AS duration_seconds,
           s.attempts,
           s.created_at AT TIME ZONE 'UTC',
           done.created_at AT TIME ZONE 'UTC',
           s.retryable,
           'complete'::character varying
    FROM tasker_workflow_steps AS s
    JOIN tasker_workflow_step_transitions AS done
      ON done.workflow_step_id = s.workflow_step_id AND done.most_recent
    JOIN tasker_named_steps AS ns ON ns.named_step_id = s.named_step_id
    JOIN tasker_tasks AS t ON t.task_id = s.task_id
    JOIN tasker_named_tasks AS nt ON nt.named_task_id = t.named_task_id
    JOIN tasker_task_namespaces AS tn ON tn.task_namespace_id = nt.task_namespace_id
    WHERE s.current_state = 'complete'
      AND s.created_at > (coalesce(since_timestamp, now() - interval '24 hours') AT TIME ZONE 'UTC')
      AND done.created_at > s.created_at
      AND (namespace_filter IS NULL OR tn.name = namespace_filter)
      AND (task_name_filter IS NULL OR nt.name = task_name_filter)
      AND (version_filter IS NULL OR nt.version = version_filter)
    ORDER BY duration_seconds DESC, s.workflow_step_id
    LIMIT limit_count
$$;
COMMENT ON FUNCTION get_slowest_steps_v01(timestamptz, integer, text, text, text) IS
    'The Rails engine''s slowest steps: complete steps created since since_timestamp (default: the last 24 hours), optionally of one namespace, task name and version, by the seconds from their creation to their completion, longest first, at most limit_count.';

CREATE FUNCTION get_slowest_tasks_v01(
    since_timestamp timestamptz DEFAULT NULL,
    limit_count integer DEFAULT 10,
    namespace_filter text DEFAULT NULL,
    task_name_filter text DEFAULT NULL,
    version_filter text DEFAULT NULL
)
RETURNS TABLE (
    task_id bigint,
    task_name character varying,
    namespace_name character varying,
    version character varying,
    duration_seconds numeric,
    step_count bigint,
    completed_steps bigint,
    error_steps bigint,
    created_at timestamptz,
    completed_at timestamptz,
    initiator character varying,
    source_system character varying
)
LANGUAGE sql STABLE
AS $$
    SELECT t.task_id, nt.name, tn.name, nt.version,
           round(extract(epoch FROM steps.last_done - t.created_at), 3) AS duration_seconds,
           steps.total, steps.complete, steps.failed,
           t.created_at AT TIME ZONE 'UTC',
           steps.last_done AT TIME ZONE 'UTC',
           t.initiator, t.source_system
    FROM tasker_tasks AS t
    JOIN tasker_named_tasks AS nt ON nt.named_task_id = t.named_task_id
    JOIN tasker_task_namespaces AS tn ON tn.task_namespace_id = nt.task_namespace_id
    -- The task's steps: how many, complete, in error, and when the last of those that
    -- are complete or in error got there.
    CROSS JOIN LATERAL (
        SELECT count(*) AS total,
               count(*) FILTER (WHERE s.current_state = 'complete') AS complete,
               count(*) FILTER (WHERE s.current_state = 'error') AS failed,
               max(latest.created_at) FILTER (WHERE s.current_state IN ('complete', 'error'))
                   AS last_done
        FROM tasker_workflow_steps AS s
        LEFT JOIN tasker_workflow_step_transitions AS latest
               ON latest.workflow_step_id = s.workflow_step_id AND latest.most_recent
        WHERE s.task_id = t.task_id
    ) AS steps
    WHERE t.created_at > (coalesce(since_timestamp, now() - interval '24 hours') AT TIME ZONE 'UTC')
      AND steps.last_done IS NOT NULL
      AND (namespace_filter IS NULL OR tn.name = namespace_filter)
      AND (task_name_filter IS NULL OR nt.name = task_name_filter)
      AND (version_filter IS NULL OR nt.version = version_filter)
    ORDER BY duration_seconds DESC, t.task_id
    LIMIT limit_count
$$;
COMMENT ON FUNCTION get_slowest_tasks_v01(timestamptz, integer, text, text, text) IS
    'The Rails engine''s slowest tasks: tasks created since since_timestamp (default: the last 24 hours) with at least one step complete or in error, optionally of one namespace, task name and version, by the seconds from their creation to the last such step''s transition, longest first, at most limit_count; with their step counts.';

CREATE VIEW tasker_step_dag_relationships AS
SELECT s.workflow_step_id,
       s.task_id,
       s.named_step_id,
       coalesce(parents.ids, '[]'::jsonb) AS parent_step_ids,
       coalesce(children.ids, '[]'::jsonb) AS child_step_ids,
       parents.n AS parent_count,
       children.n AS child_count,
       parents.n = 0 AS is_root_step,
       children.n = 0 AS is_leaf_step,
       depth.min_depth_from_root
FROM tasker_workflow_steps AS s
-- Per step, so that a query for one task or one step reads that step's edges only.
CROSS JOIN LATERAL (
    SELECT jsonb_agg(e.from_step_id ORDER BY e.from_step_id) AS ids, count(*) AS n
    FROM tasker_workflow_step_edges AS e WHERE e.to_step_id = s.workflow_step_id
) AS parents
CROSS JOIN LATERAL (
    SELECT jsonb_agg(e.to_step_id ORDER BY e.to_step_id) AS ids, count(*) AS n
    FROM tasker_workflow_step_edges AS e WHERE e.from_step_id = s.workflow_step_id
) AS children
-- The fewest edges from a root down to the step: a walk up its ancestors (the graph is
-- acyclic, so it ends) to the nearest one without parents.
CROSS JOIN LATERAL (
    WITH RECURSIVE up (step_id, distance) AS (
        SELECT s.workflow_step_id, 0
        UNION
        SELECT e.from_step_id, up.distance + 1
        FROM up JOIN tasker_workflow_step_edges AS e ON e.to_step_id = up.step_id
    )
    SELECT min(up.distance)::integer AS min_depth_from_root
    FROM up
    WHERE NOT EXISTS (SELECT FROM tasker_workflow_step_edges AS e WHERE e.to_step_id = up.step_id)
) AS depth;
COMMENT ON VIEW tasker_step_dag_relationships IS
    'Each step with its parents and children (ids as JSON arrays, ordered, and counts), whether it is a root or a leaf, and its fewest edges from a root: the view the Rails engine''s step serializer, GraphQL types and step finder read.';

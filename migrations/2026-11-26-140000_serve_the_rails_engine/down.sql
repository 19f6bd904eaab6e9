DROP VIEW tasker_step_dag_relationships;
DROP FUNCTION get_slowest_tasks_v01(timestamptz, integer, text, text, text);
DROP FUNCTION get_slowest_steps_v01(timestamptz, integer, text, text, text);
DROP FUNCTION get_analytics_metrics_v01(timestamptz);
DROP FUNCTION get_system_health_counts_v01();

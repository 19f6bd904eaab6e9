DROP FUNCTION tasker_set_updated_at();
DROP CAST (varchar AS tasker_task_state);
DROP CAST (text AS tasker_task_state);
DROP CAST (varchar AS tasker_step_state);
DROP CAST (text AS tasker_step_state);
DROP TYPE tasker_task_state;
DROP TYPE tasker_step_state;

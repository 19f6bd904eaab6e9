-- The types and the trigger function the Tasker tables are built on: the states of a
-- step and of a task, and updated_at maintenance.

-- 'skipped' is a label for comparisons only: the Rails engine's queries name it (its
-- Task.active scope lists it among the finished states), and a query that names a label
-- the type lacks fails. No row may hold it (the transitions' CHECK constraints).
CREATE TYPE tasker_step_state AS ENUM (
    'pending', 'in_progress', 'complete', 'error', 'cancelled', 'resolved_manually',
    'skipped'
);
COMMENT ON TYPE tasker_step_state IS
    'State of a workflow step. A step with no transition row is pending. skipped is never stored: it is there for queries that name it.';

CREATE TYPE tasker_task_state AS ENUM (
    'pending', 'in_progress', 'complete', 'error', 'cancelled', 'resolved_manually'
);
COMMENT ON TYPE tasker_task_state IS
    'State of a task. A task with no transition row is pending.';

-- Values bound as text or varchar (what most drivers send for a string: sqlx, JDBC
-- setString, asyncpg) can be written into the state columns (an assignment cast); a
-- label the type lacks is still refused. Comparing a state column with such a bind
-- takes an explicit cast ($1::tasker_step_state): an implicit cast would let text
-- comparisons shadow the enum's own operators.
CREATE CAST (text AS tasker_step_state) WITH INOUT AS ASSIGNMENT;
CREATE CAST (varchar AS tasker_step_state) WITH INOUT AS ASSIGNMENT;
CREATE CAST (text AS tasker_task_state) WITH INOUT AS ASSIGNMENT;
CREATE CAST (varchar AS tasker_task_state) WITH INOUT AS ASSIGNMENT;

-- Keeps updated_at current for writers that do not set it themselves (psql,
-- Diesel's update statements); a writer that sets it explicitly keeps its value.
CREATE FUNCTION tasker_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now() AT TIME ZONE 'UTC';
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION tasker_set_updated_at() IS
    'Trigger: sets updated_at to the current UTC time on update unless the writer changed it.';

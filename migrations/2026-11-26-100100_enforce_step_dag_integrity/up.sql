-- The step graph of a task must stay a DAG inside that task, whoever writes
-- the rows (this crate, the Rails engine, psql). Self-edges and duplicate
-- edges are already rejected by constraints of tasker_workflow_step_edges;
-- this migration rejects edges across tasks and edges that close a cycle.
--
-- Violations raise check_violation (SQLSTATE 23514) naming a constraint, so
-- clients can tell the rules apart:
--   tasker_workflow_step_edges_same_task  edge between steps of two tasks
--   tasker_workflow_step_edges_acyclic    edge that closes a cycle
--   tasker_workflow_steps_task_id_fixed   moving a step to another task

-- A step never moves to another task: the same-task rule is checked when an
-- edge is written, and must not be undone afterwards by changing a step.
CREATE FUNCTION tasker_reject_step_task_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'workflow step % belongs to task % and cannot move to task %',
            OLD.workflow_step_id, OLD.task_id, NEW.task_id
        USING ERRCODE = 'check_violation',
              CONSTRAINT = 'tasker_workflow_steps_task_id_fixed',
              TABLE = TG_TABLE_NAME,
              SCHEMA = TG_TABLE_SCHEMA;
END;
$$;
COMMENT ON FUNCTION tasker_reject_step_task_change() IS
    'Trigger: rejects a change of tasker_workflow_steps.task_id.';

CREATE TRIGGER tasker_workflow_steps_task_id_fixed
    BEFORE UPDATE OF task_id ON tasker_workflow_steps
    FOR EACH ROW
    WHEN (OLD.task_id IS DISTINCT FROM NEW.task_id)
    EXECUTE FUNCTION tasker_reject_step_task_change();

-- Checks the edges written by one statement (transition table new_edges).
-- One run per statement, so a whole DAG inserted at once costs one graph walk.
CREATE FUNCTION tasker_check_step_edges() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad RECORD;
BEGIN
    SELECT n.from_step_id, n.to_step_id, parent.task_id AS from_task_id, child.task_id AS to_task_id
      INTO bad
      FROM new_edges n
      JOIN tasker_workflow_steps parent ON parent.workflow_step_id = n.from_step_id
      JOIN tasker_workflow_steps child ON child.workflow_step_id = n.to_step_id
     WHERE parent.task_id <> child.task_id
     ORDER BY n.id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'workflow step edge % -> % joins steps of different tasks (% and %)',
                bad.from_step_id, bad.to_step_id, bad.from_task_id, bad.to_task_id
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'tasker_workflow_step_edges_same_task',
                  TABLE = TG_TABLE_NAME,
                  SCHEMA = TG_TABLE_SCHEMA;
    END IF;

    -- Serialize the graph writers of each task, so two transactions cannot each
    -- add half of a cycle unseen by the other. The row is locked in task id
    -- order (no deadlock between multi-task statements) and then updated: a
    -- REPEATABLE READ or SERIALIZABLE writer that comes second gets a
    -- serialization failure instead of checking against a stale snapshot; a
    -- READ COMMITTED one waits and then sees the committed edges.
    PERFORM 1
       FROM tasker_tasks t
      WHERE t.task_id IN (SELECT s.task_id
                            FROM new_edges n
                            JOIN tasker_workflow_steps s ON s.workflow_step_id = n.to_step_id)
      ORDER BY t.task_id
        FOR NO KEY UPDATE;
    UPDATE tasker_tasks t
       SET updated_at = now() AT TIME ZONE 'UTC'
     WHERE t.task_id IN (SELECT s.task_id
                           FROM new_edges n
                           JOIN tasker_workflow_steps s ON s.workflow_step_id = n.to_step_id);

    -- A new edge parent -> child closes a cycle when the parent is reachable
    -- from the child. UNION (not UNION ALL) ends the walk even on a cycle.
    WITH RECURSIVE reachable (origin_step_id, step_id) AS (
        SELECT DISTINCT n.to_step_id, n.to_step_id
          FROM new_edges n
        UNION
        SELECT r.origin_step_id, e.to_step_id
          FROM reachable r
          JOIN tasker_workflow_step_edges e ON e.from_step_id = r.step_id
    )
    SELECT n.from_step_id, n.to_step_id, s.task_id
      INTO bad
      FROM new_edges n
      JOIN reachable r ON r.origin_step_id = n.to_step_id AND r.step_id = n.from_step_id
      JOIN tasker_workflow_steps s ON s.workflow_step_id = n.from_step_id
     ORDER BY n.id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'workflow step edge % -> % would create a cycle in task %: step % already depends on step %',
                bad.from_step_id, bad.to_step_id, bad.task_id, bad.from_step_id, bad.to_step_id
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'tasker_workflow_step_edges_acyclic',
                  TABLE = TG_TABLE_NAME,
                  SCHEMA = TG_TABLE_SCHEMA;
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION tasker_check_step_edges() IS
    'Trigger: rejects workflow step edges that join two tasks or close a cycle.';

-- Transition tables allow one event per trigger, hence two triggers.
CREATE TRIGGER tasker_workflow_step_edges_check_insert
    AFTER INSERT ON tasker_workflow_step_edges
    REFERENCING NEW TABLE AS new_edges
    FOR EACH STATEMENT
    EXECUTE FUNCTION tasker_check_step_edges();
CREATE TRIGGER tasker_workflow_step_edges_check_update
    AFTER UPDATE ON tasker_workflow_step_edges
    REFERENCING NEW TABLE AS new_edges
    FOR EACH STATEMENT
    EXECUTE FUNCTION tasker_check_step_edges();

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

-- A topological pass (Kahn's algorithm) over a graph given as arrays: each step with its
-- longest distance from a root, in O(steps + edges). plpgsql has no map, so the graph
-- lives in arrays indexed by a step's position: its id minus the smallest id when the
-- ids are dense (the steps of a task are usually inserted together, so they are), else
-- its rank among the ids, which costs a sort and two joins more.
--
-- Steps that no pass can place lie on a cycle or behind one. They get no level; instead
-- the steps of one such cycle are returned with their positions along it (the step at
-- position i is a parent of the one at i + 1, and the last a parent of the first), so a
-- caller can name it.
CREATE FUNCTION tasker_topological_levels(step_ids bigint[], from_ids bigint[], to_ids bigint[])
RETURNS TABLE (workflow_step_id bigint, dependency_level integer, cycle_position integer)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
-- The array sizes are known when each statement is planned (custom plans), so the
-- joins hash instead of looping; the row estimates would still start JIT, which costs
-- more than the whole pass.
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
DECLARE
    lo bigint;
    hi bigint;
    ids bigint[];           -- position -> step id
    size integer;
    is_step boolean[];      -- positions that hold a step (all of them unless dense)
    parent integer[];       -- edge k is parent[k] -> child[k], in positions
    child integer[];
    m integer;
    first_edge integer[];   -- children of p: children_of[first_edge[p] .. first_edge[p + 1] - 1]
    children_of integer[];
    cursor integer[];
    waiting integer[];      -- parents of a step not yet placed
    level integer[];
    queue integer[];
    head integer := 1;
    tail integer := 0;
    steps integer := 0;
    p integer;
    c integer;
    k integer;
    before integer[];       -- on the unplaced part: one unplaced parent of each step
    seen integer[];         -- when the walk for a cycle passed a step (0: never)
    walk integer[] := '{}';
BEGIN
    SELECT min(id), max(id), count(id) INTO lo, hi, k FROM unnest(step_ids) AS id;
    IF k = 0 THEN
        RETURN;
    END IF;
    IF hi - lo < 4 * k::bigint + 1024 THEN
        size := hi - lo + 1;
        ids := ARRAY(SELECT generate_series(lo, hi));
        is_step := array_fill(false, ARRAY[size]);
        FOR p IN SELECT (id - lo + 1)::integer FROM unnest(step_ids) AS id WHERE id IS NOT NULL LOOP
            is_step[p] := true;
        END LOOP;
        SELECT coalesce(array_agg((e.from_id - lo + 1)::integer), '{}'),
               coalesce(array_agg((e.to_id - lo + 1)::integer), '{}')
        INTO parent, child
        FROM unnest(from_ids, to_ids) AS e (from_id, to_id)
        WHERE e.from_id BETWEEN lo AND hi AND e.to_id BETWEEN lo AND hi;
    ELSE
        ids := ARRAY(SELECT DISTINCT id FROM unnest(step_ids) AS id WHERE id IS NOT NULL ORDER BY id);
        size := cardinality(ids);
        is_step := array_fill(true, ARRAY[size]);
        WITH node AS (
            SELECT u.id, u.pos::integer AS pos FROM unnest(ids) WITH ORDINALITY AS u (id, pos)
        )
        SELECT coalesce(array_agg(f.pos), '{}'), coalesce(array_agg(t.pos), '{}')
        INTO parent, child
        FROM unnest(from_ids, to_ids) AS e (from_id, to_id)
        JOIN node AS f ON f.id = e.from_id
        JOIN node AS t ON t.id = e.to_id;
    END IF;
    m := cardinality(parent);

    -- Edges with an end outside the steps are not part of the graph (child 0).
    waiting := array_fill(0, ARRAY[size]);
    first_edge := array_fill(0, ARRAY[size + 1]);
    FOR k IN 1 .. m LOOP
        IF is_step[parent[k]] AND is_step[child[k]] THEN
            waiting[child[k]] := waiting[child[k]] + 1;
            first_edge[parent[k] + 1] := first_edge[parent[k] + 1] + 1;
        ELSE
            child[k] := 0;
        END IF;
    END LOOP;
    first_edge[1] := 1;
    FOR p IN 2 .. size + 1 LOOP
        first_edge[p] := first_edge[p - 1] + first_edge[p];
    END LOOP;
    cursor := first_edge;
    children_of := array_fill(0, ARRAY[greatest(m, 1)]);
    FOR k IN 1 .. m LOOP
        IF child[k] > 0 THEN
            children_of[cursor[parent[k]]] := child[k];
            cursor[parent[k]] := cursor[parent[k]] + 1;
        END IF;
    END LOOP;

    level := array_fill(0, ARRAY[size]);
    queue := array_fill(0, ARRAY[size]);
    FOR p IN 1 .. size LOOP
        IF is_step[p] THEN
            steps := steps + 1;
            IF waiting[p] = 0 THEN
                tail := tail + 1;
                queue[tail] := p;
            END IF;
        END IF;
    END LOOP;
    -- A step is queued once its last parent is placed, so its level is final by then.
    WHILE head <= tail LOOP
        p := queue[head];
        head := head + 1;
        FOR k IN first_edge[p] .. first_edge[p + 1] - 1 LOOP
            c := children_of[k];
            IF level[c] <= level[p] THEN
                level[c] := level[p] + 1;
            END IF;
            waiting[c] := waiting[c] - 1;
            IF waiting[c] = 0 THEN
                tail := tail + 1;
                queue[tail] := c;
            END IF;
        END LOOP;
    END LOOP;

    RETURN QUERY
        SELECT u.id, u.placed_level, NULL::integer
        FROM unnest(ids, level, waiting, is_step) AS u (id, placed_level, unplaced_parents, member)
        WHERE u.member AND u.unplaced_parents = 0;
    IF tail = steps THEN
        RETURN;
    END IF;

    -- Every unplaced step has an unplaced parent, so walking from one to such a parent,
    -- again and again, must come back to a step it passed: the steps since then are a
    -- cycle, met in reverse.
    before := array_fill(0, ARRAY[size]);
    FOR k IN 1 .. m LOOP
        IF child[k] > 0 AND waiting[parent[k]] > 0 AND waiting[child[k]] > 0 THEN
            before[child[k]] := parent[k];
        END IF;
    END LOOP;
    seen := array_fill(0, ARRAY[size]);
    p := 1;
    WHILE waiting[p] = 0 LOOP
        p := p + 1;
    END LOOP;
    WHILE seen[p] = 0 LOOP
        walk := walk || p;
        seen[p] := cardinality(walk);
        p := before[p];
    END LOOP;
    RETURN QUERY
        SELECT ids[walk[back.i]], NULL::integer, (cardinality(walk) - back.i + 1)::integer
        FROM generate_series(cardinality(walk), seen[p], -1) AS back (i);
END;
$$;
COMMENT ON FUNCTION tasker_topological_levels(bigint[], bigint[], bigint[]) IS
    'The steps step_ids of the graph whose edges are from_ids[i] -> to_ids[i] (edges outside the steps ignored), each with its longest distance from a root (roots: level 0), unordered; cycle_position NULL. Steps on or behind a cycle get no level: the steps of one cycle come instead, dependency_level NULL, numbered by cycle_position along its edges. O(steps + edges) when the ids are dense, plus sorting them otherwise.';

-- The given steps and every step below them (their children, theirs, and so on). Each
-- round of the walk looks up the children of the steps it reached last, by the edges'
-- (from_step_id, to_step_id) index: without the settings below the planner, which
-- expects a handful of rows per round, would rather scan every edge in each round,
-- which costs the number of rounds (the depth) times the size of the table.
CREATE FUNCTION tasker_steps_below(step_ids bigint[])
RETURNS bigint[]
LANGUAGE sql STABLE PARALLEL SAFE
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_seqscan = off
SET jit = off
AS $$
    -- UNION (not UNION ALL) visits each step once.
    WITH RECURSIVE below (step_id) AS (
        SELECT DISTINCT given.step_id FROM unnest(step_ids) AS given (step_id)
        UNION
        SELECT edge.to_step_id
        FROM below
        JOIN tasker_workflow_step_edges AS edge ON edge.from_step_id = below.step_id
    )
    SELECT coalesce(array_agg(below.step_id), '{}') FROM below
$$;
COMMENT ON FUNCTION tasker_steps_below(bigint[]) IS
    'The given steps and all their descendants along tasker_workflow_step_edges, each once, unordered. One index probe per step reached.';

-- Checks the edges written by one statement (transition table new_edges), at a cost
-- that grows with the part of the graph they lead into, not with the number of edges:
-- a whole DAG inserted by one statement is checked by one topological pass.
CREATE FUNCTION tasker_check_step_edges() RETURNS trigger
LANGUAGE plpgsql
-- Transition tables and arrays of any size: plan each statement for what it holds.
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
DECLARE
    bad RECORD;
    tasks bigint[];
    reached bigint[];
    cycle bigint[];
    cycle_length integer;
    at integer;
    shown text;
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
    -- READ COMMITTED one waits and then sees the committed edges. A task row
    -- this transaction wrote (xmin: it created the task, or updated it and so
    -- holds its lock) needs neither: no other writer can reach its graph.
    tasks := ARRAY(SELECT DISTINCT t.task_id
                     FROM new_edges n
                     JOIN tasker_workflow_steps s ON s.workflow_step_id = n.to_step_id
                     JOIN tasker_tasks t ON t.task_id = s.task_id
                    WHERE t.xmin <> pg_current_xact_id()::xid);
    IF tasks <> '{}' THEN
        PERFORM 1 FROM tasker_tasks t WHERE t.task_id = ANY (tasks)
         ORDER BY t.task_id
           FOR NO KEY UPDATE;
        UPDATE tasker_tasks t SET updated_at = now() AT TIME ZONE 'UTC'
         WHERE t.task_id = ANY (tasks);
    END IF;

    -- A new cycle runs through a new edge, so it lies inside what the new edges lead
    -- into: their children and everything below them. That part is closed under its
    -- edges, and is acyclic exactly when one topological pass places all of it.
    reached := tasker_steps_below(ARRAY(SELECT n.to_step_id FROM new_edges n));

    SELECT array_agg(l.workflow_step_id ORDER BY l.cycle_position) INTO cycle
      FROM (SELECT coalesce(array_agg(e.from_step_id ORDER BY e.id), '{}') AS from_ids,
                   coalesce(array_agg(e.to_step_id ORDER BY e.id), '{}') AS to_ids
              FROM unnest(reached) AS r (step_id)
              JOIN tasker_workflow_step_edges e ON e.from_step_id = r.step_id) AS edges,
           tasker_topological_levels(reached, edges.from_ids, edges.to_ids) AS l
     WHERE l.cycle_position IS NOT NULL;
    IF cycle IS NULL THEN
        RETURN NULL;
    END IF;

    -- Name the first new edge on the cycle (the others it runs through, if any,
    -- were there before) and list the cycle from that edge's parent on.
    cycle_length := cardinality(cycle);
    SELECT n.from_step_id, n.to_step_id, s.task_id, c.pos
      INTO bad
      FROM new_edges n
      JOIN unnest(cycle) WITH ORDINALITY AS c (step_id, pos) ON c.step_id = n.from_step_id
      JOIN tasker_workflow_steps s ON s.workflow_step_id = n.from_step_id
     WHERE n.to_step_id = cycle[c.pos % cycle_length + 1]
     ORDER BY n.id
     LIMIT 1;
    IF NOT FOUND THEN
        -- Only a graph that held a cycle before (written with the triggers off) gets here.
        SELECT cycle[1] AS from_step_id, cycle[1 % cycle_length + 1] AS to_step_id,
               s.task_id, 1::bigint AS pos
          INTO bad
          FROM tasker_workflow_steps s WHERE s.workflow_step_id = cycle[1];
    END IF;
    at := bad.pos;
    -- The first 20 steps of the cycle, in its order, with their names.
    SELECT string_agg(format('%s (%s)', c.step_id, named.name), ' -> ' ORDER BY c.k)
      INTO shown
      FROM (SELECT k, cycle[(at + k - 2) % cycle_length + 1] AS step_id
              FROM generate_series(1, CASE WHEN cycle_length > 20 THEN 20
                                               ELSE cycle_length + 1 END) AS k) AS c
      JOIN tasker_workflow_steps s ON s.workflow_step_id = c.step_id
      JOIN tasker_named_steps named ON named.named_step_id = s.named_step_id;
    IF cycle_length > 20 THEN
        shown := shown || format(' -> ... (%s steps in all)', cycle_length);
    END IF;
    RAISE EXCEPTION 'workflow step edge % -> % would create a cycle in task %: %',
            bad.from_step_id, bad.to_step_id, bad.task_id, shown
        USING ERRCODE = 'check_violation',
              CONSTRAINT = 'tasker_workflow_step_edges_acyclic',
              TABLE = TG_TABLE_NAME,
              SCHEMA = TG_TABLE_SCHEMA;
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

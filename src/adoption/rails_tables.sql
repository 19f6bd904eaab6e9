-- Brings the tables of a database that the Rails Tasker engine created to the shape the
-- crate's table migration (2026-11-26-100000_create_tasker_tables) gives them, in place:
-- every row is kept. It runs after the state-type migration and instead of the table
-- migration, in one transaction; the migrations after it then run as on any database.
-- The adoption tests compare the result with a freshly migrated database, catalog
-- entry by catalog entry.

-- The engine's functions and view: the crate's migrations create them again, under
-- the same names and argument types, reading the maintained readiness.
DROP VIEW IF EXISTS tasker_step_dag_relationships;
DROP FUNCTION IF EXISTS calculate_dependency_levels(bigint);
DROP FUNCTION IF EXISTS get_step_readiness_status(bigint, bigint[]);
DROP FUNCTION IF EXISTS get_step_readiness_status_batch(bigint[]);
DROP FUNCTION IF EXISTS get_task_execution_context(bigint);
DROP FUNCTION IF EXISTS get_task_execution_contexts_batch(bigint[]);
DROP FUNCTION IF EXISTS get_system_health_counts_v01();
DROP FUNCTION IF EXISTS get_analytics_metrics_v01(timestamptz);
DROP FUNCTION IF EXISTS get_slowest_steps_v01(timestamptz, integer, text, text, text);
DROP FUNCTION IF EXISTS get_slowest_tasks_v01(timestamptz, integer, text, text, text);

-- Every foreign key, unique and check constraint and every index but the primary keys:
-- the engine's names differ from the crate's, and many of its indexes repeat each other
-- (each costs every insert). The crate's own are created below.
DO $$
DECLARE
    tables text[] := ARRAY[
        'tasker_task_namespaces', 'tasker_dependent_systems', 'tasker_named_tasks',
        'tasker_named_steps', 'tasker_named_tasks_named_steps',
        'tasker_dependent_system_object_maps', 'tasker_annotation_types', 'tasker_tasks',
        'tasker_workflow_steps', 'tasker_workflow_step_edges',
        'tasker_workflow_step_transitions', 'tasker_task_transitions',
        'tasker_task_annotations'];
    dropped record;
BEGIN
    -- Foreign keys first: a unique index may be what one of them references.
    FOR dropped IN
        SELECT c.conrelid::regclass AS tbl, c.conname
        FROM pg_constraint AS c
        WHERE c.conrelid::regclass::text = ANY (tables) AND c.contype = 'f'
        ORDER BY 1, 2
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', dropped.tbl, dropped.conname);
    END LOOP;
    FOR dropped IN
        SELECT c.conrelid::regclass AS tbl, c.conname
        FROM pg_constraint AS c
        WHERE c.conrelid::regclass::text = ANY (tables) AND c.contype IN ('u', 'c', 'x')
        ORDER BY 1, 2
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', dropped.tbl, dropped.conname);
    END LOOP;
    FOR dropped IN
        SELECT i.indexrelid::regclass AS idx
        FROM pg_index AS i
        WHERE i.indrelid::regclass::text = ANY (tables)
          AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)
        ORDER BY 1
    LOOP
        EXECUTE format('DROP INDEX %s', dropped.idx);
    END LOOP;
END;
$$;

-- Columns: the engine leaves the timestamps without defaults (ActiveRecord writes them),
-- the crate's writers rely on them. Each table is altered by one statement, so a table
-- that must be rewritten is rewritten once.
ALTER TABLE tasker_task_namespaces
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_dependent_systems
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_named_tasks
    ALTER COLUMN task_namespace_id DROP DEFAULT,
    ALTER COLUMN task_namespace_id TYPE integer,
    ALTER COLUMN configuration SET DEFAULT '{}'::jsonb,
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_named_steps
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_named_tasks_named_steps
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_dependent_system_object_maps
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_annotation_types
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_tasks
    ALTER COLUMN requested_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN bypass_steps TYPE jsonb USING bypass_steps::jsonb,
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_workflow_steps
    ALTER COLUMN attempts SET DEFAULT 0,
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_workflow_step_edges
    ALTER COLUMN name TYPE varchar(128),
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
-- A state the enum lacks stops the adoption here, naming the value.
ALTER TABLE tasker_workflow_step_transitions
    ALTER COLUMN to_state TYPE tasker_step_state USING to_state::tasker_step_state,
    ALTER COLUMN from_state TYPE tasker_step_state USING from_state::tasker_step_state,
    ALTER COLUMN most_recent DROP DEFAULT,
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_task_transitions
    ALTER COLUMN to_state TYPE tasker_task_state USING to_state::tasker_task_state,
    ALTER COLUMN from_state TYPE tasker_task_state USING from_state::tasker_task_state,
    ALTER COLUMN most_recent DROP DEFAULT,
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');
ALTER TABLE tasker_task_annotations
    ALTER COLUMN created_at TYPE timestamp, ALTER COLUMN created_at SET DEFAULT (now() AT TIME ZONE 'UTC'),
    ALTER COLUMN updated_at TYPE timestamp, ALTER COLUMN updated_at SET DEFAULT (now() AT TIME ZONE 'UTC');

-- The crate's constraints and indexes. A row that breaks one (a duplicate the engine's
-- validations let through, a self edge) stops the adoption, named by PostgreSQL.
ALTER TABLE tasker_task_namespaces
    ADD CONSTRAINT tasker_task_namespaces_name_key UNIQUE (name);
ALTER TABLE tasker_dependent_systems
    ADD CONSTRAINT tasker_dependent_systems_name_key UNIQUE (name);
ALTER TABLE tasker_named_tasks
    ADD CONSTRAINT tasker_named_tasks_task_namespace_id_fkey
        FOREIGN KEY (task_namespace_id) REFERENCES tasker_task_namespaces (task_namespace_id),
    ADD CONSTRAINT tasker_named_tasks_namespace_name_version_key UNIQUE (task_namespace_id, name, version);
ALTER TABLE tasker_named_steps
    ADD CONSTRAINT tasker_named_steps_dependent_system_id_fkey
        FOREIGN KEY (dependent_system_id) REFERENCES tasker_dependent_systems (dependent_system_id),
    ADD CONSTRAINT tasker_named_steps_system_name_key UNIQUE (dependent_system_id, name);
ALTER TABLE tasker_named_tasks_named_steps
    ADD CONSTRAINT tasker_named_tasks_named_steps_named_task_id_fkey
        FOREIGN KEY (named_task_id) REFERENCES tasker_named_tasks (named_task_id),
    ADD CONSTRAINT tasker_named_tasks_named_steps_named_step_id_fkey
        FOREIGN KEY (named_step_id) REFERENCES tasker_named_steps (named_step_id),
    ADD CONSTRAINT tasker_named_tasks_named_steps_task_step_key UNIQUE (named_task_id, named_step_id),
    ADD CONSTRAINT tasker_named_tasks_named_steps_retry_limit_check CHECK (default_retry_limit >= 0);
ALTER TABLE tasker_dependent_system_object_maps
    ADD CONSTRAINT tasker_dependent_system_object_map_dependent_system_one_id_fkey
        FOREIGN KEY (dependent_system_one_id) REFERENCES tasker_dependent_systems (dependent_system_id),
    ADD CONSTRAINT tasker_dependent_system_object_map_dependent_system_two_id_fkey
        FOREIGN KEY (dependent_system_two_id) REFERENCES tasker_dependent_systems (dependent_system_id),
    ADD CONSTRAINT tasker_dependent_system_object_maps_key
        UNIQUE (dependent_system_one_id, dependent_system_two_id, remote_id_one, remote_id_two);
CREATE INDEX tasker_dependent_system_object_maps_two_idx
    ON tasker_dependent_system_object_maps (dependent_system_two_id);
ALTER TABLE tasker_annotation_types
    ADD CONSTRAINT tasker_annotation_types_name_key UNIQUE (name);
ALTER TABLE tasker_tasks
    ADD CONSTRAINT tasker_tasks_named_task_id_fkey
        FOREIGN KEY (named_task_id) REFERENCES tasker_named_tasks (named_task_id),
    ADD CONSTRAINT tasker_tasks_identity_hash_key UNIQUE (identity_hash);
CREATE INDEX tasker_tasks_named_task_id_idx ON tasker_tasks (named_task_id);
ALTER TABLE tasker_workflow_steps
    ADD CONSTRAINT tasker_workflow_steps_task_id_fkey
        FOREIGN KEY (task_id) REFERENCES tasker_tasks (task_id) ON DELETE CASCADE,
    ADD CONSTRAINT tasker_workflow_steps_named_step_id_fkey
        FOREIGN KEY (named_step_id) REFERENCES tasker_named_steps (named_step_id),
    ADD CONSTRAINT tasker_workflow_steps_task_named_step_key UNIQUE (task_id, named_step_id),
    ADD CONSTRAINT tasker_workflow_steps_retry_limit_check CHECK (retry_limit >= 0),
    ADD CONSTRAINT tasker_workflow_steps_attempts_check CHECK (attempts >= 0),
    ADD CONSTRAINT tasker_workflow_steps_backoff_request_seconds_check CHECK (backoff_request_seconds >= 0);
CREATE INDEX tasker_workflow_steps_named_step_id_idx ON tasker_workflow_steps (named_step_id);
ALTER TABLE tasker_workflow_step_edges
    ADD CONSTRAINT tasker_workflow_step_edges_from_step_id_fkey
        FOREIGN KEY (from_step_id) REFERENCES tasker_workflow_steps (workflow_step_id) ON DELETE CASCADE,
    ADD CONSTRAINT tasker_workflow_step_edges_to_step_id_fkey
        FOREIGN KEY (to_step_id) REFERENCES tasker_workflow_steps (workflow_step_id) ON DELETE CASCADE,
    ADD CONSTRAINT tasker_workflow_step_edges_from_to_key UNIQUE (from_step_id, to_step_id),
    ADD CONSTRAINT tasker_workflow_step_edges_not_self_check CHECK (from_step_id <> to_step_id);
CREATE INDEX tasker_workflow_step_edges_to_from_idx
    ON tasker_workflow_step_edges (to_step_id, from_step_id);
ALTER TABLE tasker_workflow_step_transitions
    ADD CONSTRAINT tasker_workflow_step_transitions_workflow_step_id_fkey
        FOREIGN KEY (workflow_step_id) REFERENCES tasker_workflow_steps (workflow_step_id) ON DELETE CASCADE,
    ADD CONSTRAINT tasker_workflow_step_transitions_step_sort_key_key UNIQUE (workflow_step_id, sort_key),
    ADD CONSTRAINT tasker_workflow_step_transitions_not_skipped_check
        CHECK (to_state <> 'skipped' AND from_state IS DISTINCT FROM 'skipped'),
    ADD CONSTRAINT tasker_workflow_step_transitions_metadata_object_check
        CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object');
CREATE UNIQUE INDEX tasker_workflow_step_transitions_most_recent_idx
    ON tasker_workflow_step_transitions (workflow_step_id)
    INCLUDE (to_state, created_at)
    WHERE most_recent;
ALTER TABLE tasker_task_transitions
    ADD CONSTRAINT tasker_task_transitions_task_id_fkey
        FOREIGN KEY (task_id) REFERENCES tasker_tasks (task_id) ON DELETE CASCADE,
    ADD CONSTRAINT tasker_task_transitions_task_sort_key_key UNIQUE (task_id, sort_key),
    ADD CONSTRAINT tasker_task_transitions_metadata_object_check
        CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object');
CREATE UNIQUE INDEX tasker_task_transitions_most_recent_idx
    ON tasker_task_transitions (task_id)
    INCLUDE (to_state, created_at)
    WHERE most_recent;
ALTER TABLE tasker_task_annotations
    ADD CONSTRAINT tasker_task_annotations_task_id_fkey
        FOREIGN KEY (task_id) REFERENCES tasker_tasks (task_id) ON DELETE CASCADE,
    ADD CONSTRAINT tasker_task_annotations_annotation_type_id_fkey
        FOREIGN KEY (annotation_type_id) REFERENCES tasker_annotation_types (annotation_type_id);
CREATE INDEX tasker_task_annotations_task_id_idx ON tasker_task_annotations (task_id);
CREATE INDEX tasker_task_annotations_annotation_type_id_idx
    ON tasker_task_annotations (annotation_type_id);

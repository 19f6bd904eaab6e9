-- The Tasker schema: catalogs, task and step instances, the step DAG and the
-- state-transition histories. Table and column names follow the Rails Tasker
-- engine so both can work on the same database. Every timestamp is
-- `timestamp without time zone` holding UTC, whatever the session's TimeZone.

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

-- Catalogs -------------------------------------------------------------------

CREATE TABLE tasker_task_namespaces (
    task_namespace_id SERIAL PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    description VARCHAR(255),
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_task_namespaces_name_key UNIQUE (name)
);
COMMENT ON TABLE tasker_task_namespaces IS
    'Namespaces that group task templates (for example one per team or domain).';

CREATE TABLE tasker_dependent_systems (
    dependent_system_id SERIAL PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    description VARCHAR(255),
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_dependent_systems_name_key UNIQUE (name)
);
COMMENT ON TABLE tasker_dependent_systems IS
    'External systems that workflow steps talk to.';

CREATE TABLE tasker_named_tasks (
    named_task_id SERIAL PRIMARY KEY,
    task_namespace_id INTEGER NOT NULL REFERENCES tasker_task_namespaces (task_namespace_id),
    name VARCHAR(64) NOT NULL,
    version VARCHAR(16) NOT NULL DEFAULT '0.1.0',
    description VARCHAR(255),
    configuration JSONB DEFAULT '{}'::jsonb,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_named_tasks_namespace_name_version_key UNIQUE (task_namespace_id, name, version)
);
COMMENT ON TABLE tasker_named_tasks IS
    'Task templates: a named, versioned workflow definition within a namespace.';
COMMENT ON COLUMN tasker_named_tasks.version IS
    'Template version (semantic version string); namespace, name and version identify a template.';
COMMENT ON COLUMN tasker_named_tasks.configuration IS
    'Free-form template configuration owned by the application.';

CREATE TABLE tasker_named_steps (
    named_step_id SERIAL PRIMARY KEY,
    dependent_system_id INTEGER NOT NULL REFERENCES tasker_dependent_systems (dependent_system_id),
    name VARCHAR(128) NOT NULL,
    description VARCHAR(255),
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_named_steps_system_name_key UNIQUE (dependent_system_id, name)
);
COMMENT ON TABLE tasker_named_steps IS
    'Step templates: a named unit of work against one dependent system.';

CREATE TABLE tasker_named_tasks_named_steps (
    id SERIAL PRIMARY KEY,
    named_task_id INTEGER NOT NULL REFERENCES tasker_named_tasks (named_task_id),
    named_step_id INTEGER NOT NULL REFERENCES tasker_named_steps (named_step_id),
    skippable BOOLEAN NOT NULL DEFAULT FALSE,
    default_retryable BOOLEAN NOT NULL DEFAULT TRUE,
    default_retry_limit INTEGER NOT NULL DEFAULT 3,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_named_tasks_named_steps_task_step_key UNIQUE (named_task_id, named_step_id),
    CONSTRAINT tasker_named_tasks_named_steps_retry_limit_check CHECK (default_retry_limit >= 0)
);
COMMENT ON TABLE tasker_named_tasks_named_steps IS
    'Which step templates a task template has, with the defaults its step instances get.';
COMMENT ON COLUMN tasker_named_tasks_named_steps.skippable IS
    'Whether instances of this step may be skipped (bypassed) by a task.';
COMMENT ON COLUMN tasker_named_tasks_named_steps.default_retryable IS
    'Initial `retryable` of the step instances created from this template.';
COMMENT ON COLUMN tasker_named_tasks_named_steps.default_retry_limit IS
    'Initial `retry_limit` of the step instances created from this template.';

CREATE TABLE tasker_dependent_system_object_maps (
    dependent_system_object_map_id BIGSERIAL PRIMARY KEY,
    dependent_system_one_id INTEGER NOT NULL REFERENCES tasker_dependent_systems (dependent_system_id),
    dependent_system_two_id INTEGER NOT NULL REFERENCES tasker_dependent_systems (dependent_system_id),
    remote_id_one VARCHAR(128) NOT NULL,
    remote_id_two VARCHAR(128) NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_dependent_system_object_maps_key
        UNIQUE (dependent_system_one_id, dependent_system_two_id, remote_id_one, remote_id_two)
);
COMMENT ON TABLE tasker_dependent_system_object_maps IS
    'Maps an object id in one dependent system to the id of the same object in another.';
COMMENT ON COLUMN tasker_dependent_system_object_maps.remote_id_one IS
    'The object''s id in dependent system one.';
COMMENT ON COLUMN tasker_dependent_system_object_maps.remote_id_two IS
    'The object''s id in dependent system two.';
-- The unique key leads with system one; this serves lookups and deletes by system two.
CREATE INDEX tasker_dependent_system_object_maps_two_idx
    ON tasker_dependent_system_object_maps (dependent_system_two_id);

CREATE TABLE tasker_annotation_types (
    annotation_type_id SERIAL PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    description VARCHAR(255),
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_annotation_types_name_key UNIQUE (name)
);
COMMENT ON TABLE tasker_annotation_types IS
    'Kinds of annotation that can be attached to tasks.';

-- Instances ------------------------------------------------------------------

CREATE TABLE tasker_tasks (
    task_id BIGSERIAL PRIMARY KEY,
    named_task_id INTEGER NOT NULL REFERENCES tasker_named_tasks (named_task_id),
    complete BOOLEAN NOT NULL DEFAULT FALSE,
    requested_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    initiator VARCHAR(128),
    source_system VARCHAR(128),
    reason VARCHAR(128),
    bypass_steps JSONB,
    tags JSONB,
    context JSONB,
    identity_hash VARCHAR(128) NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_tasks_identity_hash_key UNIQUE (identity_hash)
);
COMMENT ON TABLE tasker_tasks IS
    'Task instances: one run of a task template. Its state lives in tasker_task_transitions.';
COMMENT ON COLUMN tasker_tasks.complete IS
    'True once the task has been finalized as complete.';
COMMENT ON COLUMN tasker_tasks.requested_at IS
    'When the task was requested (UTC).';
COMMENT ON COLUMN tasker_tasks.initiator IS
    'Who or what asked for the task (a user, a service).';
COMMENT ON COLUMN tasker_tasks.source_system IS
    'The system the request came from.';
COMMENT ON COLUMN tasker_tasks.reason IS
    'Why the task was requested.';
COMMENT ON COLUMN tasker_tasks.bypass_steps IS
    'Names of skippable steps this task bypasses (JSON array).';
COMMENT ON COLUMN tasker_tasks.context IS
    'The task''s input: the JSON its steps work on.';
COMMENT ON COLUMN tasker_tasks.identity_hash IS
    'Hash of what makes a request unique; creating the same request twice finds the same task.';
CREATE INDEX tasker_tasks_named_task_id_idx ON tasker_tasks (named_task_id);

CREATE TABLE tasker_workflow_steps (
    workflow_step_id BIGSERIAL PRIMARY KEY,
    task_id BIGINT NOT NULL REFERENCES tasker_tasks (task_id) ON DELETE CASCADE,
    named_step_id INTEGER NOT NULL REFERENCES tasker_named_steps (named_step_id),
    retryable BOOLEAN NOT NULL DEFAULT TRUE,
    retry_limit INTEGER DEFAULT 3,
    in_process BOOLEAN NOT NULL DEFAULT FALSE,
    processed BOOLEAN NOT NULL DEFAULT FALSE,
    processed_at TIMESTAMP,
    attempts INTEGER DEFAULT 0,
    last_attempted_at TIMESTAMP,
    backoff_request_seconds INTEGER,
    inputs JSONB,
    results JSONB,
    skippable BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    -- Also the index for "all steps of a task".
    CONSTRAINT tasker_workflow_steps_task_named_step_key UNIQUE (task_id, named_step_id),
    CONSTRAINT tasker_workflow_steps_retry_limit_check CHECK (retry_limit >= 0),
    CONSTRAINT tasker_workflow_steps_attempts_check CHECK (attempts >= 0),
    CONSTRAINT tasker_workflow_steps_backoff_request_seconds_check CHECK (backoff_request_seconds >= 0)
);
COMMENT ON TABLE tasker_workflow_steps IS
    'Step instances of a task. Dependencies are in tasker_workflow_step_edges, state in tasker_workflow_step_transitions.';
COMMENT ON COLUMN tasker_workflow_steps.retryable IS
    'False: the step gets its first attempt but no retry after a failure.';
COMMENT ON COLUMN tasker_workflow_steps.retry_limit IS
    'Attempts allowed in all; NULL is read as 3.';
COMMENT ON COLUMN tasker_workflow_steps.in_process IS
    'True while a worker is executing the step.';
COMMENT ON COLUMN tasker_workflow_steps.processed IS
    'True once the step has finished for good; a processed step is never run again.';
COMMENT ON COLUMN tasker_workflow_steps.processed_at IS
    'When the step was processed (UTC).';
COMMENT ON COLUMN tasker_workflow_steps.attempts IS
    'Executions started so far; NULL is read as 0.';
COMMENT ON COLUMN tasker_workflow_steps.last_attempted_at IS
    'When the latest execution started (UTC).';
COMMENT ON COLUMN tasker_workflow_steps.backoff_request_seconds IS
    'Delay the step asked for (for example from Retry-After), counted from last_attempted_at.';
COMMENT ON COLUMN tasker_workflow_steps.inputs IS
    'Step-specific input, beside the task context.';
COMMENT ON COLUMN tasker_workflow_steps.results IS
    'What the step produced.';
COMMENT ON COLUMN tasker_workflow_steps.skippable IS
    'Whether the task may bypass this step.';
CREATE INDEX tasker_workflow_steps_named_step_id_idx ON tasker_workflow_steps (named_step_id);

CREATE TABLE tasker_workflow_step_edges (
    id BIGSERIAL PRIMARY KEY,
    from_step_id BIGINT NOT NULL REFERENCES tasker_workflow_steps (workflow_step_id) ON DELETE CASCADE,
    to_step_id BIGINT NOT NULL REFERENCES tasker_workflow_steps (workflow_step_id) ON DELETE CASCADE,
    name VARCHAR(128) NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    -- Also the index for "children of a step".
    CONSTRAINT tasker_workflow_step_edges_from_to_key UNIQUE (from_step_id, to_step_id),
    CONSTRAINT tasker_workflow_step_edges_not_self_check CHECK (from_step_id <> to_step_id)
);
COMMENT ON TABLE tasker_workflow_step_edges IS
    'Dependencies between the steps of one task: to_step_id may run only after from_step_id. The edges form a DAG.';
COMMENT ON COLUMN tasker_workflow_step_edges.from_step_id IS
    'The parent: the step that must finish first.';
COMMENT ON COLUMN tasker_workflow_step_edges.to_step_id IS
    'The child: the step that waits for the parent.';
COMMENT ON COLUMN tasker_workflow_step_edges.name IS
    'Label of the dependency (for example ''provides'').';
-- "Parents of a step", answered from the index alone.
CREATE INDEX tasker_workflow_step_edges_to_from_idx
    ON tasker_workflow_step_edges (to_step_id, from_step_id);

-- State histories ------------------------------------------------------------

CREATE TABLE tasker_workflow_step_transitions (
    id BIGSERIAL PRIMARY KEY,
    to_state tasker_step_state NOT NULL,
    from_state tasker_step_state,
    metadata JSONB DEFAULT '{}'::jsonb,
    sort_key INTEGER NOT NULL,
    most_recent BOOLEAN NOT NULL,
    workflow_step_id BIGINT NOT NULL REFERENCES tasker_workflow_steps (workflow_step_id) ON DELETE CASCADE,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    -- Also the index for "history of a step, in order".
    CONSTRAINT tasker_workflow_step_transitions_step_sort_key_key UNIQUE (workflow_step_id, sort_key),
    CONSTRAINT tasker_workflow_step_transitions_not_skipped_check
        CHECK (to_state <> 'skipped' AND from_state IS DISTINCT FROM 'skipped'),
    -- The Rails engine reads a transition's metadata as a Hash.
    CONSTRAINT tasker_workflow_step_transitions_metadata_object_check
        CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object')
);
COMMENT ON TABLE tasker_workflow_step_transitions IS
    'State history of workflow steps. The row with most_recent = true holds the step''s current state.';
COMMENT ON COLUMN tasker_workflow_step_transitions.to_state IS
    'The state the step entered.';
COMMENT ON COLUMN tasker_workflow_step_transitions.from_state IS
    'The state the step left; NULL for its first transition.';
COMMENT ON COLUMN tasker_workflow_step_transitions.metadata IS
    'Context of the transition (error details, worker, ...).';
COMMENT ON COLUMN tasker_workflow_step_transitions.sort_key IS
    'Position of the transition in the step''s history, increasing.';
COMMENT ON COLUMN tasker_workflow_step_transitions.most_recent IS
    'True for the step''s latest transition only (at most one per step).';
-- One current state per step, and the seek that reads it without the heap.
CREATE UNIQUE INDEX tasker_workflow_step_transitions_most_recent_idx
    ON tasker_workflow_step_transitions (workflow_step_id)
    INCLUDE (to_state, created_at)
    WHERE most_recent;

CREATE TABLE tasker_task_transitions (
    id BIGSERIAL PRIMARY KEY,
    to_state tasker_task_state NOT NULL,
    from_state tasker_task_state,
    metadata JSONB DEFAULT '{}'::jsonb,
    sort_key INTEGER NOT NULL,
    most_recent BOOLEAN NOT NULL,
    task_id BIGINT NOT NULL REFERENCES tasker_tasks (task_id) ON DELETE CASCADE,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_task_transitions_task_sort_key_key UNIQUE (task_id, sort_key),
    -- The Rails engine reads a transition's metadata as a Hash.
    CONSTRAINT tasker_task_transitions_metadata_object_check
        CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object')
);
COMMENT ON TABLE tasker_task_transitions IS
    'State history of tasks. The row with most_recent = true holds the task''s current state.';
COMMENT ON COLUMN tasker_task_transitions.to_state IS
    'The state the task entered.';
COMMENT ON COLUMN tasker_task_transitions.from_state IS
    'The state the task left; NULL for its first transition.';
COMMENT ON COLUMN tasker_task_transitions.metadata IS
    'Context of the transition.';
COMMENT ON COLUMN tasker_task_transitions.sort_key IS
    'Position of the transition in the task''s history, increasing.';
COMMENT ON COLUMN tasker_task_transitions.most_recent IS
    'True for the task''s latest transition only (at most one per task).';
CREATE UNIQUE INDEX tasker_task_transitions_most_recent_idx
    ON tasker_task_transitions (task_id)
    INCLUDE (to_state, created_at)
    WHERE most_recent;

-- Annotations ----------------------------------------------------------------

CREATE TABLE tasker_task_annotations (
    task_annotation_id BIGSERIAL PRIMARY KEY,
    task_id BIGINT NOT NULL REFERENCES tasker_tasks (task_id) ON DELETE CASCADE,
    annotation_type_id INTEGER NOT NULL REFERENCES tasker_annotation_types (annotation_type_id),
    annotation JSONB,
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
COMMENT ON TABLE tasker_task_annotations IS
    'Typed JSON notes attached to tasks.';
CREATE INDEX tasker_task_annotations_task_id_idx ON tasker_task_annotations (task_id);
CREATE INDEX tasker_task_annotations_annotation_type_id_idx
    ON tasker_task_annotations (annotation_type_id);

-- updated_at maintenance on every table ----------------------------------------

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'tasker_task_namespaces', 'tasker_dependent_systems', 'tasker_named_tasks',
        'tasker_named_steps', 'tasker_named_tasks_named_steps',
        'tasker_dependent_system_object_maps', 'tasker_annotation_types', 'tasker_tasks',
        'tasker_workflow_steps', 'tasker_workflow_step_edges',
        'tasker_workflow_step_transitions', 'tasker_task_transitions', 'tasker_task_annotations'
    ] LOOP
        EXECUTE format(
            'CREATE TRIGGER %I BEFORE UPDATE ON %I FOR EACH ROW EXECUTE FUNCTION tasker_set_updated_at()',
            t || '_updated_at', t);
    END LOOP;
END;
$$;

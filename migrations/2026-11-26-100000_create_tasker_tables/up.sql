-- The Tasker schema: catalogs, task and step instances, the step DAG and the
-- state-transition histories. Table and column names follow the Rails Tasker
-- engine so both can work on the same database. Every timestamp is
-- `timestamp without time zone` holding UTC, whatever the session's TimeZone.

-- Catalogs -------------------------------------------------------------------

CREATE TABLE tasker_task_namespaces (
    task_namespace_id SERIAL PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    description VARCHAR(255),
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_task_namespaces_name_key UNIQUE (name)
);

CREATE TABLE tasker_dependent_systems (
    dependent_system_id SERIAL PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    description VARCHAR(255),
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_dependent_systems_name_key UNIQUE (name)
);

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

CREATE TABLE tasker_named_steps (
    named_step_id SERIAL PRIMARY KEY,
    dependent_system_id INTEGER NOT NULL REFERENCES tasker_dependent_systems (dependent_system_id),
    name VARCHAR(128) NOT NULL,
    description VARCHAR(255),
    created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    CONSTRAINT tasker_named_steps_system_name_key UNIQUE (dependent_system_id, name)
);

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
CREATE INDEX tasker_task_annotations_task_id_idx ON tasker_task_annotations (task_id);
CREATE INDEX tasker_task_annotations_annotation_type_id_idx
    ON tasker_task_annotations (annotation_type_id);

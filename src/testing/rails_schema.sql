-- A database as the Rails Tasker engine's own schema leaves it, for the adoption tests
-- and the adoption benchmark: the engine's tables with its column types, order and
-- defaults (varchar states, timestamp(6), no defaults on the timestamps, json
-- bypass_steps, a bigint namespace key), its sequences, its foreign keys with Rails'
-- names, a sample of its many indexes (several repeating each other), the Rails
-- schema_migrations table, and the functions and view the engine defines, under the
-- names and argument types it gives them. Their bodies here answer from nothing: the
-- adoption replaces them, and only their names and argument types matter to it.

CREATE TABLE schema_migrations (version varchar PRIMARY KEY);
CREATE TABLE ar_internal_metadata (
    key varchar PRIMARY KEY,
    value varchar,
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);

CREATE TABLE tasker_task_namespaces (
    task_namespace_id serial PRIMARY KEY,
    name varchar(64) NOT NULL,
    description varchar(255),
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE UNIQUE INDEX task_namespaces_name_unique ON tasker_task_namespaces (name);
CREATE INDEX task_namespaces_name_index ON tasker_task_namespaces (name);

CREATE TABLE tasker_dependent_systems (
    dependent_system_id serial PRIMARY KEY,
    name varchar(64) NOT NULL,
    description varchar(255),
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE UNIQUE INDEX dependent_systems_name_unique ON tasker_dependent_systems (name);
CREATE INDEX dependent_systems_name_index ON tasker_dependent_systems (name);

-- The namespace key came later in the engine's history: bigint, after the timestamps.
CREATE TABLE tasker_named_tasks (
    named_task_id serial PRIMARY KEY,
    name varchar(64) NOT NULL,
    description varchar(255),
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL,
    task_namespace_id bigint NOT NULL DEFAULT 1,
    version varchar(16) NOT NULL DEFAULT '0.1.0',
    configuration jsonb DEFAULT '"{}"'::jsonb
);
CREATE UNIQUE INDEX named_tasks_namespace_name_version_unique
    ON tasker_named_tasks (task_namespace_id, name, version);
CREATE INDEX named_tasks_name_index ON tasker_named_tasks (name);
CREATE INDEX named_tasks_configuration_gin_index ON tasker_named_tasks USING gin (configuration);
ALTER TABLE tasker_named_tasks ADD CONSTRAINT fk_rails_16a0297759
    FOREIGN KEY (task_namespace_id) REFERENCES tasker_task_namespaces (task_namespace_id);

CREATE TABLE tasker_named_steps (
    named_step_id serial PRIMARY KEY,
    dependent_system_id integer NOT NULL,
    name varchar(128) NOT NULL,
    description varchar(255),
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE UNIQUE INDEX named_step_by_system_uniq ON tasker_named_steps (dependent_system_id, name);
CREATE INDEX named_steps_name_index ON tasker_named_steps (name);
ALTER TABLE tasker_named_steps ADD CONSTRAINT named_steps_dependent_system_id_foreign
    FOREIGN KEY (dependent_system_id) REFERENCES tasker_dependent_systems (dependent_system_id);

CREATE TABLE tasker_named_tasks_named_steps (
    id serial PRIMARY KEY,
    named_task_id integer NOT NULL,
    named_step_id integer NOT NULL,
    skippable boolean NOT NULL DEFAULT false,
    default_retryable boolean NOT NULL DEFAULT true,
    default_retry_limit integer NOT NULL DEFAULT 3,
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE UNIQUE INDEX named_tasks_steps_ids_unique
    ON tasker_named_tasks_named_steps (named_task_id, named_step_id);
ALTER TABLE tasker_named_tasks_named_steps ADD CONSTRAINT named_tasks_named_steps_named_task_id_foreign
    FOREIGN KEY (named_task_id) REFERENCES tasker_named_tasks (named_task_id);
ALTER TABLE tasker_named_tasks_named_steps ADD CONSTRAINT named_tasks_named_steps_named_step_id_foreign
    FOREIGN KEY (named_step_id) REFERENCES tasker_named_steps (named_step_id);

-- Rails' name for this sequence is PostgreSQL's truncation of a longer one.
CREATE SEQUENCE tasker_dependent_system_objec_dependent_system_object_map_i_seq;
CREATE TABLE tasker_dependent_system_object_maps (
    dependent_system_object_map_id bigint NOT NULL
        DEFAULT nextval('tasker_dependent_system_objec_dependent_system_object_map_i_seq')
        PRIMARY KEY,
    dependent_system_one_id integer NOT NULL,
    dependent_system_two_id integer NOT NULL,
    remote_id_one varchar(128) NOT NULL,
    remote_id_two varchar(128) NOT NULL,
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
ALTER SEQUENCE tasker_dependent_system_objec_dependent_system_object_map_i_seq
    OWNED BY tasker_dependent_system_object_maps.dependent_system_object_map_id;
CREATE UNIQUE INDEX dependent_system_object_maps_dependent_system_one_id_dependent_
    ON tasker_dependent_system_object_maps
       (dependent_system_one_id, dependent_system_two_id, remote_id_one, remote_id_two);
CREATE INDEX dependent_system_object_maps_remote_id_one_index
    ON tasker_dependent_system_object_maps (remote_id_one);
ALTER TABLE tasker_dependent_system_object_maps ADD CONSTRAINT dependent_system_object_maps_dependent_system_one_id_foreign
    FOREIGN KEY (dependent_system_one_id) REFERENCES tasker_dependent_systems (dependent_system_id);
ALTER TABLE tasker_dependent_system_object_maps ADD CONSTRAINT dependent_system_object_maps_dependent_system_two_id_foreign
    FOREIGN KEY (dependent_system_two_id) REFERENCES tasker_dependent_systems (dependent_system_id);

CREATE TABLE tasker_annotation_types (
    annotation_type_id serial PRIMARY KEY,
    name varchar(64) NOT NULL,
    description varchar(255),
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE UNIQUE INDEX annotation_types_name_unique ON tasker_annotation_types (name);

CREATE TABLE tasker_tasks (
    task_id bigserial PRIMARY KEY,
    named_task_id integer NOT NULL,
    complete boolean NOT NULL DEFAULT false,
    requested_at timestamp NOT NULL,
    initiator varchar(128),
    source_system varchar(128),
    reason varchar(128),
    bypass_steps json,
    tags jsonb,
    context jsonb,
    identity_hash varchar(128) NOT NULL,
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE UNIQUE INDEX index_tasks_on_identity_hash ON tasker_tasks (identity_hash);
CREATE INDEX tasks_identity_hash_index ON tasker_tasks (identity_hash);
CREATE INDEX tasks_named_task_id_index ON tasker_tasks (named_task_id);
CREATE INDEX tasks_context_idx ON tasker_tasks USING gin (context);
CREATE INDEX idx_tasks_active_operations ON tasker_tasks (task_id) WHERE complete = false OR complete IS NULL;
ALTER TABLE tasker_tasks ADD CONSTRAINT tasks_named_task_id_foreign
    FOREIGN KEY (named_task_id) REFERENCES tasker_named_tasks (named_task_id);

-- skippable was added after the timestamps.
CREATE TABLE tasker_workflow_steps (
    workflow_step_id bigserial PRIMARY KEY,
    task_id bigint NOT NULL,
    named_step_id integer NOT NULL,
    retryable boolean NOT NULL DEFAULT true,
    retry_limit integer DEFAULT 3,
    in_process boolean NOT NULL DEFAULT false,
    processed boolean NOT NULL DEFAULT false,
    processed_at timestamp,
    attempts integer,
    last_attempted_at timestamp,
    backoff_request_seconds integer,
    inputs jsonb,
    results jsonb,
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL,
    skippable boolean NOT NULL DEFAULT false
);
CREATE INDEX workflow_steps_task_id_index ON tasker_workflow_steps (task_id);
CREATE INDEX index_workflow_steps_by_task ON tasker_workflow_steps (task_id);
CREATE INDEX index_workflow_steps_task_and_id ON tasker_workflow_steps (task_id, workflow_step_id);
CREATE INDEX workflow_steps_named_step_id_index ON tasker_workflow_steps (named_step_id);
CREATE INDEX index_workflow_steps_task_covering ON tasker_workflow_steps (task_id)
    INCLUDE (workflow_step_id, processed, in_process, attempts, retry_limit);
CREATE INDEX idx_workflow_steps_task_readiness ON tasker_workflow_steps (task_id, processed, workflow_step_id)
    WHERE processed = false;
ALTER TABLE tasker_workflow_steps ADD CONSTRAINT workflow_steps_task_id_foreign
    FOREIGN KEY (task_id) REFERENCES tasker_tasks (task_id);
ALTER TABLE tasker_workflow_steps ADD CONSTRAINT workflow_steps_named_step_id_foreign
    FOREIGN KEY (named_step_id) REFERENCES tasker_named_steps (named_step_id);

-- The edge name has no length limit.
CREATE TABLE tasker_workflow_step_edges (
    id bigserial PRIMARY KEY,
    from_step_id bigint NOT NULL,
    to_step_id bigint NOT NULL,
    name varchar NOT NULL,
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE INDEX index_tasker_workflow_step_edges_on_from_step_id ON tasker_workflow_step_edges (from_step_id);
CREATE INDEX index_tasker_workflow_step_edges_on_to_step_id ON tasker_workflow_step_edges (to_step_id);
CREATE INDEX idx_step_edges_from_to ON tasker_workflow_step_edges (from_step_id, to_step_id);
CREATE INDEX idx_step_edges_to_from ON tasker_workflow_step_edges (to_step_id, from_step_id);
ALTER TABLE tasker_workflow_step_edges ADD CONSTRAINT fk_rails_7b4652ccf2
    FOREIGN KEY (from_step_id) REFERENCES tasker_workflow_steps (workflow_step_id);
ALTER TABLE tasker_workflow_step_edges ADD CONSTRAINT fk_rails_93ec0bf6eb
    FOREIGN KEY (to_step_id) REFERENCES tasker_workflow_steps (workflow_step_id);

-- Statesman's transition tables: states as varchar, most_recent defaulting to true.
CREATE TABLE tasker_workflow_step_transitions (
    id bigserial PRIMARY KEY,
    to_state varchar NOT NULL,
    from_state varchar,
    metadata jsonb DEFAULT '{}'::jsonb,
    sort_key integer NOT NULL,
    most_recent boolean NOT NULL DEFAULT true,
    workflow_step_id bigint NOT NULL,
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE UNIQUE INDEX idx_on_workflow_step_id_most_recent_97d5374ad6
    ON tasker_workflow_step_transitions (workflow_step_id, most_recent) WHERE most_recent = true;
CREATE UNIQUE INDEX idx_on_workflow_step_id_sort_key_4d476d7adb
    ON tasker_workflow_step_transitions (workflow_step_id, sort_key);
CREATE INDEX index_tasker_workflow_step_transitions_on_sort_key
    ON tasker_workflow_step_transitions (sort_key);
CREATE INDEX index_step_transitions_completed ON tasker_workflow_step_transitions (workflow_step_id, to_state)
    WHERE to_state::text = 'complete';
ALTER TABLE tasker_workflow_step_transitions ADD CONSTRAINT fk_rails_6e0f6eb833
    FOREIGN KEY (workflow_step_id) REFERENCES tasker_workflow_steps (workflow_step_id);

CREATE TABLE tasker_task_transitions (
    id bigserial PRIMARY KEY,
    to_state varchar NOT NULL,
    from_state varchar,
    metadata jsonb DEFAULT '{}'::jsonb,
    sort_key integer NOT NULL,
    most_recent boolean NOT NULL DEFAULT true,
    task_id bigint NOT NULL,
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE UNIQUE INDEX index_tasker_task_transitions_on_task_id_and_most_recent
    ON tasker_task_transitions (task_id, most_recent) WHERE most_recent = true;
CREATE UNIQUE INDEX index_tasker_task_transitions_on_task_id_and_sort_key
    ON tasker_task_transitions (task_id, sort_key);
CREATE INDEX index_tasker_task_transitions_on_task_id ON tasker_task_transitions (task_id);
ALTER TABLE tasker_task_transitions ADD CONSTRAINT fk_rails_e8caec803c
    FOREIGN KEY (task_id) REFERENCES tasker_tasks (task_id);

CREATE TABLE tasker_task_annotations (
    task_annotation_id bigserial PRIMARY KEY,
    task_id bigint NOT NULL,
    annotation_type_id integer NOT NULL,
    annotation jsonb,
    created_at timestamp(6) NOT NULL,
    updated_at timestamp(6) NOT NULL
);
CREATE INDEX task_annotations_annotation_idx ON tasker_task_annotations USING gin (annotation);
CREATE INDEX task_annotations_task_id_index ON tasker_task_annotations (task_id);
ALTER TABLE tasker_task_annotations ADD CONSTRAINT task_annotations_task_id_foreign
    FOREIGN KEY (task_id) REFERENCES tasker_tasks (task_id);
ALTER TABLE tasker_task_annotations ADD CONSTRAINT task_annotations_annotation_type_id_foreign
    FOREIGN KEY (annotation_type_id) REFERENCES tasker_annotation_types (annotation_type_id);

-- The engine's functions and view (names and argument types as the engine declares them).
CREATE FUNCTION calculate_dependency_levels(input_task_id bigint)
RETURNS TABLE (workflow_step_id bigint, dependency_level integer)
LANGUAGE sql STABLE AS $$ SELECT NULL::bigint, NULL::integer WHERE false $$;
CREATE FUNCTION get_step_readiness_status(input_task_id bigint, step_ids bigint[] DEFAULT NULL)
RETURNS TABLE (workflow_step_id bigint, current_state text)
LANGUAGE sql STABLE AS $$ SELECT NULL::bigint, NULL::text WHERE false $$;
CREATE FUNCTION get_step_readiness_status_batch(input_task_ids bigint[])
RETURNS TABLE (workflow_step_id bigint, current_state text)
LANGUAGE sql STABLE AS $$ SELECT NULL::bigint, NULL::text WHERE false $$;
CREATE FUNCTION get_task_execution_context(input_task_id bigint)
RETURNS TABLE (task_id bigint, status text)
LANGUAGE sql STABLE AS $$ SELECT NULL::bigint, NULL::text WHERE false $$;
CREATE FUNCTION get_task_execution_contexts_batch(input_task_ids bigint[])
RETURNS TABLE (task_id bigint, status text)
LANGUAGE sql STABLE AS $$ SELECT NULL::bigint, NULL::text WHERE false $$;
CREATE FUNCTION get_system_health_counts_v01()
RETURNS TABLE (total_tasks bigint)
LANGUAGE sql STABLE AS $$ SELECT NULL::bigint WHERE false $$;
CREATE FUNCTION get_analytics_metrics_v01(since_timestamp timestamptz DEFAULT NULL)
RETURNS TABLE (active_tasks_count bigint)
LANGUAGE sql STABLE AS $$ SELECT NULL::bigint WHERE false $$;
CREATE FUNCTION get_slowest_steps_v01(
    since_timestamp timestamptz DEFAULT NULL, limit_count integer DEFAULT 10,
    namespace_filter text DEFAULT NULL, task_name_filter text DEFAULT NULL,
    version_filter text DEFAULT NULL)
RETURNS TABLE (workflow_step_id bigint)
LANGUAGE sql STABLE AS $$ SELECT NULL::bigint WHERE false $$;
CREATE FUNCTION get_slowest_tasks_v01(
    since_timestamp timestamptz DEFAULT NULL, limit_count integer DEFAULT 10,
    namespace_filter text DEFAULT NULL, task_name_filter text DEFAULT NULL,
    version_filter text DEFAULT NULL)
RETURNS TABLE (task_id bigint)
LANGUAGE sql STABLE AS $$ SELECT NULL::bigint WHERE false $$;
CREATE VIEW tasker_step_dag_relationships AS
SELECT s.workflow_step_id, s.task_id, s.named_step_id FROM tasker_workflow_steps AS s;

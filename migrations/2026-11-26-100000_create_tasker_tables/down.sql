-- Dropping the tables drops their indexes, constraints and triggers too.
DROP TABLE tasker_task_annotations;
DROP TABLE tasker_task_transitions;
DROP TABLE tasker_workflow_step_transitions;
DROP TABLE tasker_workflow_step_edges;
DROP TABLE tasker_workflow_steps;
DROP TABLE tasker_tasks;
DROP TABLE tasker_annotation_types;
DROP TABLE tasker_dependent_system_object_maps;
DROP TABLE tasker_named_tasks_named_steps;
DROP TABLE tasker_named_steps;
DROP TABLE tasker_named_tasks;
DROP TABLE tasker_dependent_systems;
DROP TABLE tasker_task_namespaces;

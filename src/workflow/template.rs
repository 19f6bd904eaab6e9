//! Task templates: the typed description of a workflow, checked before any
//! row is written.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::arguments;

/// Longest namespace name (`tasker_task_namespaces.name VARCHAR(64)`).
pub const MAX_NAMESPACE_LENGTH: usize = 64;
/// Longest task template name (`tasker_named_tasks.name VARCHAR(64)`).
pub const MAX_TASK_NAME_LENGTH: usize = 64;
/// Longest template version (`tasker_named_tasks.version VARCHAR(16)`).
pub const MAX_VERSION_LENGTH: usize = 16;
/// Longest description (`tasker_named_tasks.description VARCHAR(255)`).
pub const MAX_DESCRIPTION_LENGTH: usize = 255;
/// Longest step name (`tasker_named_steps.name VARCHAR(128)`).
pub const MAX_STEP_NAME_LENGTH: usize = 128;
/// Longest dependent system name (`tasker_dependent_systems.name VARCHAR(64)`).
pub const MAX_DEPENDENT_SYSTEM_LENGTH: usize = 64;

/// A workflow definition: the steps of a task and their dependencies.
///
/// `namespace`, `name` and `version` identify the template in the catalog
/// (`tasker_named_tasks`); see [`create_task`](super::create_task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTemplate {
    /// The namespace (`tasker_task_namespaces.name`) the template belongs to, at most 64 characters.
    pub namespace: String,
    /// The template's name within its namespace, at most 64 characters.
    pub name: String,
    /// The template version (a semantic version string), at most 16 characters.
    pub version: String,
    /// What the template is for, at most 255 characters; `None` for none.
    #[serde(default)]
    pub description: Option<String>,
    /// In the order the steps are created (and errors are reported).
    pub steps: Vec<StepTemplate>,
}

/// One step of a [`TaskTemplate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTemplate {
    /// Unique within the template.
    pub name: String,
    /// The external system the step talks to; with `name` it identifies the
    /// step template in the catalog (`tasker_named_steps`).
    #[serde(default = "default_dependent_system")]
    pub dependent_system: String,
    /// False: the step gets its first attempt but no retry.
    #[serde(default = "default_retryable")]
    pub retryable: bool,
    /// Attempts allowed in all, the first included: at least 1 (a step with
    /// limit 1 runs once and is never retried).
    #[serde(default = "default_retry_limit")]
    pub retry_limit: i32,
    /// Whether a task may bypass the step.
    #[serde(default)]
    pub skippable: bool,
    /// Names of the steps that must finish before this one (its parents).
    #[serde(default)]
    pub depends_on: Vec<String>,
}

fn default_dependent_system() -> String {
    "default".to_owned()
}

fn default_retryable() -> bool {
    true
}

fn default_retry_limit() -> i32 {
    3
}

impl TaskTemplate {
    /// A template without description and steps.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        TaskTemplate {
            namespace: namespace.into(),
            name: name.into(),
            version: version.into(),
            description: None,
            steps: Vec::new(),
        }
    }

    /// Sets the description stored with the template in the catalog.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Appends a step.
    pub fn step(mut self, step: StepTemplate) -> Self {
        self.steps.push(step);
        self
    }

    /// `namespace/name@version`, how errors name the template.
    pub fn key(&self) -> String {
        format!("{}/{}@{}", self.namespace, self.name, self.version)
    }

    /// The step called `name`.
    pub fn find_step(&self, name: &str) -> Option<&StepTemplate> {
        self.steps.iter().find(|step| step.name == name)
    }

    /// Checks everything the database would reject half-way, and more: names
    /// present, without NUL characters and short enough for their columns, at
    /// least one step, unique step names, retry limits of at least 1,
    /// dependencies on known steps, each listed once, and no cycle.
    ///
    /// The first problem found is returned, checking the template's fields,
    /// then each step in order, then the dependency graph, so the same
    /// template always gives the same error.
    pub fn validate(&self) -> Result<(), TemplateError> {
        check_name(
            TemplateField::Namespace,
            &self.namespace,
            MAX_NAMESPACE_LENGTH,
        )?;
        check_name(TemplateField::Name, &self.name, MAX_TASK_NAME_LENGTH)?;
        check_name(TemplateField::Version, &self.version, MAX_VERSION_LENGTH)?;
        if let Some(description) = &self.description {
            check_length(
                TemplateField::Description,
                description,
                MAX_DESCRIPTION_LENGTH,
            )?;
        }
        if self.steps.is_empty() {
            return Err(TemplateError::Empty {
                template: self.key(),
            });
        }

        let mut positions: HashMap<&str, usize> = HashMap::with_capacity(self.steps.len());
        for (position, step) in self.steps.iter().enumerate() {
            if step.name.trim().is_empty() {
                return Err(TemplateError::BlankStepName { position });
            }
            check_length(TemplateField::StepName, &step.name, MAX_STEP_NAME_LENGTH)?;
            if step.dependent_system.trim().is_empty() {
                return Err(TemplateError::BlankDependentSystem {
                    step: step.name.clone(),
                });
            }
            check_length(
                TemplateField::DependentSystem,
                &step.dependent_system,
                MAX_DEPENDENT_SYSTEM_LENGTH,
            )?;
            if step.retry_limit < 1 {
                return Err(TemplateError::InvalidRetryLimit {
                    step: step.name.clone(),
                    retry_limit: step.retry_limit,
                });
            }
            if positions.insert(&step.name, position).is_some() {
                return Err(TemplateError::DuplicateStep {
                    template: self.key(),
                    step: step.name.clone(),
                });
            }
        }

        let mut parents: Vec<Vec<usize>> = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let mut seen = HashSet::with_capacity(step.depends_on.len());
            let mut step_parents = Vec::with_capacity(step.depends_on.len());
            for dependency in &step.depends_on {
                let Some(&parent) = positions.get(dependency.as_str()) else {
                    return Err(TemplateError::UnknownDependency {
                        step: step.name.clone(),
                        dependency: dependency.clone(),
                    });
                };
                // Rejected rather than merged: a name listed twice is more
                // likely a typo for another step than an intent.
                if !seen.insert(parent) {
                    return Err(TemplateError::DuplicateDependency {
                        step: step.name.clone(),
                        dependency: dependency.clone(),
                    });
                }
                step_parents.push(parent);
            }
            parents.push(step_parents);
        }

        match find_cycle(&parents) {
            Some(cycle) => Err(TemplateError::Cycle {
                steps: cycle
                    .into_iter()
                    .map(|position| self.steps[position].name.clone())
                    .collect(),
            }),
            None => Ok(()),
        }
    }
}

impl StepTemplate {
    /// A step on the `default` dependent system, retryable, with 3 attempts,
    /// not skippable and without dependencies.
    pub fn new(name: impl Into<String>) -> Self {
        StepTemplate {
            name: name.into(),
            dependent_system: default_dependent_system(),
            retryable: default_retryable(),
            retry_limit: default_retry_limit(),
            skippable: false,
            depends_on: Vec::new(),
        }
    }

    /// Sets the external system the step talks to.
    pub fn dependent_system(mut self, dependent_system: impl Into<String>) -> Self {
        self.dependent_system = dependent_system.into();
        self
    }

    /// Sets whether a failed attempt may be retried.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Sets the number of attempts allowed in all, the first included (at
    /// least 1; [`TaskTemplate::validate`] refuses less).
    pub fn retry_limit(mut self, retry_limit: i32) -> Self {
        self.retry_limit = retry_limit;
        self
    }

    /// Sets whether a task may bypass the step.
    pub fn skippable(mut self, skippable: bool) -> Self {
        self.skippable = skippable;
        self
    }

    /// Adds parents: steps that must finish before this one.
    pub fn depends_on(mut self, steps: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.depends_on.extend(steps.into_iter().map(Into::into));
        self
    }
}

fn check_name(field: TemplateField, value: &str, max_length: usize) -> Result<(), TemplateError> {
    if value.trim().is_empty() {
        return Err(TemplateError::Blank { field });
    }
    check_length(field, value, max_length)
}

/// A text field of the template that fits its column ([`fit`]).
fn check_length(field: TemplateField, value: &str, max_length: usize) -> Result<(), TemplateError> {
    fit(value, max_length).map_err(|unfit| match unfit {
        Unfit::Unstorable(problem) => TemplateError::Unstorable { field, problem },
        Unfit::TooLong => TemplateError::TooLong {
            field,
            value: value.to_owned(),
            max_length,
        },
    })
}

/// Why text does not fit its column ([`fit`]).
pub(super) enum Unfit {
    /// It holds a NUL character: what [`arguments::text_problem`] says.
    Unstorable(String),
    /// It has more characters than the column.
    TooLong,
}

/// Whether text fits its column: no NUL (PostgreSQL text cannot hold one),
/// at most `max_length` characters (`VARCHAR(n)` counts characters, not
/// bytes). Templates and requests each wrap the answer in their own error.
pub(super) fn fit(value: &str, max_length: usize) -> Result<(), Unfit> {
    if let Some(problem) = arguments::text_problem(value) {
        return Err(Unfit::Unstorable(problem));
    }
    if value.chars().count() > max_length {
        return Err(Unfit::TooLong);
    }
    Ok(())
}

/// One cycle of the graph where `parents[i]` are the steps step `i` depends
/// on, as positions from a step to its parent and back to the first, or
/// `None`. An iterative depth-first search in step and dependency order, so
/// the same template always reports the same cycle and deep chains cannot
/// overflow the stack.
fn find_cycle(parents: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Unvisited,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::Unvisited; parents.len()];
    // The current path: each step with the index of the next parent to visit.
    let mut path: Vec<(usize, usize)> = Vec::new();
    for root in 0..parents.len() {
        if marks[root] != Mark::Unvisited {
            continue;
        }
        marks[root] = Mark::OnPath;
        path.push((root, 0));
        while let Some((step, next)) = path.last_mut() {
            let step = *step;
            let Some(&parent) = parents[step].get(*next) else {
                marks[step] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match marks[parent] {
                Mark::Unvisited => {
                    marks[parent] = Mark::OnPath;
                    path.push((parent, 0));
                }
                Mark::OnPath => {
                    let start = path
                        .iter()
                        .position(|&(on_path, _)| on_path == parent)
                        .expect("a step marked on the path is on the path");
                    let mut cycle: Vec<usize> = path[start..].iter().map(|&(s, _)| s).collect();
                    cycle.push(parent);
                    return Some(cycle);
                }
                Mark::Done => {}
            }
        }
    }
    None
}

/// A field of a template that has a length limit or must not be blank (a
/// request's own fields are [`RequestField`](super::RequestField)s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemplateField {
    /// `tasker_task_namespaces.name`.
    Namespace,
    /// `tasker_named_tasks.name`.
    Name,
    /// `tasker_named_tasks.version`.
    Version,
    /// `tasker_named_tasks.description`.
    Description,
    /// `tasker_named_steps.name`.
    StepName,
    /// `tasker_dependent_systems.name`.
    DependentSystem,
}

impl fmt::Display for TemplateField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TemplateField::Namespace => "namespace",
            TemplateField::Name => "task name",
            TemplateField::Version => "version",
            TemplateField::Description => "description",
            TemplateField::StepName => "step name",
            TemplateField::DependentSystem => "dependent system",
        })
    }
}

/// Why a task template cannot be built ([`TaskTemplate::validate`]; a
/// request for it is checked by [`TaskRequest::validate`](super::TaskRequest::validate)).
/// Nothing has been written when it is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A template without steps.
    #[error("template {template} has no steps")]
    Empty {
        /// `namespace/name@version` of the template.
        template: String,
    },
    /// An empty (or whitespace-only) namespace, task name or version.
    #[error("{field} is blank")]
    Blank {
        /// The blank field.
        field: TemplateField,
    },
    /// A step with an empty (or whitespace-only) name.
    #[error("the name of step #{position} is blank")]
    BlankStepName {
        /// 0-based position of the step in the template.
        position: usize,
    },
    /// A step with an empty (or whitespace-only) dependent system.
    #[error("step {step} has a blank dependent system")]
    BlankDependentSystem {
        /// The step's name.
        step: String,
    },
    /// A value longer than its column.
    #[error(
        "{field} {value:?} has {} characters, at most {max_length} fit",
        value.chars().count()
    )]
    TooLong {
        /// The field that is too long.
        field: TemplateField,
        /// The value given.
        value: String,
        /// The most characters its column holds.
        max_length: usize,
    },
    /// Two steps with the same name.
    #[error("template {template} has two steps named {step}")]
    DuplicateStep {
        /// `namespace/name@version` of the template.
        template: String,
        /// The name the steps share.
        step: String,
    },
    /// A dependency on a step the template does not have.
    #[error("step {step} depends on {dependency}, which is not a step of the template")]
    UnknownDependency {
        /// The step that lists the dependency.
        step: String,
        /// The name it lists, which no step of the template has.
        dependency: String,
    },
    /// The same dependency listed twice by one step.
    #[error("step {step} lists its dependency {dependency} twice")]
    DuplicateDependency {
        /// The step that lists the dependency.
        step: String,
        /// The dependency listed twice.
        dependency: String,
    },
    /// Steps that depend on each other in a circle (a self-dependency too).
    #[error("steps depend on each other in a cycle: {}", steps.join(" → "))]
    Cycle {
        /// Each step depends on the next; the last repeats the first
        /// (`[a, b, a]`: a depends on b, b depends on a).
        steps: Vec<String>,
    },
    /// A retry limit below 1: it counts every attempt, the first included,
    /// so a step with limit 0 could never run and its task never finish.
    #[error(
        "step {step} has retry limit {retry_limit}: it counts every attempt, the first included, so it must be at least 1"
    )]
    InvalidRetryLimit {
        /// The step's name.
        step: String,
        /// The retry limit given.
        retry_limit: i32,
    },
    /// Text PostgreSQL cannot store: it holds a NUL character.
    #[error("{field} {problem}")]
    Unstorable {
        /// The field holding the text.
        field: TemplateField,
        /// What is wrong.
        problem: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(steps: impl IntoIterator<Item = StepTemplate>) -> TaskTemplate {
        steps
            .into_iter()
            .fold(TaskTemplate::new("ns", "flow", "1.0.0"), TaskTemplate::step)
    }

    #[test]
    fn a_diamond_is_valid() {
        let diamond = template([
            StepTemplate::new("a"),
            StepTemplate::new("b").depends_on(["a"]),
            StepTemplate::new("c").depends_on(["a"]),
            StepTemplate::new("d").depends_on(["b", "c"]),
        ]);
        assert_eq!(diamond.validate(), Ok(()));
    }

    #[test]
    fn a_cycle_is_reported_along_its_dependencies() {
        let cyclic = template([
            StepTemplate::new("root"),
            StepTemplate::new("a").depends_on(["root", "c"]),
            StepTemplate::new("b").depends_on(["a"]),
            StepTemplate::new("c").depends_on(["b"]),
        ]);
        assert_eq!(
            cyclic.validate(),
            Err(TemplateError::Cycle {
                steps: vec!["a".into(), "c".into(), "b".into(), "a".into()]
            })
        );
    }

    #[test]
    fn a_self_dependency_is_a_cycle_of_one() {
        let selfish = template([StepTemplate::new("a").depends_on(["a"])]);
        assert_eq!(
            selfish.validate(),
            Err(TemplateError::Cycle {
                steps: vec!["a".into(), "a".into()]
            })
        );
    }

    #[test]
    fn a_dependency_listed_twice_is_rejected() {
        let twice = template([
            StepTemplate::new("a"),
            StepTemplate::new("b").depends_on(["a", "a"]),
        ]);
        assert_eq!(
            twice.validate(),
            Err(TemplateError::DuplicateDependency {
                step: "b".into(),
                dependency: "a".into()
            })
        );
    }

    #[test]
    fn blank_names_are_rejected() {
        let blank_version = TaskTemplate::new("ns", "flow", " ").step(StepTemplate::new("a"));
        assert_eq!(
            blank_version.validate(),
            Err(TemplateError::Blank {
                field: TemplateField::Version
            })
        );
        let blank_step = template([StepTemplate::new("a"), StepTemplate::new("")]);
        assert_eq!(
            blank_step.validate(),
            Err(TemplateError::BlankStepName { position: 1 })
        );
        let blank_system = template([StepTemplate::new("a").dependent_system("")]);
        assert_eq!(
            blank_system.validate(),
            Err(TemplateError::BlankDependentSystem { step: "a".into() })
        );
    }

    #[test]
    fn lengths_are_counted_in_characters() {
        let fits = "é".repeat(MAX_VERSION_LENGTH);
        let valid = TaskTemplate::new("ns", "flow", fits.as_str()).step(StepTemplate::new("a"));
        assert_eq!(valid.validate(), Ok(()));
        let too_long = format!("{fits}é");
        let invalid =
            TaskTemplate::new("ns", "flow", too_long.as_str()).step(StepTemplate::new("a"));
        assert_eq!(
            invalid.validate(),
            Err(TemplateError::TooLong {
                field: TemplateField::Version,
                value: too_long,
                max_length: MAX_VERSION_LENGTH
            })
        );
    }

    #[test]
    fn a_long_chain_is_checked_without_recursion() {
        let chain = template((0..100_000).map(|index| {
            let step = StepTemplate::new(format!("s{index}"));
            if index == 0 {
                step
            } else {
                step.depends_on([format!("s{}", index - 1)])
            }
        }));
        assert_eq!(chain.validate(), Ok(()));
    }

    #[test]
    fn step_defaults_apply_when_deserializing() {
        let parsed: TaskTemplate = serde_json::from_value(serde_json::json!({
            "namespace": "ns", "name": "flow", "version": "1.0.0",
            "steps": [{"name": "a"}, {"name": "b", "depends_on": ["a"]}]
        }))
        .unwrap();
        assert_eq!(
            parsed,
            template([
                StepTemplate::new("a"),
                StepTemplate::new("b").depends_on(["a"])
            ])
        );
    }
}

//! What is stored: every row the write path touches, loaded after each operation.

use super::*;

/// A transition row of either history.
pub(super) trait Move: Clone + PartialEq + Debug {
    type State: Copy + Eq + Debug + Default + fmt::Display;
    fn id(&self) -> i64;
    fn to(&self) -> Self::State;
    fn from(&self) -> Option<Self::State>;
    fn sort_key(&self) -> i32;
    fn most_recent(&self) -> bool;
    fn created_at(&self) -> NaiveDateTime;
    fn metadata(&self) -> Option<&Value>;
}

impl Move for WorkflowStepTransition {
    type State = StepState;
    fn id(&self) -> i64 {
        self.id
    }
    fn to(&self) -> StepState {
        self.to_state
    }
    fn from(&self) -> Option<StepState> {
        self.from_state
    }
    fn sort_key(&self) -> i32 {
        self.sort_key
    }
    fn most_recent(&self) -> bool {
        self.most_recent
    }
    fn created_at(&self) -> NaiveDateTime {
        self.created_at
    }
    fn metadata(&self) -> Option<&Value> {
        self.metadata.as_ref()
    }
}

impl Move for TaskTransition {
    type State = TaskState;
    fn id(&self) -> i64 {
        self.id
    }
    fn to(&self) -> TaskState {
        self.to_state
    }
    fn from(&self) -> Option<TaskState> {
        self.from_state
    }
    fn sort_key(&self) -> i32 {
        self.sort_key
    }
    fn most_recent(&self) -> bool {
        self.most_recent
    }
    fn created_at(&self) -> NaiveDateTime {
        self.created_at
    }
    fn metadata(&self) -> Option<&Value> {
        self.metadata.as_ref()
    }
}

/// Whether two versions of a transition agree on everything no later write
/// may change (`most_recent` and `updated_at` change when the next transition
/// is appended).
pub(super) fn same_fixed_part<M: Move>(old: &M, new: &M) -> bool {
    old.id() == new.id()
        && old.to() == new.to()
        && old.from() == new.from()
        && old.sort_key() == new.sort_key()
        && old.metadata() == new.metadata()
        && old.created_at() == new.created_at()
}

/// The current state: the most recent transition's, else pending.
pub(super) fn current<M: Move>(history: &[M]) -> M::State {
    history
        .iter()
        .find(|transition| transition.most_recent())
        .map_or_else(M::State::default, Move::to)
}

/// Every row of the tables the write path touches, by entity.
pub(super) struct View {
    pub(super) raw: support::Snapshot,
    pub(super) steps: BTreeMap<i64, WorkflowStep>,
    /// Ordered by `sort_key`.
    pub(super) step_history: BTreeMap<i64, Vec<WorkflowStepTransition>>,
    pub(super) tasks: BTreeMap<i64, Task>,
    pub(super) task_history: BTreeMap<i64, Vec<TaskTransition>>,
}

impl View {
    pub(super) fn load(conn: &mut PgConnection) -> View {
        let raw = support::snapshot(conn);
        let steps: BTreeMap<i64, WorkflowStep> = raw
            .steps
            .iter()
            .map(|step| (step.workflow_step_id, step.clone()))
            .collect();
        let mut step_history: BTreeMap<i64, Vec<WorkflowStepTransition>> =
            steps.keys().map(|&id| (id, Vec::new())).collect();
        for transition in &raw.step_transitions {
            step_history
                .entry(transition.workflow_step_id)
                .or_default()
                .push(transition.clone());
        }
        let tasks: BTreeMap<i64, Task> = raw
            .tasks
            .iter()
            .map(|task| (task.task_id, task.clone()))
            .collect();
        let mut task_history: BTreeMap<i64, Vec<TaskTransition>> =
            tasks.keys().map(|&id| (id, Vec::new())).collect();
        for transition in &raw.task_transitions {
            task_history
                .entry(transition.task_id)
                .or_default()
                .push(transition.clone());
        }
        for history in step_history.values_mut() {
            history.sort_by_key(|transition| transition.sort_key);
        }
        for history in task_history.values_mut() {
            history.sort_by_key(|transition| transition.sort_key);
        }
        View {
            raw,
            steps,
            step_history,
            tasks,
            task_history,
        }
    }

    pub(super) fn step_state(&self, step_id: i64) -> StepState {
        current(&self.step_history[&step_id])
    }

    pub(super) fn task_state(&self, task_id: i64) -> TaskState {
        current(&self.task_history[&task_id])
    }

    pub(super) fn latest_step_transition(&self, step_id: i64) -> Option<&WorkflowStepTransition> {
        self.step_history[&step_id]
            .iter()
            .find(|transition| transition.most_recent)
    }
}

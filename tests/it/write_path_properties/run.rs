//! One case being run: its tasks, its claims and the invariants checked after each operation.

use super::*;

/// One case being run: the ids it created and what it did so far.
pub(super) struct Run<'c> {
    pub(super) conn: &'c mut PgConnection,
    pub(super) task_ids: Vec<i64>,
    /// Every step, task by task, in template order.
    pub(super) step_ids: Vec<i64>,
    /// `t0.s3 #1234` by step id, `t0 #56` by task id.
    pub(super) step_labels: BTreeMap<i64, String>,
    pub(super) task_labels: BTreeMap<i64, String>,
    /// The step template name (`s3`) by step id.
    pub(super) names: BTreeMap<i64, String>,
    pub(super) edges: Vec<(i64, i64)>,
    /// Every claim handed out so far, oldest first.
    pub(super) claims: Vec<Claim>,
    /// Every row as the last operation left them (the connection is the only
    /// writer, so also as the next one finds them).
    pub(super) current: Rc<View>,
    /// What the operation being run loaded after its call.
    pub(super) latest: Option<Rc<View>>,
    pub(super) workflows: String,
    pub(super) trace: Vec<String>,
}

impl<'c> Run<'c> {
    /// Empties the tables and creates the case's tasks.
    pub(super) fn create(
        conn: &'c mut PgConnection,
        case: &Case,
        case_number: u64,
    ) -> Result<Run<'c>, TestCaseError> {
        // Claims from any task must only see this case's tasks.
        diesel::sql_query("TRUNCATE tasker_tasks CASCADE")
            .execute(conn)
            .expect("truncate tasks");
        let nothing = Rc::new(View::load(conn));
        let mut run = Run {
            conn,
            task_ids: Vec::new(),
            step_ids: Vec::new(),
            step_labels: BTreeMap::new(),
            task_labels: BTreeMap::new(),
            names: BTreeMap::new(),
            edges: Vec::new(),
            claims: Vec::new(),
            current: Rc::clone(&nothing),
            latest: None,
            workflows: String::new(),
            trace: Vec::new(),
        };
        let mut expected_edges = Vec::new();
        for (t, specs) in case.tasks.iter().enumerate() {
            let name = |s: usize| format!("s{s}");
            let template = specs.iter().enumerate().fold(
                TaskTemplate::new("write_path", format!("workflow_{t}"), "1.0.0"),
                |template, (s, spec)| {
                    template.step(
                        StepTemplate::new(name(s))
                            .retryable(spec.retryable)
                            .retry_limit(spec.retry_limit)
                            .skippable(spec.skippable)
                            .depends_on(spec.parents.iter().map(|&parent| name(parent))),
                    )
                },
            );
            let bypassed: Vec<String> = specs
                .iter()
                .enumerate()
                .filter(|(_, spec)| spec.bypassed)
                .map(|(s, _)| name(s))
                .collect();
            let request = TaskRequest::new(&template)
                .context(json!({"case": case_number, "task": t}))
                .bypass_steps(bypassed);
            let created = create_task(run.conn, &request)
                .map_err(|error| fail(format!("create_task: {error}")))?;
            prop_assert!(created.created, "task {} was not created", t);
            let task_id = created.task.task_id;
            run.task_ids.push(task_id);
            run.task_labels.insert(task_id, format!("t{t} #{task_id}"));
            let mut description = format!("  t{t} #{task_id}:");
            let mut ids = Vec::new();
            for (s, spec) in specs.iter().enumerate() {
                let step = created
                    .step(&name(s))
                    .ok_or_else(|| fail(format!("t{t}: no step {}", name(s))))?;
                let id = step.workflow_step_id;
                prop_assert_eq!(
                    (step.retry_limit, step.retryable, step.skippable),
                    (Some(spec.retry_limit), spec.retryable, spec.skippable),
                    "t{}.s{}: flags as in the template",
                    t,
                    s
                );
                ids.push(id);
                run.step_ids.push(id);
                run.step_labels.insert(id, format!("t{t}.s{s} #{id}"));
                run.names.insert(id, name(s));
                let parents: Vec<String> = spec.parents.iter().map(|&p| name(p)).collect();
                description.push_str(&format!(
                    " s{s}#{id}(limit {}{}{}{}{})",
                    spec.retry_limit,
                    if spec.retryable {
                        ""
                    } else {
                        ", not retryable"
                    },
                    if spec.skippable { ", skippable" } else { "" },
                    if spec.bypassed { ", bypassed" } else { "" },
                    if parents.is_empty() {
                        String::new()
                    } else {
                        format!(", after {}", parents.join("+"))
                    },
                ));
                for &parent in &spec.parents {
                    expected_edges.push((ids[parent], id));
                }
            }
            run.workflows.push_str(&description);
            run.workflows.push('\n');
        }
        run.edges = tasker_workflow_step_edges::table
            .select((
                tasker_workflow_step_edges::from_step_id,
                tasker_workflow_step_edges::to_step_id,
            ))
            .load(run.conn)
            .expect("edges");
        run.edges.sort_unstable();
        expected_edges.sort_unstable();
        prop_assert_eq!(&run.edges, &expected_edges, "edges as in the templates");

        // Bypassed steps start resolved_manually, everything else has no history.
        let view = Rc::new(View::load(run.conn));
        for t in 0..case.tasks.len() {
            prop_assert!(
                view.task_history[&run.task_ids[t]].is_empty(),
                "a new task has no transitions"
            );
        }
        let specs: Vec<&StepSpec> = case.tasks.iter().flatten().collect();
        for (&id, spec) in run.step_ids.iter().zip(specs) {
            let history = &view.step_history[&id];
            if spec.bypassed {
                prop_assert_eq!(history.len(), 1, "{}: bypassed", run.step_label(id));
                prop_assert_eq!(history[0].to_state, StepState::ResolvedManually);
                prop_assert_eq!(history[0].metadata.clone(), Some(json!({"bypassed": true})));
            } else {
                prop_assert!(
                    history.is_empty(),
                    "{}: a new step has no transitions",
                    run.step_label(id)
                );
            }
        }
        run.check_state(&view)?;
        run.current = view;
        Ok(run)
    }

    /// Loads every row after a call, for the checks of the call and then of
    /// the invariants.
    pub(super) fn load_after(&mut self) -> Rc<View> {
        let view = Rc::new(View::load(self.conn));
        self.latest = Some(Rc::clone(&view));
        view
    }

    pub(super) fn step_label(&self, step_id: i64) -> String {
        self.step_labels
            .get(&step_id)
            .cloned()
            .unwrap_or_else(|| format!("#{step_id}"))
    }

    pub(super) fn task_label(&self, task_id: i64) -> String {
        self.task_labels
            .get(&task_id)
            .cloned()
            .unwrap_or_else(|| format!("#{task_id}"))
    }

    pub(super) fn step_list(&self, ids: &[i64]) -> String {
        let labels: Vec<String> = ids.iter().map(|&id| self.step_label(id)).collect();
        format!("[{}]", labels.join(", "))
    }

    pub(super) fn note(&mut self, line: String) {
        self.trace.push(line);
    }

    /// Appends to the current operation's line of the trace.
    pub(super) fn result(&mut self, text: String) {
        if let Some(line) = self.trace.last_mut() {
            line.push_str(" -> ");
            line.push_str(&text);
        }
    }

    /// The failure with the workflows and the operations that led to it.
    pub(super) fn explain(&self, error: TestCaseError) -> TestCaseError {
        match error {
            TestCaseError::Fail(reason) => fail(format!(
                "{reason}\nworkflows:\n{}operations:\n  {}",
                self.workflows,
                self.trace.join("\n  ")
            )),
            other => other,
        }
    }

    /// What the rules see of `view` at `now`.
    pub(super) fn world(&self, view: &View, now: NaiveDateTime) -> World {
        World {
            tasks: view
                .tasks
                .values()
                .map(|task| TaskInput {
                    task_id: task.task_id,
                    named_task_id: task.named_task_id,
                    current_state: view.task_history[&task.task_id]
                        .iter()
                        .find(|transition| transition.most_recent)
                        .map(|transition| transition.to_state),
                })
                .collect(),
            steps: view
                .steps
                .values()
                .map(|step| StepInput {
                    workflow_step_id: step.workflow_step_id,
                    task_id: step.task_id,
                    named_step_id: step.named_step_id,
                    name: self.names[&step.workflow_step_id].clone(),
                    retryable: step.retryable,
                    retry_limit: step.retry_limit,
                    attempts: step.attempts,
                    processed: step.processed,
                    in_process: step.in_process,
                    backoff_request_seconds: step.backoff_request_seconds,
                    last_attempted_at: step.last_attempted_at,
                    current_transition: view
                        .latest_step_transition(step.workflow_step_id)
                        .map(|transition| (transition.to_state, transition.created_at)),
                })
                .collect(),
            edges: self.edges.clone(),
            now,
        }
    }

    /// Readiness at `now`, one line per step, for failure messages.
    pub(super) fn describe_readiness(&self, view: &View, now: NaiveDateTime) -> String {
        oracle::readiness(&self.world(view, now))
            .iter()
            .map(|row| {
                format!(
                    "    {} ({}, task {}): {} ready={} deps={} eligible={} attempts={}/{} next_retry_at={:?}\n",
                    self.step_label(row.workflow_step_id),
                    view.task_state(row.task_id),
                    self.task_label(row.task_id),
                    row.current_state,
                    row.ready_for_execution,
                    row.dependencies_satisfied,
                    row.retry_eligible,
                    row.attempts,
                    row.retry_limit,
                    row.next_retry_at.map(|at| (at - now).num_milliseconds() as f64 / 1000.0),
                )
            })
            .collect()
    }

    // Invariants -------------------------------------------------------------------

    /// The invariants of every step and task, and the readiness and context
    /// functions against the reference.
    pub(super) fn check_state(&mut self, view: &View) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            view.step_history.len(),
            view.steps.len(),
            "transitions of unknown steps"
        );
        prop_assert_eq!(
            view.task_history.len(),
            view.tasks.len(),
            "transitions of unknown tasks"
        );
        for (&id, step) in &view.steps {
            let label = self.step_label(id);
            let history = &view.step_history[&id];
            check_walk(&label, history, step_move_allowed)?;
            let state = view.step_state(id);
            prop_assert_eq!(
                step.in_process,
                state == StepState::InProgress,
                "{}: in_process with state {}",
                label,
                state
            );
            let finished = matches!(
                state,
                StepState::Complete | StepState::Cancelled | StepState::ResolvedManually
            );
            prop_assert_eq!(
                step.processed,
                finished,
                "{}: processed with state {}",
                label,
                state
            );
            prop_assert_eq!(
                step.processed_at,
                if finished {
                    history.last().map(|t| t.created_at)
                } else {
                    None
                },
                "{}: processed_at with state {}",
                label,
                state
            );
            // Every step in progress was claimed here, so it has a lease.
            prop_assert_eq!(
                step.claimed_until.is_some(),
                state == StepState::InProgress,
                "{}: claimed_until {:?} with state {}",
                label,
                step.claimed_until,
                state
            );
            let starts: Vec<&WorkflowStepTransition> = history
                .iter()
                .filter(|transition| transition.to_state == StepState::InProgress)
                .collect();
            prop_assert_eq!(
                step.attempts.unwrap_or(0),
                starts.len() as i32,
                "{}: attempts vs in_progress transitions",
                label
            );
            prop_assert_eq!(
                step.last_attempted_at,
                starts.last().map(|transition| transition.created_at),
                "{}: last_attempted_at is the last start",
                label
            );
        }
        for (&id, task) in &view.tasks {
            let label = self.task_label(id);
            check_walk(&label, &view.task_history[&id], task_move_allowed)?;
            let state = view.task_state(id);
            prop_assert_eq!(
                task.complete,
                state == TaskState::Complete,
                "{}: complete flag with state {}",
                label,
                state
            );
        }

        // The maintained readiness (step columns and task counts, kept by
        // triggers) agrees with its recomputation from the history.
        support::check_maintained_readiness(self.conn, None).map_err(fail)?;

        // The SQL readiness and contexts agree with the reference, at one now().
        let task_ids = self.task_ids.clone();
        let (now, rows, contexts) = self
            .conn
            .transaction::<_, tasker_diesel::Error, _>(|conn| {
                let now = support::utc_now(conn);
                let rows = StepReadinessStatus::for_tasks(&task_ids).load(conn)?;
                let contexts = TaskExecutionContext::find_many(conn, &task_ids)?;
                Ok((now, rows, contexts))
            })
            .expect("readiness and contexts");
        let world = self.world(view, now);
        prop_assert_eq!(rows, oracle::readiness(&world), "readiness at {}", now);
        prop_assert_eq!(contexts, oracle::contexts(&world), "contexts at {}", now);
        Ok(())
    }

    /// No row of a step or task outside `steps` and `tasks` changed, except
    /// for a child of a step in `steps`: its `completed_parents` (and so
    /// `runnable`) is kept by triggers from its parents' states, which
    /// stamps its `updated_at` (`check_state` checks the maintained columns
    /// against the history).
    pub(super) fn unchanged_except(
        &self,
        what: &str,
        before: &View,
        after: &View,
        steps: &BTreeSet<i64>,
        tasks: &BTreeSet<i64>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            before.steps.keys().collect::<Vec<_>>(),
            after.steps.keys().collect::<Vec<_>>(),
            "{}: the set of steps changed",
            what
        );
        let children: BTreeSet<i64> = self
            .edges
            .iter()
            .filter(|(parent, _)| steps.contains(parent))
            .map(|&(_, child)| child)
            .collect();
        for (id, row) in &before.steps {
            if steps.contains(id) {
                continue;
            }
            let mut expected = row.clone();
            if children.contains(id) {
                let now = &after.steps[id];
                expected.completed_parents = now.completed_parents;
                expected.runnable = now.runnable;
                expected.updated_at = now.updated_at;
            }
            prop_assert_eq!(
                &expected,
                &after.steps[id],
                "{}: {} changed",
                what,
                self.step_label(*id)
            );
            prop_assert_eq!(
                &before.step_history[id],
                &after.step_history[id],
                "{}: history of {} changed",
                what,
                self.step_label(*id)
            );
        }
        for (id, row) in &before.tasks {
            if tasks.contains(id) {
                continue;
            }
            prop_assert_eq!(
                row,
                &after.tasks[id],
                "{}: {} changed",
                what,
                self.task_label(*id)
            );
            prop_assert_eq!(
                &before.task_history[id],
                &after.task_history[id],
                "{}: history of {} changed",
                what,
                self.task_label(*id)
            );
        }
        Ok(())
    }

    /// A refusal: the one expected, and nothing written.
    pub(super) fn check_refused(
        &self,
        what: &str,
        got: &Refusal,
        expected: &Refusal,
        before: &View,
        after: &View,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(got, expected, "{}: refusal", what);
        self.unchanged_except(what, before, after, &BTreeSet::new(), &BTreeSet::new())?;
        prop_assert!(
            before.raw == after.raw,
            "{}: refused, yet rows changed",
            what
        );
        Ok(())
    }

    // Operations -------------------------------------------------------------------

    pub(super) fn apply(&mut self, number: usize, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Claim {
                tasks,
                max_steps,
                lease,
            } => self.claim(number, tasks.as_deref(), *max_steps, *lease),
            Op::Complete(pick) | Op::Fail(pick, _) | Op::Extend(pick, _) => {
                self.report(number, *pick, op)
            }
            Op::ExpireLease(pick) => self.expire_lease(number, *pick),
            Op::ReleaseExpired(max_steps) => self.release(number, *max_steps),
            Op::PassTime(by) => self.pass_time(number, *by),
            Op::Resolve(step) => self.resolve(number, *step),
            Op::Cancel(task) => self.cancel(number, *task),
            Op::Finalize(task) => self.finalize(number, *task),
            Op::Resume { task, expect_error } => self.resume(number, *task, *expect_error),
        }
    }

    pub(super) fn task_at(&self, pick: usize) -> i64 {
        self.task_ids[pick % self.task_ids.len()]
    }

    pub(super) fn step_at(&self, pick: usize) -> i64 {
        self.step_ids[pick % self.step_ids.len()]
    }

    pub(super) fn claim_at(&self, view: &View, pick: ClaimPick) -> Option<Claim> {
        let current: Vec<Claim> = self
            .claims
            .iter()
            .copied()
            .filter(|claim| {
                view.latest_step_transition(claim.workflow_step_id)
                    .is_some_and(|latest| latest.id == claim.claim_id)
            })
            .collect();
        match pick {
            ClaimPick::Current(index) if !current.is_empty() => {
                Some(current[index % current.len()])
            }
            ClaimPick::Current(index) | ClaimPick::Any(index) if !self.claims.is_empty() => {
                Some(self.claims[index % self.claims.len()])
            }
            _ => None,
        }
    }

    pub(super) fn describe_claim(&self, claim: Claim) -> String {
        let position = self.claims.iter().position(|c| *c == claim).unwrap_or(0);
        format!(
            "claim {} of {} (transition {})",
            position + 1,
            self.step_label(claim.workflow_step_id),
            claim.claim_id
        )
    }
}

//! Each operation of a case: the call, and what it must have done.

use super::*;

impl Run<'_> {
    pub(super) fn claim(
        &mut self,
        number: usize,
        tasks: Option<&[usize]>,
        max_steps: u32,
        lease: u32,
    ) -> Result<(), TestCaseError> {
        let requested: Option<Vec<i64>> =
            tasks.map(|picks| picks.iter().map(|&pick| self.task_at(pick)).collect());
        let request = match &requested {
            Some(ids) => ClaimRequest::for_tasks(ids, max_steps, seconds(lease)),
            None => ClaimRequest::any_task(max_steps, seconds(lease)),
        };
        let tasks_text = match &requested {
            Some(ids) => {
                let labels: Vec<String> = ids.iter().map(|&id| self.task_label(id)).collect();
                format!("for_tasks [{}]", labels.join(", "))
            }
            None => "any_task".to_owned(),
        };
        self.note(format!(
            "{number}: claim_ready_steps({tasks_text}, max_steps {max_steps}, lease {lease}s)"
        ));
        let before = Rc::clone(&self.current);
        let t0 = clock(self.conn);
        let result = claim_ready_steps(self.conn, &request);
        let t1 = clock(self.conn);
        let claimed: Vec<ClaimedStep> = outcome("claim_ready_steps", result)?
            .map_err(|refusal| fail(format!("claim_ready_steps refused: {refusal}")))?;
        let after = self.load_after();
        let got: Vec<i64> = claimed.iter().map(|step| step.workflow_step_id).collect();
        self.result(format!("claimed {}", self.step_list(&got)));

        // Exactly the first max_steps steps ready right before the claim, of
        // the requested tasks that are pending or in progress.
        let rows_at_t0 = oracle::readiness(&self.world(&before, t0));
        let claimable_task = |task_id: i64| {
            matches!(
                before.task_state(task_id),
                TaskState::Pending | TaskState::InProgress
            )
        };
        let expectations: Vec<Vec<i64>> = candidate_times(&rows_at_t0, t0, t1)
            .into_iter()
            .map(|now| {
                oracle::readiness(&self.world(&before, now))
                    .iter()
                    .filter(|row| {
                        row.ready_for_execution
                            && claimable_task(row.task_id)
                            && requested
                                .as_ref()
                                .is_none_or(|ids| ids.contains(&row.task_id))
                    })
                    .take(max_steps as usize)
                    .map(|row| row.workflow_step_id)
                    .collect()
            })
            .collect();
        for step in &claimed {
            prop_assert!(
                claimable_task(step.task_id),
                "claimed {} of a task in state {}",
                self.step_label(step.workflow_step_id),
                before.task_state(step.task_id)
            );
        }
        prop_assert!(
            expectations.contains(&got),
            "claim took {} but the first {} ready steps of the tasks {} that are pending or in \
             progress were {}\n  readiness right before the claim:\n{}",
            self.step_list(&got),
            max_steps,
            tasks_text,
            expectations
                .iter()
                .map(|ids| self.step_list(ids))
                .collect::<Vec<_>>()
                .join(" or "),
            self.describe_readiness(&before, t0)
        );

        // Each claimed step is now in progress, one attempt more, leased.
        let mut started_tasks = BTreeSet::new();
        for step in &claimed {
            let id = step.workflow_step_id;
            let label = self.step_label(id);
            let old = &before.steps[&id];
            let new = &after.steps[&id];
            prop_assert_eq!(step.task_id, old.task_id, "{}: task_id", label);
            prop_assert_eq!(
                step.named_step_id,
                old.named_step_id,
                "{}: named_step_id",
                label
            );
            prop_assert_eq!(&step.name, &self.names[&id], "{}: name", label);
            prop_assert_eq!(&step.inputs, &old.inputs, "{}: inputs", label);
            prop_assert_eq!(
                step.attempt,
                old.attempts.unwrap_or(0) + 1,
                "{}: attempt",
                label
            );
            prop_assert_eq!(
                new.attempts,
                Some(step.attempt),
                "{}: stored attempts",
                label
            );
            let path: &[StepState] = if before.step_state(id) == StepState::Error {
                &[StepState::Pending, StepState::InProgress]
            } else {
                &[StepState::InProgress]
            };
            let added = appended(
                &label,
                &before.step_history[&id],
                &after.step_history[&id],
                path,
            )?;
            let start = added.last().expect("a start");
            prop_assert_eq!(step.claim_id, start.id, "{}: claim_id", label);
            prop_assert_eq!(
                step.claimed_until,
                start.created_at + Duration::seconds(i64::from(lease)),
                "{}: claimed_until is the start plus the lease",
                label
            );
            prop_assert_eq!(
                new.claimed_until,
                Some(step.claimed_until),
                "{}: stored lease",
                label
            );
            prop_assert_eq!(
                new.backoff_request_seconds,
                None,
                "{}: backoff cleared",
                label
            );
            prop_assert_eq!(
                after.task_state(step.task_id),
                TaskState::InProgress,
                "{}: its task is in progress",
                label
            );
            if before.task_state(step.task_id) == TaskState::Pending {
                started_tasks.insert(step.task_id);
            }
        }
        for &task_id in &started_tasks {
            appended(
                &self.task_label(task_id),
                &before.task_history[&task_id],
                &after.task_history[&task_id],
                &[TaskState::InProgress],
            )?;
        }
        self.unchanged_except(
            "claim_ready_steps",
            &before,
            &after,
            &got.iter().copied().collect(),
            &started_tasks,
        )?;
        self.claims.extend(claimed.iter().map(ClaimedStep::claim));
        Ok(())
    }

    /// Whether a report under `claim` must be accepted, made between the
    /// clock reads `t0` and `t1`.
    pub(super) fn verdict(
        before: &View,
        claim: Claim,
        t0: NaiveDateTime,
        t1: NaiveDateTime,
    ) -> Verdict {
        let step_id = claim.workflow_step_id;
        let latest = before.latest_step_transition(step_id);
        if latest.map(|transition| transition.id) != Some(claim.claim_id) {
            return Verdict::Refused(Refusal::ClaimLost {
                workflow_step_id: step_id,
                claim_id: claim.claim_id,
                state: before.step_state(step_id),
            });
        }
        match before.steps[&step_id].claimed_until {
            Some(until) if until <= t1 => {
                let expired = Refusal::ClaimExpired {
                    workflow_step_id: step_id,
                    claim_id: claim.claim_id,
                    claimed_until: until,
                };
                if until <= t0 {
                    Verdict::Refused(expired)
                } else {
                    Verdict::HoldsOrRefused(expired)
                }
            }
            _ => Verdict::Holds,
        }
    }

    /// `complete_step`, `fail_step` or `extend_step_claim` under a claim.
    pub(super) fn report(
        &mut self,
        number: usize,
        pick: ClaimPick,
        op: &Op,
    ) -> Result<(), TestCaseError> {
        let before = Rc::clone(&self.current);
        let Some(claim) = self.claim_at(&before, pick) else {
            self.note(format!("{number}: {op:?}: no claim yet, skipped"));
            return Ok(());
        };
        let step_id = claim.workflow_step_id;
        let label = self.step_label(step_id);
        let payload = json!({"operation": number});
        let what = match op {
            Op::Complete(_) => "complete_step".to_owned(),
            Op::Fail(_, retry_after) => format!("fail_step(retry_after {retry_after:?} ms)"),
            Op::Extend(_, lease) => format!("extend_step_claim({lease}s)"),
            _ => unreachable!("not a report"),
        };
        self.note(format!(
            "{number}: {what} under {}",
            self.describe_claim(claim)
        ));
        let t0 = clock(self.conn);
        let result = match op {
            Op::Complete(_) => complete_step(self.conn, claim, &payload).map(Done::Transition),
            Op::Fail(_, retry_after) => fail_step(
                self.conn,
                claim,
                &payload,
                retry_after.map(StdDuration::from_millis),
            )
            .map(Done::Transition),
            Op::Extend(_, lease) => {
                extend_step_claim(self.conn, claim, seconds(*lease)).map(Done::Extended)
            }
            _ => unreachable!("not a report"),
        };
        let t1 = clock(self.conn);
        let after = self.load_after();
        let got = outcome(&what, result)?;
        let done = match (Self::verdict(&before, claim, t0, t1), got) {
            (Verdict::Refused(expected) | Verdict::HoldsOrRefused(expected), Err(refusal)) => {
                self.result(format!("refused: {refusal}"));
                return self.check_refused(&what, &refusal, &expected, &before, &after);
            }
            (Verdict::Refused(expected), Ok(done)) => {
                return Err(fail(format!(
                    "{what} under {}: accepted ({done:?}), but the claim no longer holds: \
                     expected {expected:?}",
                    self.describe_claim(claim)
                )));
            }
            (Verdict::Holds, Err(refusal)) => {
                return Err(fail(format!(
                    "{what} under {}: refused ({refusal:?}) though the claim holds",
                    self.describe_claim(claim)
                )));
            }
            (Verdict::Holds | Verdict::HoldsOrRefused(_), Ok(done)) => done,
        };
        self.result("accepted".to_owned());
        let old = &before.steps[&step_id];
        let new = &after.steps[&step_id];
        let old_history = &before.step_history[&step_id];
        let new_history = &after.step_history[&step_id];
        match (op, done) {
            (Op::Complete(_), Done::Transition(transition)) => {
                let added = appended(&label, old_history, new_history, &[StepState::Complete])?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                prop_assert_eq!(&new.results, &Some(payload), "{}: results stored", label);
                prop_assert_eq!(
                    new.processed_at,
                    Some(transition.created_at),
                    "{}: processed_at",
                    label
                );
                prop_assert_eq!(new.attempts, old.attempts, "{}: attempts", label);
            }
            (Op::Fail(_, retry_after), Done::Transition(transition)) => {
                let added = appended(&label, old_history, new_history, &[StepState::Error])?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                let metadata = transition.metadata.clone().unwrap_or_default();
                prop_assert_eq!(
                    &metadata["error"],
                    &payload,
                    "{}: the error is in the metadata",
                    label
                );
                prop_assert!(
                    metadata["error_message"].is_string(),
                    "{}: the error's text for the Rails engine, in {}",
                    label,
                    metadata
                );
                prop_assert_eq!(
                    new.backoff_request_seconds,
                    retry_after.map(|ms| ms.div_ceil(1000) as i32),
                    "{}: backoff_request_seconds is the requested delay, rounded up",
                    label
                );
                prop_assert_eq!(&new.results, &old.results, "{}: results kept", label);
                prop_assert_eq!(new.attempts, old.attempts, "{}: attempts", label);
            }
            (Op::Extend(_, lease), Done::Extended(until)) => {
                let lease = Duration::seconds(i64::from(*lease));
                prop_assert!(
                    until >= t0 + lease && until <= t1 + lease,
                    "{}: extended to {} (now between {} and {})",
                    label,
                    until,
                    t0,
                    t1
                );
                let mut expected = old.clone();
                expected.claimed_until = Some(until);
                expected.updated_at = new.updated_at;
                prop_assert_eq!(new, &expected, "{}: only the lease moved", label);
                prop_assert_eq!(old_history, new_history, "{}: history kept", label);
            }
            (op, done) => unreachable!("{op:?} gave {done:?}"),
        }
        self.unchanged_except(
            &what,
            &before,
            &after,
            &BTreeSet::from([step_id]),
            &BTreeSet::new(),
        )
    }

    /// Puts the lease of the claim's step, when it is in process, 30 s into
    /// the past (not a library call: a worker that stopped heartbeating).
    pub(super) fn expire_lease(
        &mut self,
        number: usize,
        pick: ClaimPick,
    ) -> Result<(), TestCaseError> {
        let before = Rc::clone(&self.current);
        let Some(claim) = self.claim_at(&before, pick) else {
            self.note(format!("{number}: expire a lease: no claim yet, skipped"));
            return Ok(());
        };
        let step_id = claim.workflow_step_id;
        if !before.steps[&step_id].in_process {
            self.note(format!(
                "{number}: expire the lease of {}: not in process, skipped",
                self.step_label(step_id)
            ));
            return Ok(());
        }
        self.note(format!(
            "{number}: expire the lease of {} ({EXPIRED_SECONDS_AGO}s ago)",
            self.step_label(step_id)
        ));
        let until = support::utc_now(self.conn) - Duration::seconds(EXPIRED_SECONDS_AGO);
        support::update_step(
            self.conn,
            step_id,
            tasker_workflow_steps::claimed_until.eq(Some(until)),
        );
        Ok(())
    }

    pub(super) fn release(
        &mut self,
        number: usize,
        max_steps: Option<u32>,
    ) -> Result<(), TestCaseError> {
        self.note(format!("{number}: release_expired_claims({max_steps:?})"));
        let before = Rc::clone(&self.current);
        let t0 = clock(self.conn);
        let result = release_expired_claims(self.conn, max_steps);
        let t1 = clock(self.conn);
        let after = self.load_after();
        let released = outcome("release_expired_claims", result)?
            .map_err(|refusal| fail(format!("release_expired_claims refused: {refusal}")))?;
        self.result(format!("released {}", self.step_list(&released)));
        // In process with a lease passed, by lease end then id, at most max_steps.
        let expired_at = |now: NaiveDateTime| -> Vec<i64> {
            let mut expired: Vec<(NaiveDateTime, i64)> = before
                .steps
                .values()
                .filter(|step| step.in_process)
                .filter_map(|step| {
                    step.claimed_until
                        .filter(|&until| until <= now)
                        .map(|until| (until, step.workflow_step_id))
                })
                .collect();
            expired.sort_unstable();
            expired.truncate(max_steps.map_or(usize::MAX, |max| max as usize));
            expired.into_iter().map(|(_, id)| id).collect()
        };
        let expected = expired_at(t0);
        prop_assert!(
            released == expected || released == expired_at(t1),
            "release_expired_claims released {}, expected {}",
            self.step_list(&released),
            self.step_list(&expected)
        );
        for &id in &released {
            let label = self.step_label(id);
            let claim_id = before.latest_step_transition(id).map(|t| t.id);
            let added = appended(
                &label,
                &before.step_history[&id],
                &after.step_history[&id],
                &[StepState::Error],
            )?;
            let error = added[0]
                .metadata
                .as_ref()
                .and_then(|metadata| metadata.get("error"));
            prop_assert_eq!(
                error.and_then(|error| error.get("message")),
                Some(&json!("claim expired")),
                "{}: release metadata {:?}",
                label,
                added[0].metadata
            );
            prop_assert_eq!(
                error.and_then(|error| error.get("claim_id")).cloned(),
                claim_id.map(Value::from),
                "{}: the released claim is named",
                label
            );
            prop_assert_eq!(
                after.steps[&id].attempts,
                before.steps[&id].attempts,
                "{}: attempts",
                label
            );
        }
        self.unchanged_except(
            "release_expired_claims",
            &before,
            &after,
            &released.iter().copied().collect(),
            &BTreeSet::new(),
        )
    }

    /// Moves every stored timestamp back by `by` seconds, in one transaction,
    /// as if that much time had passed.
    pub(super) fn pass_time(&mut self, number: usize, by: i32) -> Result<(), TestCaseError> {
        const SHIFTS: [&str; 4] = [
            "UPDATE tasker_workflow_step_transitions SET \
             created_at = created_at - $1 * interval '1 second', \
             updated_at = updated_at - $1 * interval '1 second'",
            "UPDATE tasker_task_transitions SET \
             created_at = created_at - $1 * interval '1 second', \
             updated_at = updated_at - $1 * interval '1 second'",
            "UPDATE tasker_workflow_steps SET \
             last_attempted_at = last_attempted_at - $1 * interval '1 second', \
             claimed_until = claimed_until - $1 * interval '1 second', \
             processed_at = processed_at - $1 * interval '1 second', \
             created_at = created_at - $1 * interval '1 second', \
             updated_at = updated_at - $1 * interval '1 second'",
            "UPDATE tasker_tasks SET \
             requested_at = requested_at - $1 * interval '1 second', \
             created_at = created_at - $1 * interval '1 second', \
             updated_at = updated_at - $1 * interval '1 second'",
        ];
        self.note(format!("{number}: {by}s pass"));
        self.conn
            .transaction::<_, diesel::result::Error, _>(|conn| {
                for statement in SHIFTS {
                    diesel::sql_query(statement)
                        .bind::<Integer, _>(by)
                        .execute(conn)?;
                }
                Ok(())
            })
            .expect("let time pass");
        Ok(())
    }

    pub(super) fn resolve(&mut self, number: usize, pick: usize) -> Result<(), TestCaseError> {
        let step_id = self.step_at(pick);
        let label = self.step_label(step_id);
        self.note(format!("{number}: resolve_step_manually({label})"));
        let before = Rc::clone(&self.current);
        let result = resolve_step_manually(self.conn, step_id, None);
        let after = self.load_after();
        let state = before.step_state(step_id);
        match outcome("resolve_step_manually", result)? {
            Err(refusal) => {
                self.result(format!("refused: {refusal}"));
                let expected = Refusal::IllegalStepTransition {
                    workflow_step_id: step_id,
                    name: self.names[&step_id].clone(),
                    from: state,
                    to: StepState::ResolvedManually,
                };
                prop_assert!(
                    !step_move_allowed(state, StepState::ResolvedManually),
                    "resolve_step_manually({}) refused from {}",
                    label,
                    state
                );
                self.check_refused(
                    "resolve_step_manually",
                    &refusal,
                    &expected,
                    &before,
                    &after,
                )
            }
            Ok(transition) => {
                self.result(format!("resolved from {state}"));
                prop_assert!(
                    step_move_allowed(state, StepState::ResolvedManually),
                    "resolve_step_manually({}) accepted from {}",
                    label,
                    state
                );
                let added = appended(
                    &label,
                    &before.step_history[&step_id],
                    &after.step_history[&step_id],
                    &[StepState::ResolvedManually],
                )?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                self.unchanged_except(
                    "resolve_step_manually",
                    &before,
                    &after,
                    &BTreeSet::from([step_id]),
                    &BTreeSet::new(),
                )
            }
        }
    }

    pub(super) fn cancel(&mut self, number: usize, pick: usize) -> Result<(), TestCaseError> {
        let task_id = self.task_at(pick);
        let label = self.task_label(task_id);
        self.note(format!("{number}: cancel_task({label})"));
        let before = Rc::clone(&self.current);
        let result = cancel_task(self.conn, task_id, None);
        let after = self.load_after();
        let state = before.task_state(task_id);
        match outcome("cancel_task", result)? {
            Err(refusal) => {
                self.result(format!("refused: {refusal}"));
                // Finished work is not cancelled, although the state machine allows it.
                let expected = if task_finished(state) {
                    Refusal::TaskFinished { task_id, state }
                } else {
                    Refusal::IllegalTaskTransition {
                        task_id,
                        from: state,
                        to: TaskState::Cancelled,
                    }
                };
                self.check_refused("cancel_task", &refusal, &expected, &before, &after)
            }
            Ok(transition) => {
                prop_assert!(
                    !task_finished(state) && task_move_allowed(state, TaskState::Cancelled),
                    "cancel_task({}) accepted from {}",
                    label,
                    state
                );
                let added = appended(
                    &label,
                    &before.task_history[&task_id],
                    &after.task_history[&task_id],
                    &[TaskState::Cancelled],
                )?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                // Its pending and running steps are cancelled, the others stay.
                let cancelled: Vec<i64> = before
                    .steps
                    .values()
                    .filter(|step| step.task_id == task_id)
                    .map(|step| step.workflow_step_id)
                    .filter(|&id| {
                        matches!(
                            before.step_state(id),
                            StepState::Pending | StepState::InProgress
                        )
                    })
                    .collect();
                self.result(format!("cancelled with {}", self.step_list(&cancelled)));
                for &id in &cancelled {
                    appended(
                        &self.step_label(id),
                        &before.step_history[&id],
                        &after.step_history[&id],
                        &[StepState::Cancelled],
                    )?;
                }
                self.unchanged_except(
                    "cancel_task",
                    &before,
                    &after,
                    &cancelled.iter().copied().collect(),
                    &BTreeSet::from([task_id]),
                )
            }
        }
    }

    pub(super) fn finalize(&mut self, number: usize, pick: usize) -> Result<(), TestCaseError> {
        let task_id = self.task_at(pick);
        let label = self.task_label(task_id);
        self.note(format!("{number}: finalize_task({label})"));
        let before = Rc::clone(&self.current);
        let t0 = clock(self.conn);
        let result = finalize_task(self.conn, task_id, None);
        let t1 = clock(self.conn);
        let after = self.load_after();
        let rows_at_t0 = oracle::readiness(&self.world(&before, t0));
        let expectations: Vec<Finalized> = candidate_times(&rows_at_t0, t0, t1)
            .into_iter()
            .map(|now| {
                let world = self.world(&before, now);
                let rows = oracle::readiness(&world);
                let task_rows: Vec<&StepReadinessStatus> =
                    rows.iter().filter(|row| row.task_id == task_id).collect();
                let context = oracle::contexts(&world)
                    .into_iter()
                    .find(|context| context.task_id == task_id)
                    .expect("the task's context");
                expected_finalize(task_id, &context, &task_rows)
            })
            .collect();
        let task_steps: Vec<i64> = before
            .steps
            .values()
            .filter(|step| step.task_id == task_id)
            .map(|step| step.workflow_step_id)
            .collect();
        match outcome("finalize_task", result)? {
            Err(refusal) => {
                self.result(format!("refused: {refusal}"));
                let expected = expectations.iter().find_map(|expected| match expected {
                    Finalized::Refused(expected) if *expected == refusal => Some(expected),
                    _ => None,
                });
                let Some(expected) = expected else {
                    return Err(fail(format!(
                        "finalize_task({label}) refused with {refusal:?}, expected {expectations:?}\
                         \n  readiness:\n{}",
                        self.describe_readiness(&before, t0)
                    )));
                };
                self.check_refused("finalize_task", &refusal, expected, &before, &after)
            }
            Ok(state) => {
                self.result(format!("{state}"));
                let path = expectations.iter().find_map(|expected| match expected {
                    Finalized::State(expected, path) if *expected == state => Some(path),
                    _ => None,
                });
                let Some(path) = path else {
                    return Err(fail(format!(
                        "finalize_task({label}) returned {state}, expected {expectations:?}\
                         \n  readiness:\n{}",
                        self.describe_readiness(&before, t0)
                    )));
                };
                // The README's reading: Complete only when every step is done; Error
                // only when a step failed for good and nothing can run or retry.
                let states: Vec<StepState> =
                    task_steps.iter().map(|&id| before.step_state(id)).collect();
                match state {
                    TaskState::Complete => prop_assert!(
                        states.iter().all(|state| matches!(
                            state,
                            StepState::Complete
                                | StepState::ResolvedManually
                                | StepState::Cancelled
                        )),
                        "finalize_task({}) returned complete with steps {:?}",
                        label,
                        states
                    ),
                    TaskState::Error => {
                        let rows: Vec<StepReadinessStatus> = rows_at_t0
                            .iter()
                            .filter(|row| row.task_id == task_id)
                            .cloned()
                            .collect();
                        prop_assert!(
                            rows.iter().any(oracle::is_permanently_failed)
                                && !rows.iter().any(|row| {
                                    row.current_state == StepState::InProgress
                                        || (row.current_state == StepState::Error
                                            && row.retry_eligible)
                                }),
                            "finalize_task({}) returned error with steps {:?}",
                            label,
                            rows
                        );
                    }
                    // Finished otherwise: returned as it was, nothing written.
                    TaskState::Cancelled | TaskState::ResolvedManually => prop_assert_eq!(
                        before.task_state(task_id),
                        state,
                        "finalize_task({}) returned {} for a task that was not",
                        label,
                        state
                    ),
                    other => return Err(fail(format!("finalize_task({label}) returned {other}"))),
                }
                appended(
                    &label,
                    &before.task_history[&task_id],
                    &after.task_history[&task_id],
                    path,
                )?;
                let changed_tasks = if path.is_empty() {
                    BTreeSet::new()
                } else {
                    BTreeSet::from([task_id])
                };
                self.unchanged_except(
                    "finalize_task",
                    &before,
                    &after,
                    &BTreeSet::new(),
                    &changed_tasks,
                )
            }
        }
    }

    /// The operator's resume: `transition_task` to pending, with or without
    /// `expected: Error`.
    pub(super) fn resume(
        &mut self,
        number: usize,
        pick: usize,
        expect_error: bool,
    ) -> Result<(), TestCaseError> {
        let task_id = self.task_at(pick);
        let label = self.task_label(task_id);
        self.note(format!(
            "{number}: transition_task({label}, pending{})",
            if expect_error {
                ", expecting error"
            } else {
                ""
            }
        ));
        let options = if expect_error {
            TransitionOptions::expecting(TaskState::Error)
        } else {
            TransitionOptions::default()
        };
        let before = Rc::clone(&self.current);
        let result = transition_task(self.conn, task_id, TaskState::Pending, options);
        let after = self.load_after();
        let state = before.task_state(task_id);
        let expected = if expect_error && state != TaskState::Error {
            Some(Refusal::TaskStateConflict {
                task_id,
                expected: TaskState::Error,
                actual: state,
            })
        } else if !task_move_allowed(state, TaskState::Pending) {
            Some(Refusal::IllegalTaskTransition {
                task_id,
                from: state,
                to: TaskState::Pending,
            })
        } else {
            None
        };
        match (outcome("transition_task", result)?, expected) {
            (Err(refusal), Some(expected)) => {
                self.result(format!("refused: {refusal}"));
                self.check_refused("transition_task", &refusal, &expected, &before, &after)
            }
            (Ok(transition), None) => {
                self.result(format!("pending again (was {state})"));
                let added = appended(
                    &label,
                    &before.task_history[&task_id],
                    &after.task_history[&task_id],
                    &[TaskState::Pending],
                )?;
                prop_assert_eq!(&added[0], &transition, "{}: the returned transition", label);
                self.unchanged_except(
                    "transition_task",
                    &before,
                    &after,
                    &BTreeSet::new(),
                    &BTreeSet::from([task_id]),
                )
            }
            (got, expected) => Err(fail(format!(
                "transition_task({label}, pending) from {state}: got {got:?}, expected {expected:?}"
            ))),
        }
    }
}

/// What a report returned, reduced to what is checked.
#[derive(Debug)]
pub(super) enum Done {
    Transition(WorkflowStepTransition),
    Extended(NaiveDateTime),
}

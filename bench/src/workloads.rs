//! Workloads W1-W7 and L, run through the crate's public API
//! on pooled connections, with buffers per call from `EXPLAIN`.

use std::collections::HashSet;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel::sql_types::{BigInt, Json, Nullable, Text};
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use serde_json::{json, Value};
use tasker_diesel::enums::StepState;
use tasker_diesel::pool::{pool_builder, PgPool};
use tasker_diesel::readiness::{StepReadinessStatus, TaskExecutionContext};
use tasker_diesel::workflow::{
    claim_ready_steps, complete_step, transition_workflow_step, ClaimRequest, TransitionOptions,
};

use crate::legacy;
use crate::report::{size_label, WorkloadResult};
use crate::stats::{Latencies, Rng};
use crate::BoxResult;

/// How long and how hard each workload runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Timed calls per workload, after the warm-up.
    pub calls: usize,
    /// A workload stops early once its timed calls have run this long.
    pub budget: Duration,
    /// Untimed calls first: past PostgreSQL's switch to a generic plan (after
    /// five executions of a prepared statement) and with warm caches.
    pub warmup: usize,
    /// Tasks per call of the batch workloads W2 and W5.
    pub batch_tasks: usize,
    /// Step ids per call of W3.
    pub step_ids: usize,
    /// Inputs `EXPLAIN (ANALYZE, BUFFERS)` is run on for buffers per call.
    pub explain_samples: usize,
    /// W7: worker threads, how long they run, steps per claim.
    pub workers: usize,
    pub throughput_time: Duration,
    pub claim_batch: u32,
    /// C1 and C2: how long each creates batches.
    pub creation_time: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            calls: 2_000,
            budget: Duration::from_secs(120),
            warmup: 50,
            batch_tasks: 1_000,
            step_ids: 100,
            explain_samples: 20,
            workers: 4,
            throughput_time: Duration::from_secs(15),
            claim_batch: 10,
            creation_time: Duration::from_secs(10),
        }
    }
}

/// What one size's run produced.
pub struct SizeRun {
    pub results: Vec<WorkloadResult>,
    pub postgres_version: String,
    pub connection: String,
    pub notes: Vec<String>,
}

/// Whose statement a workload times: the crate's functions, or the legacy
/// views, whose calls take seconds at large sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Function,
    Legacy,
}

impl Kind {
    /// Timed calls made even past the budget.
    fn min_calls(self) -> usize {
        match self {
            Kind::Function => 200,
            Kind::Legacy => 5,
        }
    }

    fn warmup(self, settings: &Settings) -> usize {
        match self {
            Kind::Function => settings.warmup,
            Kind::Legacy => 1,
        }
    }

    fn explain_samples(self, settings: &Settings) -> usize {
        match self {
            Kind::Function => settings.explain_samples,
            Kind::Legacy => 1,
        }
    }
}

/// Runs every workload against the dataset at `url`: reads first, then the
/// writes (W6, W7), which move some of its steps on.
pub fn run(url: &str, settings: &Settings, target_steps: u64) -> BoxResult<SizeRun> {
    let size = size_label(target_steps);
    let pool = pool_builder()
        .max_size(settings.workers as u32 + 1)
        .build(ConnectionManager::new(url))?;
    let mut conn = pool.get()?;
    legacy::install(&mut conn)?;
    let inputs = Inputs::load(&mut conn)?;
    let mut rng = Rng::seeded(target_steps);
    let mut results = Vec::new();
    let mut notes = Vec::new();

    let sample = inputs.agreement_sample(&mut rng, if target_steps >= 10_000_000 { 4 } else { 10 });
    println!(
        "{size}: checking the legacy views against the functions on {} tasks",
        sample.len()
    );
    legacy::check_agreement(&mut conn, &sample)?;

    let batch = settings.batch_tasks.min(inputs.active_tasks.len());
    if batch < settings.batch_tasks {
        notes.push(format!(
            "{size}: W2 and W5 use all {batch} active tasks (fewer than {})",
            settings.batch_tasks
        ));
    }

    let mut workload = Workload::new(&mut conn, settings, &size, &mut results, &mut notes);
    workload.time(
        "W1",
        "get_step_readiness_status(task_id): a random active 100-step task per call".to_owned(),
        Kind::Function,
        |rng| rng.pick(&inputs.active_layered),
        |conn, task| StepReadinessStatus::for_task(task).load(conn).map(drop),
        |task| format!("SELECT * FROM get_step_readiness_status({task})"),
        &mut rng,
    )?;
    workload.time(
        "W2",
        format!("get_step_readiness_status_batch: {batch} random active tasks per call"),
        Kind::Function,
        |rng| rng.sample(&inputs.active_tasks, batch),
        |conn, tasks| StepReadinessStatus::for_tasks(&tasks).load(conn).map(drop),
        |tasks| {
            format!(
                "SELECT * FROM get_step_readiness_status_batch({})",
                array(tasks)
            )
        },
        &mut rng,
    )?;
    workload.time(
        "W3",
        format!(
            "get_step_readiness_status(step_ids): {} random steps of active tasks",
            settings.step_ids
        ),
        Kind::Function,
        |rng| rng.sample(&inputs.active_steps, settings.step_ids),
        |conn, steps| StepReadinessStatus::for_steps(&steps).load(conn).map(drop),
        |steps| format!("SELECT * FROM get_step_readiness_status({})", array(steps)),
        &mut rng,
    )?;
    workload.time(
        "W4",
        "get_task_execution_context: a random active 100-step task per call".to_owned(),
        Kind::Function,
        |rng| rng.pick(&inputs.active_layered),
        |conn, task| TaskExecutionContext::find(conn, task).map(drop),
        |task| format!("SELECT * FROM get_task_execution_context({task})"),
        &mut rng,
    )?;
    workload.time(
        "W5",
        format!("get_task_execution_contexts_batch: {batch} random active tasks per call"),
        Kind::Function,
        |rng| rng.sample(&inputs.active_tasks, batch),
        |conn, tasks| TaskExecutionContext::find_many(conn, &tasks).map(drop),
        |tasks| {
            format!(
                "SELECT * FROM get_task_execution_contexts_batch({})",
                array(tasks)
            )
        },
        &mut rng,
    )?;
    workload.time(
        "L-W1",
        "legacy view: step readiness WHERE task_id = $1 (as W1)".to_owned(),
        Kind::Legacy,
        |rng| rng.pick(&inputs.active_layered),
        |conn, task| Ok(legacy::step_readiness(conn, task).map(drop)?),
        |task| legacy::STEP_READINESS.replace("$1", &task.to_string()),
        &mut rng,
    )?;
    workload.time(
        "L-W4",
        "legacy view: execution context WHERE task_id = $1 (as W4)".to_owned(),
        Kind::Legacy,
        |rng| rng.pick(&inputs.active_layered),
        |conn, task| Ok(legacy::execution_context(conn, task).map(drop)?),
        |task| legacy::EXECUTION_CONTEXT.replace("$1", &task.to_string()),
        &mut rng,
    )?;
    workload.transitions(&inputs, &mut rng)?;

    let (postgres_version, connection) = describe_server(&mut conn, settings)?;
    drop(conn);
    results.push(throughput(&pool, settings, &size)?);
    Ok(SizeRun {
        results,
        postgres_version,
        connection,
        notes,
    })
}

/// The ids the workloads draw from.
struct Inputs {
    /// Active tasks of the 100-step layered shape (W1, W4, L).
    active_layered: Vec<i64>,
    /// Active tasks of every shape (W2, W5).
    active_tasks: Vec<i64>,
    /// Steps of active tasks (W3).
    active_steps: Vec<i64>,
    /// A few finished tasks, for the agreement check.
    historical_tasks: Vec<i64>,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

impl Inputs {
    fn load(conn: &mut PgConnection) -> BoxResult<Self> {
        let ids = |conn: &mut PgConnection, sql: &str| -> BoxResult<Vec<i64>> {
            Ok(sql_query(sql)
                .load::<Id>(conn)?
                .into_iter()
                .map(|row| row.id)
                .collect())
        };
        let inputs = Inputs {
            active_layered: ids(
                conn,
                "SELECT task_id AS id FROM tasker_tasks JOIN tasker_named_tasks USING (named_task_id) \
                 WHERE NOT complete AND name = 'layered' ORDER BY task_id",
            )?,
            active_tasks: ids(conn, "SELECT task_id AS id FROM tasker_tasks WHERE NOT complete ORDER BY task_id")?,
            active_steps: ids(
                conn,
                "SELECT workflow_step_id AS id FROM tasker_workflow_steps \
                 WHERE task_id IN (SELECT task_id FROM tasker_tasks WHERE NOT complete) \
                 ORDER BY workflow_step_id",
            )?,
            historical_tasks: ids(
                conn,
                "SELECT task_id AS id FROM tasker_tasks WHERE complete ORDER BY task_id LIMIT 100",
            )?,
        };
        if inputs.active_layered.is_empty() {
            return Err("the dataset has no active layered task".into());
        }
        Ok(inputs)
    }

    /// Tasks to compare the legacy views with the functions on: mostly active
    /// ones of every shape, some finished.
    fn agreement_sample(&self, rng: &mut Rng, count: usize) -> Vec<i64> {
        let mut sample = rng.sample(&self.active_layered, count / 2);
        sample.extend(rng.sample(&self.active_tasks, count - count / 2 - 1));
        sample.extend(rng.sample(&self.historical_tasks, 1));
        sample
    }
}

/// Times workloads on one connection and records their results.
struct Workload<'a> {
    conn: &'a mut PooledConnection<ConnectionManager<PgConnection>>,
    settings: &'a Settings,
    size: &'a str,
    results: &'a mut Vec<WorkloadResult>,
    notes: &'a mut Vec<String>,
}

impl<'a> Workload<'a> {
    fn new(
        conn: &'a mut PooledConnection<ConnectionManager<PgConnection>>,
        settings: &'a Settings,
        size: &'a str,
        results: &'a mut Vec<WorkloadResult>,
        notes: &'a mut Vec<String>,
    ) -> Self {
        Workload {
            conn,
            settings,
            size,
            results,
            notes,
        }
    }

    /// Warms up, then times up to `settings.calls` calls (at least the
    /// kind's minimum, more until the budget runs out), each on an input drawn
    /// before its clock starts; then `EXPLAIN (ANALYZE, BUFFERS)` of the same
    /// statement on a few inputs.
    #[allow(clippy::too_many_arguments)]
    fn time<I>(
        &mut self,
        id: &str,
        description: String,
        kind: Kind,
        mut draw: impl FnMut(&mut Rng) -> I,
        mut call: impl FnMut(&mut PgConnection, I) -> tasker_diesel::Result<()>,
        explain: impl Fn(&I) -> String,
        rng: &mut Rng,
    ) -> BoxResult<()> {
        let settings = self.settings;
        let min_calls = kind.min_calls().min(settings.calls);
        let warmup = kind.warmup(settings);
        print!("{}: {id} ", self.size);
        std::io::stdout().flush()?;
        for _ in 0..warmup {
            call(self.conn, draw(rng))?;
        }
        let started = Instant::now();
        let mut latencies = Latencies::default();
        while latencies.len() < settings.calls
            && (latencies.len() < min_calls || started.elapsed() < settings.budget)
        {
            let input = draw(rng);
            let clock = Instant::now();
            call(self.conn, input)?;
            latencies.push(clock.elapsed());
        }
        if latencies.len() < settings.calls {
            self.notes.push(format!(
                "{}: {id} made {} timed calls, not {}: it ran out of its {} s budget",
                self.size,
                latencies.len(),
                settings.calls,
                settings.budget.as_secs()
            ));
        }
        let samples = kind.explain_samples(settings);
        let statements: Vec<String> = (0..samples).map(|_| explain(&draw(rng))).collect();
        let buffers = explain_buffers(self.conn, &statements)?;
        self.record(id, description, &latencies, Some(buffers));
        Ok(())
    }

    /// W6: one step transition per call, round-robin over ready pending steps
    /// of active tasks, each going pending -> in_progress -> error -> pending
    /// (legal moves that can repeat). The steps are left pending.
    fn transitions(&mut self, inputs: &Inputs, rng: &mut Rng) -> BoxResult<()> {
        const STEPS: usize = 200;
        let tasks = rng.sample(&inputs.active_tasks, 2_000);
        let mut steps: Vec<(i64, StepState)> = StepReadinessStatus::for_tasks(&tasks)
            .ready_for_execution()
            .in_state(StepState::Pending)
            .load(self.conn)?
            .into_iter()
            .take(STEPS)
            .map(|step| (step.workflow_step_id, StepState::Pending))
            .collect();
        if steps.is_empty() {
            return Err("W6: no ready pending step".into());
        }
        let explain: Vec<String> = steps
            .iter()
            .take(self.settings.explain_samples)
            .map(|(id, _)| {
                format!("SELECT * FROM tasker_transition_workflow_step({id}, 'in_progress', NULL, NULL)")
            })
            .collect();
        let buffers = explain_buffers_rolled_back(self.conn, &explain)?;

        let next = |state: StepState| match state {
            StepState::Pending => StepState::InProgress,
            StepState::InProgress => StepState::Error,
            _ => StepState::Pending,
        };
        print!("{}: W6 ", self.size);
        let mut latencies = Latencies::default();
        let total = self.settings.warmup + self.settings.calls;
        let count = steps.len();
        for call in 0..total {
            let (id, state) = &mut steps[call % count];
            let clock = Instant::now();
            transition_workflow_step(
                self.conn,
                *id,
                next(*state),
                TransitionOptions::expecting(*state),
            )?;
            if call >= self.settings.warmup {
                latencies.push(clock.elapsed());
            }
            *state = next(*state);
        }
        for (id, state) in &mut steps {
            while *state != StepState::Pending {
                transition_workflow_step(
                    self.conn,
                    *id,
                    next(*state),
                    TransitionOptions::expecting(*state),
                )?;
                *state = next(*state);
            }
        }
        self.record(
            "W6",
            format!(
                "transition_workflow_step: one move per call, round-robin over {} ready steps \
                 (pending -> in_progress -> error -> pending), committed",
                steps.len()
            ),
            &latencies,
            Some(buffers),
        );
        Ok(())
    }

    fn record(
        &mut self,
        id: &str,
        description: String,
        latencies: &Latencies,
        buffers: Option<f64>,
    ) {
        let result = WorkloadResult {
            id: id.to_owned(),
            description,
            calls: latencies.len() as u64,
            p50_ms: latencies.quantile_ms(0.5),
            p99_ms: latencies.quantile_ms(0.99),
            max_ms: latencies.max_ms(),
            mean_ms: latencies.mean_ms(),
            buffers_per_call: buffers,
            steps_per_second: None,
            duplicate_claims: None,
        };
        println!(
            "{} calls, p50 {:.3} ms, p99 {:.3} ms, {:.0} buffers/call",
            result.calls,
            result.p50_ms.unwrap_or(f64::NAN),
            result.p99_ms.unwrap_or(f64::NAN),
            buffers.unwrap_or(f64::NAN)
        );
        self.results.push(result);
    }
}

/// W7: worker threads claim ready steps from any task and complete them, for
/// a fixed time; a step claimed twice is a duplicate.
fn throughput(pool: &PgPool, settings: &Settings, size: &str) -> BoxResult<WorkloadResult> {
    print!("{size}: W7 ");
    let started = Instant::now();
    let deadline = started + settings.throughput_time;
    let workers: Vec<_> = (0..settings.workers)
        .map(|_| {
            let pool = pool.clone();
            let claim_batch = settings.claim_batch;
            thread::spawn(move || -> BoxResult<(Vec<i64>, Duration)> {
                let mut conn = pool.get()?;
                let request = ClaimRequest::any_task(claim_batch, Duration::from_secs(60));
                let results = json!({"ok": true});
                let mut completed = Vec::new();
                let mut last_completion = Duration::ZERO;
                while Instant::now() < deadline {
                    let claimed = claim_ready_steps(&mut conn, &request)?;
                    if claimed.is_empty() {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    for step in claimed {
                        complete_step(&mut conn, step.claim(), &results)?;
                        completed.push(step.workflow_step_id);
                        last_completion = started.elapsed();
                    }
                }
                Ok((completed, last_completion))
            })
        })
        .collect();
    let mut completed = Vec::new();
    let mut elapsed = Duration::ZERO;
    for worker in workers {
        let (steps, last) = worker.join().map_err(|_| "a W7 worker panicked")??;
        completed.extend(steps);
        elapsed = elapsed.max(last);
    }
    let distinct: HashSet<i64> = completed.iter().copied().collect();
    let duplicates = (completed.len() - distinct.len()) as u64;
    let steps_per_second = completed.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
    println!(
        "{} steps in {:.1} s: {steps_per_second:.0} steps/s, {duplicates} duplicates",
        completed.len(),
        elapsed.as_secs_f64()
    );
    Ok(WorkloadResult {
        id: "W7".to_owned(),
        description: format!(
            "claim_ready_steps (any task, up to {} steps) + complete_step each, {} worker threads \
             on an r2d2 pool for {} s: {} steps completed",
            settings.claim_batch,
            settings.workers,
            settings.throughput_time.as_secs(),
            completed.len()
        ),
        calls: completed.len() as u64,
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        mean_ms: None,
        buffers_per_call: None,
        steps_per_second: Some(steps_per_second),
        duplicate_claims: Some(duplicates),
    })
}

#[derive(QueryableByName)]
struct Plan {
    #[diesel(sql_type = Json, column_name = "QUERY PLAN")]
    plan: Value,
}

/// Mean shared buffers (hit + read) of the statements' executions, from
/// `EXPLAIN (ANALYZE, BUFFERS)`; planning is not counted.
fn explain_buffers(conn: &mut PgConnection, statements: &[String]) -> BoxResult<f64> {
    let mut total = 0.0;
    for statement in statements {
        let plan: Plan = sql_query(format!(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}"
        ))
        .get_result(conn)?;
        let top = &plan.plan[0]["Plan"];
        let blocks = |key: &str| top[key].as_f64().unwrap_or(0.0);
        total += blocks("Shared Hit Blocks") + blocks("Shared Read Blocks");
    }
    Ok(total / statements.len().max(1) as f64)
}

/// [`explain_buffers`] for statements that write, in a transaction rolled back.
fn explain_buffers_rolled_back(conn: &mut PgConnection, statements: &[String]) -> BoxResult<f64> {
    let mut buffers = 0.0;
    let outcome = conn.transaction::<(), diesel::result::Error, _>(|conn| {
        buffers = explain_buffers(conn, statements)
            .map_err(|error| diesel::result::Error::QueryBuilderError(error.to_string().into()))?;
        Err(diesel::result::Error::RollbackTransaction)
    });
    match outcome {
        Err(diesel::result::Error::RollbackTransaction) => Ok(buffers),
        Err(error) => Err(error.into()),
        Ok(()) => unreachable!("the transaction always rolls back"),
    }
}

/// The server's version and how the benchmark is connected to it.
fn describe_server(conn: &mut PgConnection, settings: &Settings) -> BoxResult<(String, String)> {
    #[derive(QueryableByName)]
    struct Server {
        #[diesel(sql_type = Text)]
        version: String,
        #[diesel(sql_type = Nullable<Text>)]
        address: Option<String>,
        #[diesel(sql_type = Nullable<BigInt>)]
        port: Option<i64>,
    }
    let server: Server = sql_query(
        "SELECT current_setting('server_version') || ' (' || version() || ')' AS version, \
                host(inet_server_addr()) AS address, inet_server_port()::bigint AS port",
    )
    .get_result(conn)?;
    let transport = match (server.address, server.port) {
        (Some(address), Some(port)) => format!("TCP {address}:{port}"),
        _ => "Unix socket".to_owned(),
    };
    Ok((
        server.version,
        format!(
            "{transport}, r2d2 pool; W1-W6 and L on one pooled connection, W7 on {} more",
            settings.workers
        ),
    ))
}

/// `ARRAY[...]::bigint[]` for an EXPLAIN statement.
fn array(ids: &[i64]) -> String {
    let items: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("ARRAY[{}]::bigint[]", items.join(","))
}

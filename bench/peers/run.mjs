// The peers of the dispatch benchmark: graphile-worker and pg-boss, installed
// from npm at the versions package-lock.json pins, each in the modes their docs
// recommend for throughput, on the same server as the crate's workloads.
//
// usage: node run.mjs SERVER_URL JOBS
//
// For each mode: a fresh database, JOBS one-step jobs enqueued in batches of
// 100 (the enqueue rate), then 4 workers with no-op handlers run until every
// job is done (jobs/s, from the workers' start to the last job). One JSON line
// per mode on stdout.

import pg from "pg";
import { PgBoss } from "pg-boss";
import { run, makeWorkerUtils } from "graphile-worker";

const [serverUrl, jobsArg] = process.argv.slice(2);
const JOBS = Number(jobsArg ?? 10000);
const WORKERS = 4;
const ENQUEUE_BATCH = 100;

function databaseUrl(name) {
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

async function freshDatabase(name) {
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  return databaseUrl(name);
}

async function dropDatabase(name) {
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}

/// Resolves once `count()` reaches JOBS; rejects after `limitMs`.
function allDone(count, limitMs) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      if (count() >= JOBS) {
        clearInterval(timer);
        resolve();
      } else if (Date.now() - started > limitMs) {
        clearInterval(timer);
        reject(new Error(`only ${count()} of ${JOBS} jobs done in ${limitMs} ms`));
      }
    }, 1);
  });
}

async function pgBoss(batchSize) {
  const name = `tasker_bench_peer_pgboss_${batchSize}`;
  const url = await freshDatabase(name);
  // The stats that burstWhenReadyExceeds reads refreshed every second
  // instead of every minute, so a backlog is fetched without pauses.
  const boss = new PgBoss({
    connectionString: url,
    max: WORKERS + 2,
    monitorIntervalSeconds: 1,
    superviseIntervalSeconds: 1,
    queueCacheIntervalSeconds: 1,
  });
  boss.on("error", (error) => console.error(error));
  await boss.start();
  const queue = "bench";
  await boss.createQueue(queue);
  const enqueueStarted = performance.now();
  for (let sent = 0; sent < JOBS; sent += ENQUEUE_BATCH) {
    const jobs = Array.from({ length: Math.min(ENQUEUE_BATCH, JOBS - sent) }, (_, i) => ({
      data: { serial: sent + i },
    }));
    await boss.insert(queue, jobs);
  }
  const enqueueSeconds = (performance.now() - enqueueStarted) / 1000;
  let done = 0;
  let last = 0;
  const started = performance.now();
  await boss.work(
    queue,
    {
      batchSize,
      localConcurrency: WORKERS,
      pollingIntervalSeconds: 0.5,
      burstWhenBatchFull: batchSize > 1,
      burstWhenReadyExceeds: 1,
    },
    async (jobs) => {
      done += jobs.length;
      last = performance.now();
    },
  );
  await allDone(() => done, 300_000);
  await boss.stop({ graceful: true, wait: true });
  return {
    system: "pg-boss 12.38.0",
    mode: `work() batch ${batchSize}, localConcurrency ${WORKERS}, burstWhenReadyExceeds 1${batchSize > 1 ? ", burstWhenBatchFull" : ""}`,
    jobs: JOBS,
    enqueue_jobs_per_second: JOBS / enqueueSeconds,
    jobs_per_second: JOBS / ((last - started) / 1000),
  };
}

async function graphileWorker(localQueue) {
  const name = `tasker_bench_peer_graphile_${localQueue ? "local" : "direct"}`;
  const url = await freshDatabase(name);
  const utils = await makeWorkerUtils({ connectionString: url });
  await utils.migrate();
  const enqueueStarted = performance.now();
  for (let sent = 0; sent < JOBS; sent += ENQUEUE_BATCH) {
    const specs = Array.from({ length: Math.min(ENQUEUE_BATCH, JOBS - sent) }, (_, i) => ({
      identifier: "bench",
      payload: { serial: sent + i },
    }));
    await utils.addJobs(specs);
  }
  const enqueueSeconds = (performance.now() - enqueueStarted) / 1000;
  await utils.release();
  let done = 0;
  let last = 0;
  const started = performance.now();
  const runner = await run({
    connectionString: url,
    concurrency: WORKERS,
    noHandleSignals: true,
    pollInterval: 500,
    logger: quietLogger(),
    taskList: {
      bench: async () => {
        done += 1;
        last = performance.now();
      },
    },
    preset: localQueue
      ? { worker: { localQueue: { size: 10 }, completeJobBatchDelay: 0 } }
      : undefined,
  });
  await allDone(() => done, 300_000);
  await runner.stop();
  return {
    system: "graphile-worker 0.18.0",
    mode: localQueue
      ? `concurrency ${WORKERS}, localQueue size 10, completeJobBatchDelay 0`
      : `concurrency ${WORKERS}, one job per fetch`,
    jobs: JOBS,
    enqueue_jobs_per_second: JOBS / enqueueSeconds,
    jobs_per_second: JOBS / ((last - started) / 1000),
  };
}

function quietLogger() {
  // graphile-worker logs every job at info level; keep warnings and errors.
  const noop = () => {};
  const make = () => ({
    scope: () => make(),
    debug: noop,
    info: noop,
    warn: (message) => console.error(message),
    error: (message) => console.error(message),
  });
  return new Proxy(make(), {});
}

// PEERS_ONLY=tasker_bench_peer_pgboss_10,... runs only those modes.
const only = process.env.PEERS_ONLY;
const modes = [
  ["tasker_bench_peer_graphile_direct", () => graphileWorker(false)],
  ["tasker_bench_peer_graphile_local", () => graphileWorker(true)],
  ["tasker_bench_peer_pgboss_1", () => pgBoss(1)],
  ["tasker_bench_peer_pgboss_10", () => pgBoss(10)],
]
  .filter(([id]) => !only || only.split(",").includes(id));
// A peer's pool may still hold idle connections when its database is dropped
// at the end; their termination is expected then.
let dropping = false;
process.on("uncaughtException", (error) => {
  if (dropping && /administrator command/.test(String(error?.message))) return;
  console.error(error);
  process.exit(1);
});
const names = [];
for (const [name, mode] of modes) {
  names.push(name);
  const result = await mode();
  console.log(JSON.stringify(result));
}
dropping = true;
for (const name of names) {
  await dropDatabase(name);
}

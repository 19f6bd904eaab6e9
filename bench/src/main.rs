//! The benchmark: generates datasets of 10K to 10M steps, checks the legacy
//! views against the functions, times workloads W1-W7 and the legacy views
//! through the crate's public API, then creating work (C1-C4) and loading
//! the dataset the ordinary way with and without the triggers (C5, at the
//! largest size up to 1M), and writes a report.
//!
//! ```text
//! cargo run --release -p tasker-diesel-bench                        # full sweep: 10K, 100K, 1M, 10M steps
//! cargo run --release -p tasker-diesel-bench -- --quick             # 10K and 100K
//! cargo run --release -p tasker-diesel-bench -- --sizes 1m --reuse  # one size, keeping a generated dataset
//! cargo run --release -p tasker-diesel-bench -- generate --steps 1m
//! ```
//!
//! The server is `DATABASE_URL`'s, else 127.0.0.1:5432, else a throwaway
//! cluster; each size gets a database of its own (`tasker_bench_<steps>`).

mod creation;
mod dataset;
mod dispatch;
mod dispatch_report;
mod legacy;
mod machine;
mod peers;
mod report;
mod stats;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tasker_diesel::testing::server_url;

use crate::report::{Report, SizeReport};
use crate::workloads::Settings;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How the benchmark is run, from the repository root (recorded in each report).
const COMMAND: &str = "cargo run --release -p tasker-diesel-bench";

const USAGE: &str = "\
usage: cargo run --release -p tasker-diesel-bench -- [--quick | --sizes 10k,100k,1m,10m]
           [--calls N] [--budget SECONDS] [--reuse] [--peers] [--out DIR]
       cargo run --release -p tasker-diesel-bench -- dispatch [W7j,W7b,...] [--peers] [--out DIR]
       cargo run --release -p tasker-diesel-bench -- generate --steps SIZE [--reuse]
       cargo run --release -p tasker-diesel-bench -- render [--out DIR]

  --quick         10K and 100K steps, with a 30 s budget (about 5 minutes)
  --sizes LIST    dataset sizes in steps (default: 10k,100k,1m,10m)
  --calls N       timed calls per workload after warm-up (default 2000)
  --budget SECS   stop a workload early once it has run this long (default 120);
                  the report says how many calls it made
  --reuse         keep a complete dataset of the same size instead of regenerating
                  it (W6 and W7 will have moved some of its steps on)
  --peers         also run graphile-worker and pg-boss (npm ci in bench/peers; skipped
                  with a message without Node.js) beside the dispatch workloads
  --out DIR       report directory (default target/bench-report of the repository,
                  wherever the command runs from)

dispatch runs only the dispatch workloads (all, or those listed) and writes
their report; generate only generates a dataset; render writes report.md and the plot of
DIR/report.json again (after a change to how they are drawn).";

/// The size C5 loads: the largest of the sweep up to this.
const LOAD_STEPS: u64 = 1_000_000;

/// The workload budget of `--quick`, so that it takes minutes.
const QUICK_BUDGET: Duration = Duration::from_secs(30);

enum Command {
    Sweep {
        sizes: Vec<u64>,
        mode: &'static str,
        settings: Settings,
        reuse: bool,
        peers: bool,
        out: PathBuf,
    },
    Generate {
        steps: u64,
        reuse: bool,
    },
    Render {
        out: PathBuf,
    },
    Dispatch {
        only: Vec<String>,
        peers: bool,
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(command, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("benchmark failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse(args: &[String]) -> Result<Command, String> {
    let mut sizes = vec![10_000, 100_000, 1_000_000, 10_000_000];
    let mut mode = "full";
    let mut settings = Settings::default();
    let mut reuse = false;
    let mut out = default_out();
    let mut generate = false;
    let mut render = false;
    let mut dispatch = false;
    let mut peers = false;
    let mut only = Vec::new();
    let mut steps = None;
    let mut budget = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "generate" => generate = true,
            "dispatch" => dispatch = true,
            "--peers" => peers = true,
            list if dispatch && only.is_empty() && list.starts_with('W') => {
                only = list.split(',').map(str::to_owned).collect();
            }
            "render" => render = true,
            "--quick" => {
                sizes = vec![10_000, 100_000];
                mode = "quick";
            }
            "--sizes" => {
                sizes = value()?
                    .split(',')
                    .map(|size| {
                        dataset::parse_size(size).ok_or_else(|| format!("bad size {size:?}"))
                    })
                    .collect::<Result<_, _>>()?;
                sizes.sort_unstable();
                sizes.dedup();
                mode = "custom";
            }
            "--steps" => {
                let text = value()?;
                steps =
                    Some(dataset::parse_size(text).ok_or_else(|| format!("bad size {text:?}"))?);
            }
            "--calls" => {
                settings.calls = value()?
                    .parse()
                    .ok()
                    .filter(|&calls| calls > 0)
                    .ok_or("--calls needs a positive number")?;
            }
            "--budget" => {
                let seconds: u64 = value()?.parse().map_err(|_| "--budget needs seconds")?;
                budget = Some(Duration::from_secs(seconds));
            }
            "--reuse" => reuse = true,
            "--out" => out = PathBuf::from(value()?),
            "-h" | "--help" => return Err("the tasker-diesel benchmark".to_owned()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if render {
        return Ok(Command::Render { out });
    }
    if dispatch {
        return Ok(Command::Dispatch { only, peers, out });
    }
    if generate {
        let steps = steps.ok_or("generate needs --steps SIZE")?;
        return Ok(Command::Generate { steps, reuse });
    }
    settings.budget = budget.unwrap_or(match mode {
        "quick" => QUICK_BUDGET,
        _ => settings.budget,
    });
    Ok(Command::Sweep {
        sizes,
        mode,
        settings,
        reuse,
        peers,
        out,
    })
}

fn run(command: Command, args: &[String]) -> BoxResult<()> {
    // Rendering reads reports only; everything else writes the databases.
    let _lock = match command {
        Command::Render { .. } => None,
        _ => Some(lock_the_server(server_url())?),
    };
    match command {
        Command::Render { out } => {
            report::render_again(&out)?;
            println!("report rendered again in {}", out.display());
            Ok(())
        }
        Command::Dispatch { only, peers, out } => {
            let mut report = new_report(args, "dispatch");
            report.dispatch = dispatch::run(server_url(), &only)?;
            if peers {
                report.peers = peers::run(server_url())?.unwrap_or_default();
            }
            report::write_report(&out, &report)?;
            println!("report written to {}", out.display());
            Ok(())
        }
        Command::Generate { steps, reuse } => {
            let dataset = dataset::prepare(server_url(), steps, reuse)?;
            println!("{}", serde_json::to_string_pretty(&dataset.stats)?);
            Ok(())
        }
        Command::Sweep {
            sizes,
            mode,
            settings,
            reuse,
            peers,
            out,
        } => {
            let mut report = new_report(args, mode);
            let server = server_url();
            let load_steps = sizes
                .iter()
                .copied()
                .filter(|&steps| steps <= LOAD_STEPS)
                .max()
                .unwrap_or(LOAD_STEPS);
            for steps in sizes {
                let dataset = dataset::prepare(server, steps, reuse)?;
                let run = workloads::run(&dataset.url, &settings, steps)?;
                report.postgres_version = run.postgres_version;
                report.connection = run.connection;
                report.notes.extend(run.notes);
                report.sizes.push(SizeReport {
                    target_steps: steps,
                    dataset: dataset.stats,
                    workloads: run.results,
                });
                // Written after every size, so a long sweep leaves its figures
                // behind even when a later size fails.
                report::write_report(&out, &report)?;
                println!("report written to {}", out.display());
            }
            let creation = creation::run(server, &settings)?;
            report.creation = creation.results;
            report.notes.extend(creation.notes);
            report::write_report(&out, &report)?;
            // The triggers-on side of C5 is the generation of that size.
            let generated = match report.sizes.iter().find(|s| s.target_steps == load_steps) {
                Some(size) => size.dataset.clone(),
                None => dataset::prepare(server, load_steps, true)?.stats,
            };
            report.load = Some(dataset::load_comparison(server, &generated, load_steps)?);
            report::write_report(&out, &report)?;
            report.dispatch = dispatch::run(server, &[])?;
            if peers {
                report.peers = peers::run(server)?.unwrap_or_default();
            }
            report::write_report(&out, &report)?;
            println!("report written to {}", out.display());
            Ok(())
        }
    }
}

/// The advisory lock a run holds on its server for as long as it runs.
const RUN_LOCK: i64 = 0x7461_736b_6265_6e63; // "taskbenc"

/// Every run drops and creates the same databases (`tasker_bench_*`), so a
/// second run at the same time would drop the first one's: it is refused
/// instead. The lock is the session's and goes when the returned connection
/// is dropped, or the process dies.
fn lock_the_server(server_url: &str) -> BoxResult<diesel::PgConnection> {
    use diesel::{Connection, RunQueryDsl};
    let mut conn = diesel::PgConnection::establish(server_url)?;
    let locked: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "pg_try_advisory_lock({RUN_LOCK})"
    )))
    .get_result(&mut conn)?;
    if !locked {
        return Err(
            "another benchmark run is using this server's tasker_bench_* databases: \
                    wait for it to finish, or give this one another server (DATABASE_URL)"
                .into(),
        );
    }
    Ok(conn)
}

/// `target/bench-report` at the repository root, whichever directory the
/// benchmark is started from.
fn default_out() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    package
        .parent()
        .unwrap_or(package)
        .join("target")
        .join("bench-report")
}

/// A report with nothing measured yet.
fn new_report(args: &[String], mode: &str) -> Report {
    Report {
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command: match args {
            [] => COMMAND.to_owned(),
            args => format!("{COMMAND} -- {}", args.join(" ")),
        },
        mode: mode.to_owned(),
        machine: machine::describe(),
        postgres_version: String::new(),
        connection: String::new(),
        sizes: Vec::new(),
        notes: Vec::new(),
        creation: Vec::new(),
        load: None,
        dispatch: Vec::new(),
        peers: Vec::new(),
    }
}

//! The peers of the dispatch workloads (`--peers`): graphile-worker and
//! pg-boss, installed from npm at the versions `bench/peers/package-lock.json`
//! pins (`npm ci`) and run by `bench/peers/run.mjs` on the same server, in
//! the same run. Nothing of theirs is in the repository.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::BoxResult;

/// One-step jobs each peer mode enqueues and runs.
const JOBS: usize = 10_000;

/// A job queue in one of its modes: how fast it enqueued and ran the jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerResult {
    pub system: String,
    pub mode: String,
    pub jobs: u64,
    pub enqueue_jobs_per_second: f64,
    pub jobs_per_second: f64,
}

/// Runs every peer mode against `server_url`; `Ok(None)` with a message
/// printed when Node.js or npm is missing.
pub fn run(server_url: &str) -> BoxResult<Option<Vec<PeerResult>>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    let available = |program: &str| {
        Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if !available("node") || !available("npm") {
        println!("peers skipped: Node.js and npm are needed to run graphile-worker and pg-boss");
        return Ok(None);
    }
    println!("peers: npm ci in {}", dir.display());
    let installed = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()?;
    if !installed.success() {
        return Err(format!("npm ci in {} failed: {installed}", dir.display()).into());
    }
    let output = Command::new("node")
        .arg("run.mjs")
        .arg(server_url)
        .arg(JOBS.to_string())
        .current_dir(&dir)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "the peers failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let mut results = Vec::new();
    for line in String::from_utf8(output.stdout)?
        .lines()
        .filter(|l| l.starts_with('{'))
    {
        let result: PeerResult = serde_json::from_str(line)?;
        println!(
            "peers: {} ({}): {:.0} jobs/s, enqueue {:.0} jobs/s",
            result.system, result.mode, result.jobs_per_second, result.enqueue_jobs_per_second
        );
        results.push(result);
    }
    Ok(Some(results))
}

//! What the benchmark ran on, for the report.

use std::fs;

use crate::report::Machine;

/// Cores, CPU model, memory and operating system of this machine, read from
/// `/proc` and `/etc/os-release` where they exist.
pub fn describe() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        cpu_model: field(&cpuinfo, "model name", ':').unwrap_or_else(|| "unknown".to_owned()),
        memory_gib: field(&meminfo, "MemTotal", ':')
            .and_then(|total| total.trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0)),
        os: field(&os_release, "PRETTY_NAME", '=')
            .map(|name| name.trim_matches('"').to_owned())
            .unwrap_or_else(|| std::env::consts::OS.to_owned()),
    }
}

/// The value of the first `key<separator>value` line.
fn field(text: &str, key: &str, separator: char) -> Option<String> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(separator)?;
        (name.trim() == key).then(|| value.trim().to_owned())
    })
}

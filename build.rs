//! Rebuilds when a migration changes, and exposes a digest of the migrations
//! (`TASKER_MIGRATIONS_DIGEST`) so the test harness can tell a template
//! database migrated by an older set of files from a current one.

use std::fs;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let mut files = Vec::new();
    collect(Path::new("migrations"), &mut files);
    files.sort();
    // FNV-1a over every file's path and bytes: stable across builds and platforms.
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = fs::read(path).expect("read migration file");
        for byte in path.to_string_lossy().bytes().chain(bytes) {
            digest ^= u64::from(byte);
            digest = digest.wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=TASKER_MIGRATIONS_DIGEST={digest:016x}");
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read migrations directory") {
        let path = entry.expect("read migrations directory entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

//! Rebuilds when a migration changes, and exposes a digest of the migrations
//! (`TASKER_MIGRATIONS_DIGEST`) so the test harness can tell a template
//! database migrated by an older set of files from a current one. Writes the
//! Rust examples of the README and of the manual (`src/guide/`) to
//! `OUT_DIR/readme_<n>.rs`, for the test that runs each of them
//! (`tests/it/readme.rs`).

use std::fs;
use std::path::Path;

fn main() {
    readme_snippets();
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

/// Each ```` ```rust ```` block of the README, in order, as a file of its own.
fn readme_snippets() {
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR is set for build scripts");
    // The README, then the manual's pages in the order src/guide.rs lists them.
    let pages = [
        "README.md",
        "src/guide/readiness.md",
        "src/guide/workflows.md",
        "src/guide/scaling.md",
        "src/guide/semantics.md",
        "src/guide/rails.md",
        "src/guide/schema.md",
    ];
    let mut readme = String::new();
    for page in pages {
        println!("cargo:rerun-if-changed={page}");
        // A package built without its README has only the manual's examples.
        readme.push_str(&fs::read_to_string(page).unwrap_or_default());
        readme.push('\n');
    }
    let mut snippets: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match current.as_mut() {
            None if line.starts_with("```rust") => current = Some(String::new()),
            None => {}
            Some(_) if line.starts_with("```") => snippets.extend(current.take()),
            Some(code) => {
                code.push_str(line);
                code.push('\n');
            }
        }
    }
    for (index, code) in snippets.iter().enumerate() {
        let path = Path::new(&out_dir).join(format!("readme_{index}.rs"));
        fs::write(path, code).expect("write a README example");
    }
    println!("cargo:rustc-env=TASKER_README_SNIPPETS={}", snippets.len());
}

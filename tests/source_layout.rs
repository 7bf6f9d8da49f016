//! The layout rules the codebase keeps (docs/ARCHITECTURE.md): crates by
//! role with the root package only the binary's dispatch, no source file
//! over 700 lines (no exceptions), and imports that flow one way: no cycle
//! between the modules of any crate.

mod layout;

use std::path::{Path, PathBuf};

/// Every crate's `src`: the root package's and each of `crates/*`.
fn crate_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![root.join("src")];
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    out.extend(crates);
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_source_file_is_over_700_lines() {
    let mut files = Vec::new();
    for src in crate_sources() {
        rust_files(&src, &mut files);
    }
    assert!(files.len() > 40, "{} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > 700).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by responsibility: {long:?}");
}

/// The root package is the `kernal` binary and nothing else: the work lives
/// in the crates it dispatches to.
#[test]
fn the_root_package_is_only_the_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["src/main.rs"]);
}

#[test]
fn imports_flow_one_way_in_every_crate() {
    let mut found = Vec::new();
    for src in crate_sources() {
        let graph = layout::Graph::of_crate(&src);
        assert!(!graph.edges.is_empty(), "{}", src.display());
        for cycle in graph.cycles() {
            let names: Vec<String> = cycle.iter().map(layout::show).collect();
            let edges: Vec<String> = cycle
                .iter()
                .flat_map(|m| {
                    graph.edges[m]
                        .iter()
                        .filter(|t| cycle.contains(t))
                        .map(move |t| format!("{} -> {}", layout::show(m), layout::show(t)))
                })
                .collect();
            found.push(format!(
                "{}: [{}] via {}",
                src.display(),
                names.join(", "),
                edges.join("; ")
            ));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

/// The README's second command is the test command, and CI runs exactly it:
/// a newcomer runs what CI proves passes.
#[test]
fn ci_runs_the_readme_test_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let commands: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("    "))
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.split(" # ").next().unwrap_or("").trim())
        .collect();
    assert_eq!(
        commands.len(),
        2,
        "main command, test command: {commands:?}"
    );
    assert!(commands[0].contains("-- hub"), "{commands:?}");
    let test = commands[1];
    let run = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let execs: Vec<&str> = run
        .lines()
        .filter_map(|l| l.trim().strip_prefix("exec "))
        .collect();
    assert_eq!(
        execs,
        [test],
        ".ci/run must run exactly the README's test command"
    );
    assert!(
        run.lines().any(|l| l.trim() == "export CI=true"),
        "CI runs strict"
    );
    assert!(root.join(test.trim_start_matches("./")).exists(), "{test}");
}

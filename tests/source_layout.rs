//! The layout rule the codebase keeps: a source file over about 600 lines
//! says on its first line why it is one file (`// Over 600 lines: ...`).

use std::path::{Path, PathBuf};

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
fn long_source_files_say_why_on_their_first_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for krate in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 40, "{} files", files.len());
    let unexplained: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines = text.lines().count();
            let first = text.lines().next().unwrap_or("");
            (lines > 650 && !first.starts_with("// Over 600 lines: "))
                .then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "split these or give the reason on line 1: {unexplained:?}"
    );
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

//! `kernal harness`'s command line: the exit codes and what is printed.

use super::args::HarnessArgs;
use super::report::render;
use super::run::run;
use super::scenario;

/// The CLI: prints the table, writes the report, returns the exit code
/// (0 pass, 1 a criterion failed, 2 scenario or run error).
pub fn run_cli(args: HarnessArgs) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kernal harness: {e}");
            return 2;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(report) => {
            print!("{}", render(&report));
            if let Some(path) = &args.report {
                let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("kernal harness: cannot write {}: {e}", path.display());
                    return 2;
                }
            }
            if report.passed {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("kernal harness: {e}");
            2
        }
    }
}

/// `kernal harness --list`.
pub fn list_cli() -> i32 {
    for (n, d) in scenario::list() {
        println!("{n:<16} {d}");
    }
    0
}

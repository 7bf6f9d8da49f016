//! `kernal bench`'s command line: what is printed, and the exit code.

use super::args::BenchArgs;
use super::report::render;
use super::run::run;

/// The CLI: prints the figures (or one JSON object), returns the exit code.
pub fn run_cli(args: BenchArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kernal bench: {e}");
            return 1;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print!("{}", render(&r));
            }
            0
        }
        Err(e) => {
            eprintln!("kernal bench: {e}");
            1
        }
    }
}

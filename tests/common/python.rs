//! The Python side of the tests: one virtualenv under the target directory
//! with the `python/` package installed at the versions pinned in
//! `python/constraints.txt`, made from `KERNAL_PYTHON` or the system's
//! `/usr/bin/python3` with its site packages (where `.ci/run` installs
//! Debian's CPU build of PyTorch). Shared by the Python package's tests and
//! the live safetensors check, so nothing unpinned is installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn base_python() -> PathBuf {
    if let Ok(p) = std::env::var("KERNAL_PYTHON") {
        return PathBuf::from(p);
    }
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        system.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

pub fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The virtualenv's python with the package installed, made once per run.
pub fn python() -> &'static Path {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = PY.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernal-py");
        let py = dir.join("bin").join("python");
        if !py.exists() {
            run(
                Command::new(base_python())
                    .args(["-m", "venv", "--system-site-packages"])
                    .arg(&dir),
                "creating the virtualenv",
            )?;
        }
        run(
            Command::new(&py)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--constraint",
                ])
                .arg(repo().join("python/constraints.txt"))
                .arg(repo().join("python")),
            "pip install ./python",
        )?;
        Ok(py)
    });
    match r {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

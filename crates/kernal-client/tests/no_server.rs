//! The point of this crate: a trainer that depends on it does not build the
//! server. Its normal dependency tree (what a trainer's build compiles)
//! holds no actix, diesel, SQLite or OpenAPI crate.

use std::process::Command;

#[test]
fn a_trainer_built_on_this_crate_does_not_pull_in_the_server() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The build that runs this test has fetched everything, so offline
    // normally works; a registry cache kept elsewhere may need the index.
    let tree_cmd = |offline: bool| {
        let mut c = Command::new(&cargo);
        c.arg("tree");
        if offline {
            c.arg("--offline");
        }
        c.args([
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--package",
            "kernal-client",
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ])
        .output()
        .expect("cargo tree runs")
    };
    let out = match tree_cmd(true) {
        o if o.status.success() => o,
        _ => tree_cmd(false),
    };
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("kernal-core"), "{tree}");
    let server: Vec<&str> = tree
        .lines()
        .filter(|l| {
            let name = l.split_whitespace().next().unwrap_or("");
            name.starts_with("actix")
                || name.starts_with("diesel")
                || name == "libsqlite3-sys"
                || name.starts_with("utoipa")
        })
        .collect();
    assert!(
        server.is_empty(),
        "server crates in a trainer's tree: {server:?}"
    );
}

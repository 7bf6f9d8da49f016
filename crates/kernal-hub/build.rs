// Embedded migrations are compiled into the binary, so a change under
// `migrations/` must trigger a rebuild even when no Rust file changed.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}

// Rebuild when a migration is added or changed: `sqlx::migrate!` embeds them, and stable
// Rust cannot tell cargo which files a macro read.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

// sqlx::migrate! embeds ../migrations at compile time; rebuild when a migration is added
// or edited (cargo does not watch that directory by itself).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

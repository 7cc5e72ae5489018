//! `chaosnet` binary (being written).
fn main() {}

//! Generate benchmark and test data sets (deterministic from a seed).
fn main() {}

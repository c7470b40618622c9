//! The `omesh` binary: see `omesh --help`.

fn main() -> std::process::ExitCode {
    omesh::cli::main()
}

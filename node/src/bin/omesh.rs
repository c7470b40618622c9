//! The `omesh` binary: see `omesh --help`.

fn main() -> std::process::ExitCode {
    // glibc gives every thread its own malloc arena; with a dozen pipeline
    // threads passing megabyte buffers between them, freed memory piles up
    // per arena. Four arenas keep peak memory near the live set (measured:
    // 163 MB -> 77 MB on the benchmark's first backup, same speed).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    omesh::cli::main()
}

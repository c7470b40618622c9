//! `omesh version`, `omesh completions`, `omesh man`: what this binary is,
//! and the shell completions and man pages generated from its command
//! line definition (so they can never disagree with `--help`).

use crate::output::{CliError, ExitCode, JSON_VERSION, print_json};
use std::path::PathBuf;

/// What `omesh --version` prints: the version, the commit and the
/// formats, from the same facts as `omesh version`.
pub fn long_version() -> String {
    let v = view();
    format!(
        "{} (commit {}, built {}; store format {}, object format {}, protocol {})",
        v.version, v.commit, v.build_time, v.store_format, v.object_format, v.protocol
    )
}

#[derive(clap::Args, Debug)]
pub struct VersionArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What this binary is and which formats it reads and writes.
#[derive(serde::Serialize, Debug)]
pub struct VersionView {
    /// The omesh version.
    pub version: &'static str,
    /// The git commit it was built from ("unknown" outside a checkout).
    pub commit: &'static str,
    /// When it was built (SOURCE_DATE_EPOCH when that was set).
    pub build_time: String,
    /// The target triple.
    pub target: &'static str,
    /// The cargo profile (`release` for the package).
    pub profile: &'static str,
    /// The store format it writes.
    pub store_format: u32,
    /// The oldest store format it reads (and upgrades).
    pub store_format_min: u32,
    /// The format of trees, content lists and snapshot records.
    pub object_format: u8,
    /// The mesh protocol version.
    pub protocol: u16,
    /// The TLS ALPN name of that protocol (peers must agree on it).
    pub alpn: String,
}

pub fn view() -> VersionView {
    let secs: i64 = env!("OMESH_BUILD_EPOCH").parse().unwrap_or(0);
    VersionView {
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("OMESH_GIT_COMMIT"),
        build_time: omesh_core::time::rfc3339_ns(secs.saturating_mul(1_000_000_000)),
        target: env!("OMESH_BUILD_TARGET"),
        profile: env!("OMESH_BUILD_PROFILE"),
        store_format: omesh_core::store::STORE_VERSION,
        store_format_min: 1,
        object_format: omesh_core::snapshot::FORMAT_V1,
        protocol: omesh_proto::PROTOCOL_VERSION,
        alpn: String::from_utf8_lossy(omesh_proto::ALPN).into_owned(),
    }
}

pub fn run(a: VersionArgs) -> Result<ExitCode, CliError> {
    let v = view();
    if a.json {
        print_json("version", &v)?;
        return Ok(ExitCode::Ok);
    }
    println!("omesh {}", v.version);
    println!("commit:        {}", v.commit);
    println!("built:         {} ({}, {})", v.build_time, v.target, v.profile);
    println!("store format:  {} (reads {} to {})", v.store_format, v.store_format_min, v.store_format);
    println!("object format: {}", v.object_format);
    println!("protocol:      {} (ALPN {})", v.protocol, v.alpn);
    println!("json_version:  {JSON_VERSION} (the --json schemas, docs/cli.md)");
    Ok(ExitCode::Ok)
}

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Write the completion script for `shell` to stdout.
pub fn completions(a: CompletionsArgs, cmd: &mut clap::Command) -> Result<ExitCode, CliError> {
    use std::io::Write;
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, cmd, "omesh", &mut buf);
    match std::io::stdout().lock().write_all(&buf) {
        // `omesh completions bash | head` is not an error
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::failed(format!("writing to stdout: {e}")))
        }
        _ => Ok(ExitCode::Ok),
    }
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory to write omesh.1 and one page per subcommand
    /// (omesh-backup.1, omesh-key-export.1, ...) into; created if missing.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// Write a man page for the command and every subcommand into `dir`.
pub fn man(a: ManArgs, cmd: clap::Command) -> Result<ExitCode, CliError> {
    std::fs::create_dir_all(&a.dir).map_err(|e| CliError::failed(format!("creating {}: {e}", a.dir.display())))?;
    let mut n = 0;
    clap_mangen::generate_to(cmd, &a.dir)
        .map_err(|e| CliError::failed(format!("writing man pages into {}: {e}", a.dir.display())))?;
    for e in std::fs::read_dir(&a.dir).map_err(|e| CliError::failed(format!("{}: {e}", a.dir.display())))? {
        let e = e.map_err(|e| CliError::failed(format!("{}: {e}", a.dir.display())))?;
        if e.file_name().to_string_lossy().ends_with(".1") {
            n += 1;
        }
    }
    eprintln!("wrote {n} man pages into {}", a.dir.display());
    Ok(ExitCode::Ok)
}

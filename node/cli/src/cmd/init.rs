//! `omesh init`

use crate::output::{CliError, ExitCode, print_json};
use omesh_core::chunker::ChunkerParams;
use omesh_core::store::{InitOptions, Store};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Directory for the new store (must not exist, or be empty).
    #[arg(long, short = 's', env = "OMESH_STORE", value_name = "DIR")]
    pub store: PathBuf,
    /// Write the key here instead of DIR/key (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Source name recorded in snapshots (default: this host's name).
    #[arg(long)]
    pub source: Option<String>,
    /// zstd compression level for new data, 0 (off) to 19.
    #[arg(long, default_value_t = omesh_core::store::config::DEFAULT_COMPRESSION, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub compression: i32,
    /// Pack file size in MiB (larger packs mean fewer files and S3 objects).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub pack_size_mib: u64,
    /// Pack size in bytes (tests); overrides --pack-size-mib.
    #[arg(long, hide = true)]
    pub pack_size_bytes: Option<u64>,
    /// Chunk sizes as MIN,AVG,MAX bytes (advanced; see docs/store.md).
    #[arg(long, value_name = "MIN,AVG,MAX")]
    pub chunk_sizes: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InitArgs) -> Result<ExitCode, CliError> {
    let source = a.source.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    });
    let mut opts = InitOptions::new(&source);
    opts.key_file = a.key_file.clone();
    opts.compression = a.compression;
    opts.pack_bytes = a.pack_size_bytes.unwrap_or(a.pack_size_mib * 1024 * 1024);
    if let Some(s) = &a.chunk_sizes {
        let v: Vec<u32> = s
            .split(',')
            .map(|x| x.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| CliError::usage(format!("--chunk-sizes {s:?}: expected three byte counts MIN,AVG,MAX")))?;
        if v.len() != 3 {
            return Err(CliError::usage(format!("--chunk-sizes {s:?}: expected three byte counts MIN,AVG,MAX")));
        }
        opts.chunker = ChunkerParams { min_bytes: v[0], avg_bytes: v[1], max_bytes: v[2] };
        opts.chunker.validate().map_err(CliError::usage)?;
    }
    let store = Store::init(&a.store, opts)?;
    let key_path = a.key_file.clone().unwrap_or_else(|| a.store.join("key"));
    if a.json {
        print_json(
            "init",
            &serde_json::json!({
                "store": a.store.display().to_string(),
                "store_id": store.config().store_id,
                "source": store.config().source,
                "key_file": key_path.display().to_string(),
                "key_id": store.config().key_id,
            }),
        )?;
    } else {
        println!("created store {} for source {:?}", a.store.display(), store.config().source);
        println!("key written to {} (key id {})", key_path.display(), store.config().key_id);
        println!("Without this key no snapshot can be restored. Keep a copy off this server:");
        println!(
            "  omesh key export --store {} --out /safe/place/omesh-{}.key",
            a.store.display(),
            store.config().source
        );
    }
    Ok(ExitCode::Ok)
}

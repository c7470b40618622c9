//! `omesh demo`: a self-contained run of the main job in a temp directory.

use super::output::{CliError, ExitCode, bytes};
use crate::backup::{self, BackupOptions, Progress};
use crate::restore::{self, RestoreOptions, RestoreProgress};
use crate::store::{InitOptions, Store};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Size of the generated sample data in MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Keep the temporary directory for inspection.
    #[arg(long)]
    pub keep: bool,
}

pub fn run(a: DemoArgs) -> Result<ExitCode, CliError> {
    let tmp = tempfile::Builder::new()
        .prefix("omesh-demo-")
        .tempdir()
        .map_err(|e| CliError::failed(format!("creating a temporary directory: {e}")))?;
    let root = tmp.path().to_path_buf();
    let data = root.join("data");
    println!("omesh demo in {}", root.display());
    let total = crate::sample::generate(&data, a.size_mib * 1024 * 1024, 1)
        .map_err(|e| CliError::failed(format!("generating sample data: {e}")))?;
    println!("1. generated {} of sample data in {}", bytes(total), data.display());
    let store = Store::init(&root.join("store"), InitOptions::new("demo-node-1"))?;
    let s1 = backup::run(
        &store,
        &BackupOptions { paths: vec![data.clone()], ..Default::default() },
        Arc::new(Progress::default()),
    )
    .map_err(|e| CliError::failed(e.to_string()))?;
    println!(
        "2. first backup: snapshot {} read {}, stored {} ({:.1}x smaller) in {:.2}s",
        &s1.snapshot[..8],
        bytes(s1.bytes_read),
        bytes(s1.bytes_added),
        s1.bytes as f64 / s1.bytes_added.max(1) as f64,
        s1.seconds
    );
    crate::sample::mutate(&data, 2).map_err(|e| CliError::failed(e.to_string()))?;
    let s2 = backup::run(
        &store,
        &BackupOptions { paths: vec![data.clone()], ..Default::default() },
        Arc::new(Progress::default()),
    )
    .map_err(|e| CliError::failed(e.to_string()))?;
    println!(
        "3. after small edits: snapshot {} read {} ({} files unchanged, not read), added only {}",
        &s2.snapshot[..8],
        bytes(s2.bytes_read),
        s2.files_unchanged,
        bytes(s2.bytes_added)
    );
    let target = root.join("restore");
    let id = omesh_proto::ObjectId::from_hex(&s2.snapshot).expect("own id");
    let r = restore::run(
        &store,
        &id,
        &RestoreOptions { target: target.clone(), ..Default::default() },
        Arc::new(RestoreProgress::default()),
    )
    .map_err(|e| CliError::failed(e.to_string()))?;
    let restored = target.join(data.strip_prefix("/").unwrap_or(&data));
    let same = dirs_equal(&data, &restored).map_err(|e| CliError::failed(e.to_string()))?;
    println!(
        "4. restored {} files ({}) to {} in {:.2}s: {}",
        r.files,
        bytes(r.bytes_written),
        restored.display(),
        r.seconds,
        if same { "byte-identical" } else { "MISMATCH" }
    );
    let rep = crate::verify::run(&store, true, |_| {})?;
    println!(
        "5. verify --read-data: {} objects in {} packs, {}",
        rep.objects_read,
        rep.packs_read,
        if rep.ok() { "no errors" } else { "DAMAGE FOUND" }
    );
    if a.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    Ok(if same && rep.ok() && r.errors.is_empty() { ExitCode::Ok } else { ExitCode::Failed })
}

/// Compare two trees: names, types, file bytes, symlink targets.
pub fn dirs_equal(a: &std::path::Path, b: &std::path::Path) -> std::io::Result<bool> {
    let ma = std::fs::symlink_metadata(a)?;
    let mb = match std::fs::symlink_metadata(b) {
        Ok(m) => m,
        Err(_) => return Ok(false),
    };
    if ma.file_type() != mb.file_type() {
        return Ok(false);
    }
    if ma.is_dir() {
        let mut na: Vec<_> = std::fs::read_dir(a)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        let mut nb: Vec<_> = std::fs::read_dir(b)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        na.sort();
        nb.sort();
        if na != nb {
            return Ok(false);
        }
        for n in na {
            if !dirs_equal(&a.join(&n), &b.join(&n))? {
                return Ok(false);
            }
        }
        Ok(true)
    } else if ma.file_type().is_symlink() {
        Ok(std::fs::read_link(a)? == std::fs::read_link(b)?)
    } else if ma.is_file() {
        Ok(ma.len() == mb.len() && std::fs::read(a)? == std::fs::read(b)?)
    } else {
        Ok(true)
    }
}

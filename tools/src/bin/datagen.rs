//! `omesh-datagen`: deterministic benchmark data sets.
//!
//! `omesh-datagen tree DIR` writes a server-like tree (by default about
//! 1.5 GiB in 50,000+ files: many small configs and sources, medium mixed
//! text/binary files, a few large database-like files with text, random and
//! zero pages, and 5% duplicates). `omesh-datagen mutate DIR` then applies
//! the "day of changes" edit set to about 1% of the files: inserts that
//! shift data, in-place overwrites, appends, renames, deletes and new files.
//! Same seed, same bytes, on any machine.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use omesh_core::sample::Rng;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(about = "Generate deterministic benchmark data for omesh and its peers")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a new tree.
    Tree {
        /// Output directory (created).
        dir: PathBuf,
        /// Number of small files (1-16 KiB).
        #[arg(long, default_value_t = 45_000)]
        small: usize,
        /// Number of medium files (16-512 KiB).
        #[arg(long, default_value_t = 5_000)]
        medium: usize,
        /// Number of large database-like files (8-64 MiB).
        #[arg(long, default_value_t = 20)]
        large: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Apply a day of changes to about 1% of the files.
    Mutate {
        /// Tree written by `tree`.
        dir: PathBuf,
        /// Seed (use a new one per day).
        #[arg(long, default_value_t = 2)]
        seed: u64,
    },
}

fn write(p: &Path, data: &[u8]) -> Result<()> {
    fs::write(p, data).with_context(|| format!("writing {}", p.display()))
}

fn tree(dir: &Path, small: usize, medium: usize, large: usize, seed: u64) -> Result<u64> {
    let mut rng = Rng::new(seed);
    let mut total = 0u64;
    let mut previous: Vec<Vec<u8>> = Vec::new();
    let per_dir = 200;
    for i in 0..small {
        let d = dir.join(format!("small/{:03}/{:02}", i / (per_dir * 20), (i / per_dir) % 20));
        if i % per_dir == 0 {
            fs::create_dir_all(&d)?;
        }
        let n = 1024 + (rng.next_u64() % (15 * 1024)) as usize;
        let data = if i % 20 == 19 && !previous.is_empty() {
            previous[(rng.next_u64() as usize) % previous.len()].clone()
        } else {
            rng.text(n)
        };
        total += data.len() as u64;
        write(&d.join(format!("file-{i:06}.conf")), &data)?;
        if previous.len() < 64 {
            previous.push(data);
        }
    }
    for i in 0..medium {
        let d = dir.join(format!("medium/{:03}", i / per_dir));
        if i % per_dir == 0 {
            fs::create_dir_all(&d)?;
        }
        let n = 16 * 1024 + (rng.next_u64() % (496 * 1024)) as usize;
        let data = if i % 20 == 19 {
            let src = dir.join(format!("medium/{:03}/blob-{:06}.dat", (i - 1) / per_dir, i - 1));
            fs::read(src)?
        } else if i % 2 == 0 {
            rng.bytes(n)
        } else {
            rng.text(n)
        };
        total += data.len() as u64;
        write(&d.join(format!("blob-{i:06}.dat")), &data)?;
    }
    fs::create_dir_all(dir.join("large"))?;
    for i in 0..large {
        let mib = 8 + rng.next_u64() % 57;
        let p = dir.join(format!("large/db-{i:02}.db"));
        let mut f = fs::File::create(&p)?;
        for page in 0..mib * 16 {
            let kind = rng.next_u64() % 10;
            let data = match kind {
                0..=3 => rng.bytes(65536),
                4..=7 => rng.text(65536),
                _ => vec![0u8; 65536],
            };
            let _ = page;
            f.write_all(&data)?;
        }
        total += mib << 20;
    }
    Ok(total)
}

fn all_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn mutate(dir: &Path, seed: u64) -> Result<u64> {
    let mut rng = Rng::new(seed);
    let files = all_files(dir)?;
    let n = (files.len() / 100).max(6);
    let mut touched = 0u64;
    for k in 0..n {
        let p = &files[(rng.next_u64() as usize) % files.len()];
        let Ok(mut data) = fs::read(p) else { continue };
        let edit = 4096.min(data.len().max(1));
        match k % 6 {
            0 => {
                let at = (rng.next_u64() as usize) % data.len().max(1);
                data.splice(at..at, rng.text(edit));
                write(p, &data)?;
            }
            1 => {
                let at = (rng.next_u64() as usize) % (data.len() - edit + 1).max(1);
                let new = rng.bytes(edit.min(data.len()));
                data[at..at + new.len()].copy_from_slice(&new);
                write(p, &data)?;
            }
            2 => {
                fs::OpenOptions::new().append(true).open(p)?.write_all(&rng.text(edit))?;
            }
            3 => {
                fs::rename(p, p.with_extension("renamed"))?;
                continue;
            }
            4 => {
                fs::remove_file(p)?;
                continue;
            }
            _ => {
                write(&p.with_extension(format!("new{k}")), &rng.text(edit))?;
            }
        }
        touched += edit as u64;
    }
    Ok(touched)
}

fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Tree { dir, small, medium, large, seed } => {
            let total = tree(&dir, small, medium, large, seed)?;
            println!("{{\"bytes\": {total}, \"files\": {}}}", small + medium + large);
        }
        Cmd::Mutate { dir, seed } => {
            let touched = mutate(&dir, seed)?;
            println!("{{\"touched_bytes\": {touched}}}");
        }
    }
    Ok(())
}

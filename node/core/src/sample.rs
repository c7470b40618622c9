//! Deterministic sample data for `omesh demo` and tests: a small tree that
//! looks like a server's data (logs, a database-like file, configs,
//! duplicates, a sparse file, symlinks), generated from a seed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;

/// A tiny deterministic PRNG (xorshift64*), enough for test data.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Fill with random bytes.
    pub fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    /// Random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
    /// Text-like, compressible bytes.
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "order",
            "patient",
            "sensor",
            "value",
            "ok",
            "retry",
            "store",
            "shelf",
            "temperature",
            "batch",
            "12.5",
            "2026-11-25",
            "INFO",
            "WARN",
            "id=",
            "qty=",
        ];
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            let w = WORDS[(self.next_u64() % 16) as usize];
            v.extend_from_slice(w.as_bytes());
            v.push(if self.next_u64().is_multiple_of(12) { b'\n' } else { b' ' });
        }
        v.truncate(n);
        v
    }
}

/// Write a sample tree of roughly `total_bytes` under `dir`.
pub fn generate(dir: &Path, total_bytes: u64, seed: u64) -> std::io::Result<u64> {
    let mut rng = Rng::new(seed);
    let mut written = 0u64;
    fs::create_dir_all(dir.join("db"))?;
    fs::create_dir_all(dir.join("logs/archive"))?;
    fs::create_dir_all(dir.join("etc"))?;
    fs::create_dir_all(dir.join("media"))?;
    // a "database": half random pages, half text
    let db = (total_bytes / 3) as usize;
    let mut f = fs::File::create(dir.join("db/store.db"))?;
    let mut left = db;
    while left > 0 {
        let n = left.min(64 * 1024);
        let page = if rng.next_u64().is_multiple_of(2) { rng.bytes(n) } else { rng.text(n) };
        f.write_all(&page)?;
        left -= n;
    }
    written += db as u64;
    // logs
    let logs = (total_bytes / 3) as usize;
    let nlogs = 20;
    for i in 0..nlogs {
        let sub = if i % 2 == 0 { "logs" } else { "logs/archive" };
        let data = rng.text(logs / nlogs);
        fs::write(dir.join(sub).join(format!("app-{i:03}.log")), &data)?;
        written += data.len() as u64;
    }
    // media: random, incompressible, with one duplicate
    let media = (total_bytes / 6) as usize;
    let m = rng.bytes(media);
    fs::write(dir.join("media/photo-1.jpg"), &m)?;
    fs::write(dir.join("media/photo-1-copy.jpg"), &m)?;
    written += 2 * media as u64;
    // configs, symlinks, a sparse file
    for i in 0..50 {
        let n = 200 + (rng.next_u64() % 2000) as usize;
        let data = rng.text(n);
        fs::write(dir.join("etc").join(format!("conf-{i:02}.toml")), &data)?;
        written += data.len() as u64;
    }
    let _ = symlink("conf-00.toml", dir.join("etc/current.toml"));
    let _ = symlink("/nonexistent/target", dir.join("etc/dangling"));
    let sparse = fs::File::create(dir.join("db/sparse.img"))?;
    sparse.set_len(64 * 1024 * 1024)?;
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"header", 0)?;
    sparse.write_all_at(b"middle", 32 * 1024 * 1024)?;
    Ok(written)
}

/// Apply small edits to a generated tree (for "backup after a change").
pub fn mutate(dir: &Path, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng::new(seed);
    let p = dir.join("logs/app-000.log");
    let mut data = fs::read(&p)?;
    let at = (rng.next_u64() as usize) % data.len().max(1);
    let ins = rng.text(1000);
    data.splice(at..at, ins);
    fs::write(&p, data)?;
    let mut f = fs::OpenOptions::new().append(true).open(dir.join("logs/app-002.log"))?;
    f.write_all(&rng.text(5000))?;
    fs::write(dir.join("etc/new.toml"), rng.text(300))?;
    Ok(())
}

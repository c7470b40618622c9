//! Keyed content-defined chunking.
//!
//! FastCDC 2020 (the `fastcdc` crate's `cut_gear`) driven with a *secret*
//! 256-entry gear table derived from the source's key (see
//! [`crate::crypto::Keys::gear`]). With the public table, chunk boundaries of
//! a known file are predictable and the sizes of stored objects can reveal
//! whether that file is in a backup; the 2025 attacks on restic and kopia
//! recovered weakly keyed parameters from observed sizes. A full random table
//! (not a 64-bit XOR seed) plus size padding in [`crate::crypto`] closes that.
//!
//! Sizes: see [`ChunkerParams::default`] and `docs/store.md` for the
//! measurement behind them.

use fastcdc::v2020::{self, Normalization};
use std::io::{self, Read};

/// Chunk size bounds. Stored in the store config; changing them on an
/// existing source only costs deduplication, never correctness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk (except a file's last).
    pub min_bytes: u32,
    /// Target average.
    pub avg_bytes: u32,
    /// Largest chunk.
    pub max_bytes: u32,
}

/// Largest chunk we allow anyone to configure: keeps every object well under
/// the record and plaintext limits.
pub const MAX_CHUNK_BYTES: u32 = 8 * 1024 * 1024;

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB: measured on the benchmark data (see
    /// `BENCHMARKS.md`, "chunk size"), 1 MiB average keeps the store within
    /// a few percent of the dedup of 256 KiB chunks after small edits while
    /// holding 4x fewer index entries and objects to replicate.
    fn default() -> Self {
        ChunkerParams { min_bytes: 256 * 1024, avg_bytes: 1024 * 1024, max_bytes: 4 * 1024 * 1024 }
    }
}

impl ChunkerParams {
    /// Check the bounds against what FastCDC and the record format accept.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.min_bytes as usize >= v2020::MINIMUM_MIN
            && self.min_bytes as usize <= v2020::MINIMUM_MAX
            && self.avg_bytes as usize >= v2020::AVERAGE_MIN
            && self.avg_bytes as usize <= v2020::AVERAGE_MAX
            && self.max_bytes as usize >= v2020::MAXIMUM_MIN
            && self.max_bytes <= MAX_CHUNK_BYTES
            && self.min_bytes < self.avg_bytes
            && self.avg_bytes < self.max_bytes
            && self.min_bytes.is_multiple_of(2)
            && self.avg_bytes.is_multiple_of(2)
            && self.max_bytes.is_multiple_of(2);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunker sizes min={} avg={} max={} are invalid: need even sizes with {} <= min < avg < max <= {}, avg <= {}",
                self.min_bytes,
                self.avg_bytes,
                self.max_bytes,
                v2020::MINIMUM_MIN,
                MAX_CHUNK_BYTES,
                v2020::AVERAGE_MAX
            ))
        }
    }
}

/// A keyed FastCDC chunker. Cheap to clone (the gear tables are shared).
#[derive(Clone)]
pub struct Chunker {
    gear: std::sync::Arc<([u64; 256], [u64; 256])>,
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// A chunker with the given secret gear table.
    pub fn new(gear: &[u64; 256], params: ChunkerParams) -> Self {
        let mut ls = [0u64; 256];
        for (o, g) in ls.iter_mut().zip(gear.iter()) {
            *o = g << 1;
        }
        let (mask_s, mask_l) = v2020::select_masks(params.avg_bytes as usize, Normalization::Level1);
        Chunker { gear: std::sync::Arc::new((*gear, ls)), params, mask_s, mask_l }
    }

    /// Parameters in use.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the next chunk at the start of `data`. When `data` is
    /// shorter than the maximum chunk and more input may follow, the caller
    /// must supply more bytes first (see [`Chunker::for_each_chunk`]).
    pub fn cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        let (_, len) = v2020::cut_gear(
            data,
            p.min_bytes as usize,
            p.avg_bytes as usize,
            p.max_bytes as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear.0,
            &self.gear.1,
        );
        len
    }

    /// Split everything `reader` yields (up to `limit` bytes) into chunks,
    /// calling `f` with each. Memory is bounded by twice the maximum chunk
    /// (less for inputs known to be smaller), and each byte is copied at
    /// most twice (into the buffer, into its chunk).
    pub fn for_each_chunk<R: Read>(
        &self,
        reader: R,
        limit: u64,
        f: impl FnMut(Vec<u8>) -> io::Result<()>,
    ) -> io::Result<u64> {
        self.for_each_chunk_with(&mut Vec::new(), reader, limit, f)
    }

    /// As [`Chunker::for_each_chunk`], reusing `scratch` as the read buffer
    /// (a reader thread keeps one across files instead of allocating per
    /// file).
    pub fn for_each_chunk_with<R: Read>(
        &self,
        scratch: &mut Vec<u8>,
        mut reader: R,
        limit: u64,
        mut f: impl FnMut(Vec<u8>) -> io::Result<()>,
    ) -> io::Result<u64> {
        let max = self.params.max_bytes as usize;
        // the cut point needs up to `max` bytes of lookahead; a quarter more
        // keeps refills (and the copies they make) infrequent
        let cap = (max + max / 4).min(limit.saturating_add(1).min(usize::MAX as u64) as usize).max(1);
        if scratch.len() < cap {
            scratch.resize(cap, 0);
        }
        let buf = &mut scratch[..cap];
        let (mut start, mut end) = (0usize, 0usize);
        let mut total: u64 = 0;
        let mut eof = false;
        loop {
            if !eof && end - start < max {
                if start > 0 {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                while !eof && end < cap {
                    let want = (cap - end).min((limit - total).min(usize::MAX as u64) as usize);
                    if want == 0 {
                        eof = true;
                        break;
                    }
                    let n = match reader.read(&mut buf[end..end + want]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    if n == 0 {
                        eof = true;
                    }
                    end += n;
                    total += n as u64;
                }
            }
            if start == end {
                return Ok(total);
            }
            let cut = self.cut(&buf[start..end]);
            f(buf[start..start + cut].to_vec())?;
            start += cut;
        }
    }

    /// Bytes above which a file needs the full read buffer.
    pub fn large_file_bytes(&self) -> u64 {
        self.params.max_bytes as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn small() -> ChunkerParams {
        ChunkerParams { min_bytes: 2048, avg_bytes: 8192, max_bytes: 32768 }
    }

    fn chunks(c: &Chunker, data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = vec![];
        c.for_each_chunk(data, u64::MAX, |ch| {
            out.push(ch);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn concatenation_is_identity_and_sizes_are_bounded() {
        let c = Chunker::new(&[0x1234_5678_9abc_def1; 256].map(|x| x), small());
        let gear: [u64; 256] = std::array::from_fn(|i| (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let c2 = Chunker::new(&gear, small());
        for c in [c, c2] {
            for len in [0usize, 1, 2047, 2048, 8192, 32767, 32768, 32769, 300_000] {
                let data = pseudo_random(len, len as u64 + 7);
                let ch = chunks(&c, &data);
                assert_eq!(ch.concat(), data);
                for (i, x) in ch.iter().enumerate() {
                    assert!(x.len() <= 32768);
                    if i + 1 < ch.len() {
                        assert!(x.len() >= 2048, "chunk {i} of {len} is {}", x.len());
                    }
                }
            }
        }
    }

    #[test]
    fn insertion_only_changes_nearby_chunks() {
        let gear: [u64; 256] = std::array::from_fn(|i| (i as u64 + 3).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let c = Chunker::new(&gear, small());
        let data = pseudo_random(1_000_000, 42);
        let mut edited = data.clone();
        edited.splice(500_000..500_000, b"inserted bytes".iter().copied());
        let a: std::collections::HashSet<_> = chunks(&c, &data).into_iter().collect();
        let b = chunks(&c, &edited);
        let new = b.iter().filter(|x| !a.contains(*x)).count();
        assert!(new <= 3, "{new} chunks changed after one small insert");
    }

    #[test]
    fn different_keys_cut_differently() {
        let g1: [u64; 256] = std::array::from_fn(|i| (i as u64 + 3).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let g2: [u64; 256] = std::array::from_fn(|i| (i as u64 + 5).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let data = pseudo_random(500_000, 1);
        let a: Vec<usize> = chunks(&Chunker::new(&g1, small()), &data).iter().map(|c| c.len()).collect();
        let b: Vec<usize> = chunks(&Chunker::new(&g2, small()), &data).iter().map(|c| c.len()).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn validates_params() {
        assert!(ChunkerParams::default().validate().is_ok());
        assert!(ChunkerParams { min_bytes: 10, avg_bytes: 20, max_bytes: 30 }.validate().is_err());
        assert!(ChunkerParams { min_bytes: 4096, avg_bytes: 2048, max_bytes: 65536 }.validate().is_err());
    }
}

//! Units in configuration files: byte sizes.

use serde::{Deserialize, Deserializer};

/// A byte size written as an integer or a string like "500 GiB".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parse "123", "10 MiB", "1.5 GB", "200M" with the `bytesize` crate.
    /// A bare one-letter unit (K, M, G, T) is binary, as omesh always read
    /// it (bytesize alone would read it as decimal).
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        let unit = match unit.to_ascii_lowercase().as_str() {
            "k" | "m" | "g" | "t" => format!("{}iB", unit.to_ascii_uppercase()),
            _ => unit.to_string(),
        };
        let examples = "examples: 1048576, \"512 MiB\", \"2 TiB\"; units B, KiB, MiB, GiB, TiB, KB, MB, GB, TB";
        if num.is_empty() {
            return Err(format!("{t:?} is not a size ({examples})"));
        }
        format!("{num} {unit}")
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|e| format!("{t:?} is not a size: {e} ({examples})"))
    }
}

/// Free space to keep on a disk: a size ("20 GiB") or a share of the file
/// system ("5%").
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FreeFloor {
    /// At least this many bytes.
    Bytes(u64),
    /// At least this percentage of the file system's size.
    Percent(f64),
}

impl Default for FreeFloor {
    /// 5% of the file system: a node's own backups and the file system
    /// itself keep room whoever stores here.
    fn default() -> Self {
        FreeFloor::Percent(5.0)
    }
}

impl FreeFloor {
    /// Parse "5%", "0", "20 GiB".
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("{t:?} is not a percentage (example: \"5%\")"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{t:?} must be between 0% and 100%"));
            }
            return Ok(FreeFloor::Percent(v));
        }
        ByteSize::parse(t).map(|b| FreeFloor::Bytes(b.0)).map_err(|e| format!("{e}; or a percentage such as \"5%\""))
    }

    /// The floor in bytes on a file system of `total` bytes.
    pub fn bytes(&self, total: u64) -> u64 {
        match *self {
            FreeFloor::Bytes(b) => b,
            FreeFloor::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

impl<'de> Deserialize<'de> for FreeFloor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, FreeFloor::Bytes, FreeFloor::parse)
    }
}

/// A setting written as a bare number of bytes or as text to parse.
fn number_or_text<'de, D: Deserializer<'de>, T>(
    d: D,
    number: impl FnOnce(u64) -> T,
    text: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(number(n)),
        Raw::S(s) => text(&s).map_err(serde::de::Error::custom),
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, ByteSize, ByteSize::parse)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn free_floor() {
        assert_eq!(super::FreeFloor::parse("5%").unwrap().bytes(1000), 50);
        assert_eq!(super::FreeFloor::parse("0").unwrap().bytes(1000), 0);
        assert_eq!(super::FreeFloor::parse("1 KiB").unwrap(), super::FreeFloor::Bytes(1024));
        assert!(super::FreeFloor::parse("150%").unwrap_err().contains("between"));
        assert!(super::FreeFloor::parse("lots").is_err());
        assert_eq!(super::FreeFloor::default().bytes(200), 10);
    }

    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("512 MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("1.5GB").unwrap().0, 1_500_000_000);
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert_eq!(ByteSize::parse("2 TiB").unwrap().0, 2 << 40);
        assert_eq!(ByteSize::parse("200M").unwrap().0, 200 << 20);
        assert_eq!(ByteSize::parse("16k").unwrap().0, 16 << 10);
        assert_eq!(ByteSize::parse("123").unwrap().0, 123);
        assert_eq!(ByteSize::parse("8 KB").unwrap().0, 8000);
        assert!(ByteSize::parse("MiB").is_err());
    }
}

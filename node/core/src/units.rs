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

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
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

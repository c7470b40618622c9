//! `--exclude GLOB` matching.
//!
//! A pattern without '/' matches an entry's name at any depth (`*.tmp`,
//! `node_modules`); a pattern with '/' matches the whole absolute path
//! (`/var/cache/**`, `/home/*/Downloads`). An excluded directory is skipped
//! with everything below it.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Compiled exclude patterns.
#[derive(Clone)]
pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    empty: bool,
}

impl Excludes {
    /// Compile; an invalid pattern is an error naming it.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let g = GlobBuilder::new(p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("invalid --exclude pattern {p:?}: {e}"))?;
            if p.contains('/') {
                paths.add(g);
            } else {
                names.add(g);
            }
        }
        Ok(Excludes {
            names: names.build().map_err(|e| e.to_string())?,
            paths: paths.build().map_err(|e| e.to_string())?,
            empty: patterns.is_empty(),
        })
    }

    /// Whether `path` (absolute) with file name `name` is excluded.
    pub fn is_excluded(&self, path: &Path, name: &[u8]) -> bool {
        if self.empty {
            return false;
        }
        self.names.is_match(std::ffi::OsStr::from_bytes(name)) || self.paths.is_match(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_path_patterns() {
        let e = Excludes::new(&["*.tmp".into(), "/data/cache/**".into(), "/data/*/skip".into()]).unwrap();
        assert!(e.is_excluded(Path::new("/x/y/a.tmp"), b"a.tmp"));
        assert!(!e.is_excluded(Path::new("/x/y/a.tmpx"), b"a.tmpx"));
        assert!(e.is_excluded(Path::new("/data/cache/z"), b"z"));
        assert!(e.is_excluded(Path::new("/data/u/skip"), b"skip"));
        assert!(!e.is_excluded(Path::new("/data/u/v/skip"), b"skip"));
        assert!(Excludes::new(&["[".into()]).is_err());
    }
}

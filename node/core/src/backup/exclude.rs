//! `--exclude GLOB` matching, and the directories excluded by what they
//! contain (`--exclude-if-present NAME`, `--exclude-caches`).
//!
//! A pattern without '/' matches an entry's name at any depth (`*.tmp`,
//! `node_modules`); a pattern with '/' matches the whole absolute path
//! (`/var/cache/**`, `/home/*/Downloads`). An excluded directory is skipped
//! with everything below it.
//!
//! A cache directory is one holding a `CACHEDIR.TAG` file that starts with
//! the signature of the Cache Directory Tagging Specification
//! (<https://bford.info/cachedir/>), as borg, restic and tar read it.

/// The first bytes of a valid CACHEDIR.TAG.
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The patterns of an exclude file (`--exclude-file`): one per line,
/// surrounding spaces trimmed, blank lines and `#` comments skipped.
pub fn read_exclude_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--exclude-file {}: {e}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect())
}

/// Compiled exclude patterns.
#[derive(Clone)]
pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    empty: bool,
    /// a directory holding an entry of one of these names is excluded
    if_present: Vec<std::ffi::OsString>,
    /// a directory holding a valid CACHEDIR.TAG is excluded
    caches: bool,
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
            if_present: Vec::new(),
            caches: false,
        })
    }

    /// Also exclude directories holding an entry named one of `names`
    /// (a plain name, no '/'), and with `caches` those holding a valid
    /// CACHEDIR.TAG.
    pub fn with_markers(mut self, names: &[String], caches: bool) -> Result<Self, String> {
        for n in names {
            if n.is_empty() || n.contains('/') || n == "." || n == ".." {
                return Err(format!("--exclude-if-present {n:?}: give a file name (no '/'), e.g. .nobackup"));
            }
            self.if_present.push(n.into());
        }
        self.caches = caches;
        Ok(self)
    }

    /// Why the directory at `dir` is excluded by what it holds, if it is.
    pub fn excluded_dir(&self, dir: &Path) -> Option<String> {
        for n in &self.if_present {
            if std::fs::symlink_metadata(dir.join(n)).is_ok() {
                return Some(format!("it holds {}", n.to_string_lossy()));
            }
        }
        if self.caches {
            use std::io::Read;
            let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
            let tag = dir.join("CACHEDIR.TAG");
            // a regular file only: a FIFO named CACHEDIR.TAG must not block the walk
            if std::fs::symlink_metadata(&tag).is_ok_and(|m| m.is_file())
                && std::fs::File::open(&tag).and_then(|mut f| f.read_exact(&mut head)).is_ok()
                && head == CACHEDIR_SIGNATURE
            {
                return Some("it holds a CACHEDIR.TAG".into());
            }
        }
        None
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

    #[test]
    fn directories_are_excluded_by_a_marker_or_a_valid_cachedir_tag() {
        let t = tempfile::tempdir().unwrap();
        let d = |n: &str| {
            let p = t.path().join(n);
            std::fs::create_dir(&p).unwrap();
            p
        };
        let (marked, cache, fake, plain) = (d("marked"), d("cache"), d("fake"), d("plain"));
        std::fs::write(marked.join(".nobackup"), b"").unwrap();
        std::fs::write(cache.join("CACHEDIR.TAG"), [CACHEDIR_SIGNATURE, b"\n# a cache\n"].concat()).unwrap();
        std::fs::write(fake.join("CACHEDIR.TAG"), b"Signature: not the right one").unwrap();
        let e = Excludes::new(&[]).unwrap().with_markers(&[".nobackup".into()], true).unwrap();
        assert!(e.excluded_dir(&marked).is_some());
        assert!(e.excluded_dir(&cache).is_some());
        assert!(e.excluded_dir(&fake).is_none(), "a tag without the signature is not a cache");
        assert!(e.excluded_dir(&plain).is_none());
        let off = Excludes::new(&[]).unwrap().with_markers(&[], false).unwrap();
        assert!(off.excluded_dir(&cache).is_none());
        assert!(Excludes::new(&[]).unwrap().with_markers(&["a/b".into()], false).is_err());
    }
}

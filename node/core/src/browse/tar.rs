//! `omesh dump` of a directory: a tar stream (GNU long names, PAX
//! extended attributes as `SCHILY.xattr.*`, hard links as links to the
//! first path of their group) that `tar -x --xattrs` restores.

use super::{BrowseError, FileReader, MAX_DEPTH};
use crate::objects::{self, ObjectSource};
use crate::snapshot::{Node, NodeKind};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a tar dump wrote.
#[derive(Debug, Default)]
pub struct TarSummary {
    /// Entries written.
    pub entries: u64,
    /// Paths left out: files whose content could not be read at backup
    /// time, and sockets (tar has none).
    pub skipped: Vec<String>,
}

/// Write `nodes` (with their archive names) as one tar stream to `out`:
/// a directory with everything below it, any other node as itself.
pub fn write_tar(
    src: &dyn ObjectSource,
    nodes: &[(PathBuf, Node)],
    out: impl Write,
) -> Result<TarSummary, BrowseError> {
    let mut b = tar::Builder::new(out);
    let mut t = TarWriter { src, links: HashMap::new(), sum: TarSummary::default() };
    for (name, n) in nodes {
        t.node(&mut b, name, n, 0)?;
    }
    b.into_inner()?.flush()?;
    Ok(t.sum)
}

/// The entries of a root tree with their archive names (as backed up,
/// without the leading `/`), for [`write_tar`] of a whole snapshot.
pub fn root_entries(src: &dyn ObjectSource, tree: &omesh_proto::ObjectId) -> Result<Vec<(PathBuf, Node)>, BrowseError> {
    Ok(objects::load_dir(src, tree)?.into_iter().map(|c| (PathBuf::from(OsStr::from_bytes(&c.name)), c)).collect())
}

struct TarWriter<'a> {
    src: &'a dyn ObjectSource,
    /// (dev, inode) of files with more than one link → first path written
    links: HashMap<(u64, u64), PathBuf>,
    sum: TarSummary,
}

impl TarWriter<'_> {
    fn node<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        path: &Path,
        n: &Node,
        depth: usize,
    ) -> Result<(), BrowseError> {
        if depth > MAX_DEPTH {
            return Err(BrowseError::TooDeep(path.display().to_string()));
        }
        if matches!(n.kind, NodeKind::Socket) || (n.unreadable && matches!(n.kind, NodeKind::File { .. })) {
            self.sum.skipped.push(path.display().to_string());
            return Ok(());
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(n.mode);
        h.set_uid(n.uid as u64);
        h.set_gid(n.gid as u64);
        h.set_mtime(n.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        if let Some(u) = &n.user {
            let _ = h.set_username(u);
        }
        if let Some(g) = &n.group {
            let _ = h.set_groupname(g);
        }
        // PAX records: the mtime's nanoseconds (the header has seconds) and
        // the extended attributes
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let nanos = n.mtime_ns.rem_euclid(1_000_000_000);
        if nanos != 0 && n.mtime_ns > 0 {
            pax.push(("mtime".into(), format!("{}.{nanos:09}", n.mtime_ns.div_euclid(1_000_000_000)).into_bytes()));
        }
        for (k, v) in &n.xattrs {
            pax.push((format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)), v.clone()));
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        self.sum.entries += 1;
        match &n.kind {
            NodeKind::File { size, .. } => {
                if n.nlink > 1 {
                    if let Some(first) = self.links.get(&(n.dev, n.inode)) {
                        h.set_entry_type(tar::EntryType::Link);
                        h.set_size(0);
                        b.append_link(&mut h, path, first)?;
                        return Ok(());
                    }
                    self.links.insert((n.dev, n.inode), path.to_path_buf());
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                let r = FileReader::new(self.src, n)?;
                b.append_data(&mut h, path, r)?;
            }
            NodeKind::Dir { tree } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty())?;
                for c in objects::load_dir(self.src, tree)? {
                    let p = path.join(OsStr::from_bytes(&c.name));
                    self.node(b, &p, &c, depth + 1)?;
                }
            }
            NodeKind::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, Path::new(OsStr::from_bytes(target)))?;
            }
            NodeKind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty())?;
            }
            NodeKind::CharDev { rdev } | NodeKind::BlockDev { rdev } => {
                h.set_entry_type(if matches!(n.kind, NodeKind::CharDev { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_size(0);
                h.set_device_major(libc::major(*rdev))?;
                h.set_device_minor(libc::minor(*rdev))?;
                b.append_data(&mut h, path, std::io::empty())?;
            }
            NodeKind::Socket => unreachable!("skipped above"),
        }
        Ok(())
    }
}

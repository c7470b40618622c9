//! The planner: walks the snapshot's trees in order, selects what the
//! includes ask for, creates directories, symlinks, fifos and devices, and
//! hands regular files to the workers.

use super::fsops;
use super::options::RestoreError;
use super::state::*;
use crate::objects::{self, SourceError};
use crate::snapshot::{Node, NodeKind};
use crossbeam_channel::Sender;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Which part of the tree an entry falls in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Sel {
    All,
    Partial,
    None,
}

pub(super) fn parse_includes(includes: &[String]) -> Result<Vec<Vec<Vec<u8>>>, RestoreError> {
    includes
        .iter()
        .map(|s| {
            let comps: Vec<Vec<u8>> =
                s.split('/').filter(|c| !c.is_empty() && *c != ".").map(|c| c.as_bytes().to_vec()).collect();
            if comps.iter().any(|c| c == b"..") {
                return Err(RestoreError::Include(s.clone(), "must not contain '..'".into()));
            }
            Ok(comps)
        })
        .collect()
}

pub(super) fn select(includes: &[Vec<Vec<u8>>], path: &[Vec<u8>]) -> Sel {
    if includes.is_empty() {
        return Sel::All;
    }
    let mut partial = false;
    for inc in includes {
        if inc.len() <= path.len() && path[..inc.len()] == inc[..] {
            return Sel::All;
        }
        if inc.len() > path.len() && inc[..path.len()] == path[..] {
            partial = true;
        }
    }
    if partial { Sel::Partial } else { Sel::None }
}

impl Sel {
    pub(super) fn max_if(self, all: bool) -> Sel {
        if all { Sel::All } else { self }
    }
}

pub(super) fn plan_image(
    ctx: &Ctx<'_>,
    root: &Arc<DirState>,
    nodes: Vec<Node>,
    target: &Path,
    tx: Sender<FileTask>,
) -> Result<(), RestoreError> {
    let node = match nodes.into_iter().next() {
        Some(n) if matches!(n.kind, NodeKind::File { .. }) => n,
        _ => {
            return Err(RestoreError::Source(SourceError {
                message: "image snapshot has no image file in its root tree".into(),
                damage: true,
            }));
        }
    };
    let name = target
        .file_name()
        .ok_or_else(|| RestoreError::Target { path: target.into(), reason: "needs a file or device name".into() })?;
    root.pending.fetch_add(1, Ordering::AcqRel);
    ctx.progress.bytes_planned.fetch_add(file_size(&node), Ordering::Relaxed);
    tx.send(FileTask {
        dir: root.clone(),
        name: name.to_os_string(),
        node,
        path: target.display().to_string(),
        link: None,
    })
    .map_err(|_| RestoreError::Internal("restore workers stopped".into()))
}

pub(super) fn file_size(n: &Node) -> u64 {
    match &n.kind {
        NodeKind::File { size, .. } => *size,
        _ => 0,
    }
}

pub(super) struct Planner<'c, 'a> {
    pub(super) ctx: &'c Ctx<'a>,
    pub(super) tx: Sender<FileTask>,
    pub(super) includes: &'c [Vec<Vec<u8>>],
    pub(super) excludes: &'c crate::backup::exclude::Excludes,
    pub(super) links: HashMap<(u64, u64), Arc<LinkGroup>>,
}

/// The snapshot path of `path`'s components, as `--exclude` matches it.
pub(super) fn os_path(path: &[Vec<u8>]) -> std::path::PathBuf {
    let mut p = std::path::PathBuf::from("/");
    for c in path {
        p.push(OsStr::from_bytes(c));
    }
    p
}

pub(super) fn display(path: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for c in path {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    if s.is_empty() { "/".into() } else { s }
}

impl Planner<'_, '_> {
    pub(super) fn plan_dir(
        &mut self,
        dir: &Arc<DirState>,
        nodes: Vec<Node>,
        path: &mut Vec<Vec<u8>>,
        sel: Sel,
    ) -> Result<(), RestoreError> {
        for node in nodes {
            path.push(node.name.clone());
            let s = if sel == Sel::All { Sel::All } else { select(self.includes, path) };
            if s != Sel::None && !self.excludes.is_excluded(&os_path(path), &node.name) {
                self.plan_node(dir, node, path, s)?;
            }
            path.pop();
        }
        Ok(())
    }

    pub(super) fn plan_node(
        &mut self,
        dir: &Arc<DirState>,
        node: Node,
        path: &mut Vec<Vec<u8>>,
        sel: Sel,
    ) -> Result<(), RestoreError> {
        let ctx = self.ctx;
        let p = display(path);
        let name = OsStr::from_bytes(&node.name).to_os_string();
        match &node.kind {
            NodeKind::Dir { tree } => {
                let tree = *tree;
                if sel == Sel::Partial && node.unreadable {
                    return Ok(());
                }
                let children = match objects::load_dir(ctx.src, &tree) {
                    Ok(c) => c,
                    Err(e) => {
                        ctx.error(&p, format!("directory not restored: {e}"));
                        return Ok(());
                    }
                };
                let (fd, fresh) = match fsops::ensure_dir_at(&dir.fd, &name) {
                    Ok(x) => x,
                    Err(e) => {
                        ctx.error(&p, format!("cannot create directory: {e}"));
                        return Ok(());
                    }
                };
                if node.unreadable {
                    ctx.warn(&p, "directory was unreadable at backup time; restored empty");
                }
                ctx.count(|c| c.2 += 1);
                dir.pending.fetch_add(1, Ordering::AcqRel);
                let sub = Arc::new(DirState {
                    fd,
                    fresh,
                    node: Some(node),
                    path: p,
                    pending: AtomicUsize::new(1),
                    parent: Some(dir.clone()),
                });
                let r = self.plan_dir(&sub, children, path, sel);
                ctx.release(&sub);
                r
            }
            NodeKind::File { .. } => {
                if node.unreadable {
                    ctx.error(
                        &p,
                        "not restored: the file was unreadable at backup time, so its content is not in the snapshot",
                    );
                    return Ok(());
                }
                let mut link = None;
                if node.nlink > 1 {
                    let key = (node.dev, node.inode);
                    if let Some(g) = self.links.get(&key) {
                        // a further name of a file planned already: no bytes
                        dir.pending.fetch_add(1, Ordering::AcqRel);
                        ctx.count(|c| c.3 += 1);
                        add_link(ctx, g, LinkReq { dir: dir.clone(), name, path: p });
                        return Ok(());
                    }
                    let g = Arc::new(LinkGroup { state: Mutex::new(LinkState::Waiting(Vec::new())) });
                    self.links.insert(key, g.clone());
                    link = Some(g);
                }
                ctx.progress.bytes_planned.fetch_add(file_size(&node), Ordering::Relaxed);
                dir.pending.fetch_add(1, Ordering::AcqRel);
                self.tx
                    .send(FileTask { dir: dir.clone(), name, node, path: p, link })
                    .map_err(|_| RestoreError::Internal("restore workers stopped".into()))
            }
            NodeKind::Symlink { target } => {
                let r = fsops::put_symlink(&dir.fd, &name, target)
                    .and_then(|_| fsops::apply_meta_at(&dir.fd, &name, &node, ctx.chown));
                self.special_done(&p, r);
                Ok(())
            }
            NodeKind::Fifo | NodeKind::CharDev { .. } | NodeKind::BlockDev { .. } => {
                let (ft, rdev) = match node.kind {
                    NodeKind::Fifo => (rustix::fs::FileType::Fifo, 0),
                    NodeKind::CharDev { rdev } => (rustix::fs::FileType::CharacterDevice, rdev),
                    NodeKind::BlockDev { rdev } => (rustix::fs::FileType::BlockDevice, rdev),
                    _ => unreachable!(),
                };
                let r = fsops::put_node(&dir.fd, &name, ft, rdev, &node, ctx.chown);
                self.special_done(&p, r);
                Ok(())
            }
            NodeKind::Socket => {
                ctx.warn(&p, "unix socket not restored (sockets are created by their server)");
                Ok(())
            }
        }
    }

    pub(super) fn special_done(&self, p: &str, r: std::io::Result<fsops::MetaWarnings>) {
        match r {
            Ok(w) => {
                self.ctx.count(|c| c.3 += 1);
                w.into_iter().for_each(|w| self.ctx.warn(p, w));
            }
            Err(e) => self.ctx.error(p, format!("not restored: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Vec<u8>> {
        s.split('/').filter(|c| !c.is_empty()).map(|c| c.as_bytes().to_vec()).collect()
    }

    #[test]
    fn includes_select_their_subtree_and_the_way_to_it() {
        let inc = parse_includes(&["/etc/nginx".into(), "var/lib/./app".into()]).unwrap();
        assert!(select(&inc, &p("/etc")) == Sel::Partial, "on the way to an include");
        assert!(select(&inc, &p("/etc/nginx")) == Sel::All);
        assert!(select(&inc, &p("/etc/nginx/sites/x")) == Sel::All, "below an include");
        assert!(select(&inc, &p("/etc/passwd")) == Sel::None);
        assert!(select(&inc, &p("/var/lib/app/db")) == Sel::All, "'.' and a missing leading '/' are ignored");
        assert!(select(&inc, &p("/usr")) == Sel::None);
        assert!(select(&[], &p("/anything")) == Sel::All, "no includes: everything");
    }

    #[test]
    fn an_include_may_not_climb() {
        assert!(matches!(parse_includes(&["/etc/../root".into()]), Err(RestoreError::Include(..))));
    }

    #[test]
    fn display_paths() {
        assert_eq!(display(&p("/")), "/");
        assert_eq!(display(&p("/a/b")), "/a/b");
    }
}

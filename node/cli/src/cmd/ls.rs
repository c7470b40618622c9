//! `omesh ls`

use crate::args::{FilterArgs, StoreArgs};
use crate::output::{CliError, ExitCode, print_json_list, time};
use omesh_core::objects::{self, ObjectSource};
use omesh_core::snapshot::{Node, NodeKind};

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Snapshot: an id, a unique prefix, or "latest".
    pub snapshot: String,
    /// Only list below this path (as backed up, e.g. /etc).
    pub path: Option<String>,
    /// Mesh mode: whose snapshot (default: this node's).
    #[arg(long, value_name = "NODE", requires = "config")]
    pub source: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print as JSON (an array of entries).
    #[arg(long)]
    pub json: bool,
}

fn type_char(n: &Node) -> char {
    match n.kind {
        NodeKind::File { .. } => '-',
        NodeKind::Dir { .. } => 'd',
        NodeKind::Symlink { .. } => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::CharDev { .. } => 'c',
        NodeKind::BlockDev { .. } => 'b',
        NodeKind::Socket => 's',
    }
}

fn mode_string(n: &Node) -> String {
    format!("{}{}", type_char(n), permissions(n.mode))
}

/// `rwxr-xr-x` as ls(1) writes it, with setuid and setgid (`s`/`S` in the
/// owner's and group's execute place) and the sticky bit (`t`/`T`).
fn permissions(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for (i, c) in ['r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x'].iter().enumerate() {
        let on = mode & (0o400 >> i) != 0;
        let special = match i {
            2 => (mode & 0o4000 != 0).then_some('s'),
            5 => (mode & 0o2000 != 0).then_some('s'),
            8 => (mode & 0o1000 != 0).then_some('t'),
            _ => None,
        };
        s.push(match (special, on) {
            (Some(x), true) => x,
            (Some(x), false) => x.to_ascii_uppercase(),
            (None, true) => *c,
            (None, false) => '-',
        });
    }
    s
}

fn node_json(path: &str, n: &Node) -> serde_json::Value {
    let size = if let NodeKind::File { size, .. } = n.kind { size } else { 0 };
    let target = if let NodeKind::Symlink { target } = &n.kind {
        Some(String::from_utf8_lossy(target).into_owned())
    } else {
        None
    };
    serde_json::json!({
        "path": path, "type": omesh_core::browse::type_name(n), "size": size, "mode": format!("{:o}", n.mode),
        "uid": n.uid, "gid": n.gid, "user": n.user, "group": n.group,
        "mtime": omesh_core::time::rfc3339_ns(n.mtime_ns),
        "link_target": target, "xattrs": n.xattrs.len(), "warning": n.warning,
    })
}

pub fn run(a: LsArgs) -> Result<ExitCode, CliError> {
    let filter = a.filter.filter();
    let out = crate::browse::with_snapshots(&a.store, a.source.as_deref(), |src, snaps| {
        let (_, rec) = crate::browse::pick(&snaps, &a.snapshot, &filter)?;
        list(src, rec.tree, a.path.as_deref())
    })?;
    print(out, a.json)
}

fn list(
    src: &dyn ObjectSource,
    root: omesh_proto::ObjectId,
    path: Option<&str>,
) -> Result<Vec<(String, Node)>, CliError> {
    let want: Vec<String> = path.unwrap_or("/").split('/').filter(|c| !c.is_empty()).map(String::from).collect();
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root)];
    while let Some((prefix, tree)) = stack.pop() {
        let nodes =
            objects::load_dir(src, &tree).map_err(|e| CliError { code: ExitCode::Damage, err: anyhow::anyhow!(e) })?;
        for n in nodes.into_iter().rev() {
            let p = format!("{prefix}/{}", n.name_lossy());
            let comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
            let depth = comps.len();
            let on_way = comps.len() <= want.len() && comps.iter().zip(&want).all(|(a, b)| a == b);
            let below = depth > want.len() && comps[..want.len()].iter().zip(&want).all(|(a, b)| a == b);
            if !(on_way || below) {
                continue;
            }
            if let NodeKind::Dir { tree } = &n.kind {
                stack.push((p.clone(), *tree));
            }
            if below || depth == want.len() {
                out.push((p, n));
            }
        }
    }
    Ok(out)
}

fn print(mut out: Vec<(String, Node)>, json: bool) -> Result<ExitCode, CliError> {
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if json {
        print_json_list("ls", "entries", &out.iter().map(|(p, n)| node_json(p, n)).collect::<Vec<_>>())?;
    } else {
        for (p, n) in &out {
            let size = if let NodeKind::File { size, .. } = n.kind { size } else { 0 };
            let target = if let NodeKind::Symlink { target } = &n.kind {
                format!(" -> {}", String::from_utf8_lossy(target))
            } else {
                String::new()
            };
            let owner = n.user.clone().unwrap_or_else(|| n.uid.to_string());
            let group = n.group.clone().unwrap_or_else(|| n.gid.to_string());
            let warn = n.warning.as_ref().map(|w| format!("  [{w}]")).unwrap_or_default();
            println!(
                "{} {:>8} {:>8} {:>12} {} {p}{target}{warn}",
                mode_string(n),
                owner,
                group,
                size,
                time(n.mtime_ns)
            );
        }
    }
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests {
    #[test]
    fn permissions_show_setuid_setgid_and_sticky_like_ls() {
        use super::permissions as p;
        assert_eq!(p(0o755), "rwxr-xr-x");
        assert_eq!(p(0o1777), "rwxrwxrwt");
        assert_eq!(p(0o1776), "rwxrwxrwT");
        assert_eq!(p(0o4755), "rwsr-xr-x");
        assert_eq!(p(0o4644), "rwSr--r--");
        assert_eq!(p(0o2750), "rwxr-s---");
        assert_eq!(p(0o2740), "rwxr-S---");
        assert_eq!(p(0o0), "---------");
    }
}

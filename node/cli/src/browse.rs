//! The snapshots of one source and a way to read their objects, in local
//! mode (the store) and mesh mode (the local store and every replica, the
//! nearest first), for the commands that read snapshots without restoring
//! them (`ls`, `diff`, `find`, `dump`, `stats`).

use crate::args::StoreArgs;
use crate::meshmode as mesh;
use crate::output::{CliError, key_source};
use omesh_core::objects::ObjectSource;
use omesh_core::snapshot::SnapshotRecord;
use omesh_core::store::{Access, Store};
use omesh_proto::ObjectId;

/// Snapshots, oldest first.
pub type Snapshots = Vec<(ObjectId, SnapshotRecord)>;

/// Run `f` with the snapshots of `source` (default: this node's, or the
/// store's) and a source of their objects.
pub fn with_snapshots<T: Send>(
    store: &StoreArgs,
    source: Option<&str>,
    f: impl FnOnce(&dyn ObjectSource, Snapshots) -> Result<T, CliError> + Send,
) -> Result<T, CliError> {
    match &store.config {
        None => {
            let st = Store::open(store.dir(), Access::Read, key_source(&store.key_file))?;
            let (mut list, bad) = st.snapshots()?;
            for e in &bad {
                eprintln!("omesh: warning: unreadable snapshot: {e}");
            }
            list.sort_by_key(|(id, r)| (r.start_ns, *id));
            f(&st, list)
        }
        Some(path) => {
            let cfg = mesh::load(path)?;
            let source = source.map(str::to_string).unwrap_or_else(|| cfg.name.clone());
            let rt = mesh::tokio()?;
            rt.block_on(mesh::in_process(cfg, false, |nrt| async move {
                let (list, src) = omesh_daemon::views::prepare_browse(&nrt, &source, &omesh_daemon::views::From::Auto)
                    .await
                    .map_err(mesh::node_err)?;
                // the source blocks on the runtime for each object
                tokio::task::block_in_place(|| f(&src, list))
            }))
        }
    }
}

/// The snapshot `spec` names among `list` narrowed by `filter`.
pub fn pick(
    list: &Snapshots,
    spec: &str,
    filter: &omesh_core::snapshot::select::Filter,
) -> Result<(ObjectId, SnapshotRecord), CliError> {
    Ok(omesh_core::snapshot::select::pick(list, spec, filter)?)
}

/// The snapshots `specs` name (default: every one `filter` chooses),
/// oldest first, each once.
pub fn choose(
    list: Snapshots,
    specs: &[String],
    filter: &omesh_core::snapshot::select::Filter,
) -> Result<Snapshots, CliError> {
    Ok(omesh_core::snapshot::select::choose(list, specs, filter)?)
}

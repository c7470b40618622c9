//! Argument groups shared by several commands.

use std::path::PathBuf;

/// Where the data is: a local store (`--store`) or a mesh node (`--config`).
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Store directory (a stand-alone local store).
    #[arg(
        long,
        short = 's',
        env = "OMESH_STORE",
        value_name = "DIR",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub store: Option<PathBuf>,
    /// Node configuration (mesh mode: the node's own store, its peers, its daemon).
    #[arg(long, short = 'c', env = "OMESH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Key file, when it is not DIR/key (local stores only).
    #[arg(long, env = "OMESH_KEY_FILE", value_name = "PATH", conflicts_with = "config")]
    pub key_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The store directory (local mode).
    pub fn dir(&self) -> &std::path::Path {
        self.store.as_deref().expect("clap requires --store without --config")
    }
}

/// Snapshot filters (`snapshots`, `ls`, `diff`, `find`, `dump`, `stats`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only snapshots with these tags (comma-separated: all of them;
    /// repeat for alternatives: `--tag daily,db --tag manual`).
    #[arg(long = "tag", value_name = "TAG[,TAG...]")]
    pub tags: Vec<String>,
    /// Only snapshots that backed up this path (repeatable: all of them).
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// Only snapshots taken on this host (repeatable: any of them).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only the newest N snapshots of those that match.
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
}

impl FilterArgs {
    /// The core filter.
    pub fn filter(&self) -> omesh_core::snapshot::select::Filter {
        omesh_core::snapshot::select::Filter {
            tags: self.tags.clone(),
            paths: self.paths.clone(),
            hosts: self.hosts.clone(),
            latest: self.latest,
        }
    }
}

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

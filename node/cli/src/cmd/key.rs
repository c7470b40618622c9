//! `omesh key export|import`

use crate::args::StoreArgs;
use crate::output::{CliError, ExitCode};
use omesh_core::keyfile::{KeyFile, write_private_atomic};
use omesh_core::store::config::CONFIG_FILE;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum KeyCommand {
    /// Print the store's key (or write it to --out with mode 0600).
    #[command(long_about = "Export the store's key.\n\n\
        Restoring on a new machine needs only a copy of the store (or its replicas) and this \
        key. Keep the export off the server it protects, e.g. in the site's password safe.")]
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// Write to this file (mode 0600) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Install an exported key for a store (e.g. a store copied to a new machine).
    Import {
        /// Exported key file.
        file: PathBuf,
        /// Store the key belongs to; the key is written to DIR/key.
        #[arg(
            long,
            short = 's',
            env = "OMESH_STORE",
            value_name = "DIR",
            required_unless_present = "config",
            conflicts_with = "config"
        )]
        store: Option<PathBuf>,
        /// Node configuration: install the key as DATA_DIR/keys/SOURCE.key so
        /// this node can restore that source's snapshots from the mesh.
        #[arg(long, short = 'c', env = "OMESH_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

pub fn run(c: KeyCommand) -> Result<ExitCode, CliError> {
    match c {
        KeyCommand::Export { store, out } => {
            let path = match &store.config {
                Some(p) => {
                    let cfg = crate::meshmode::load(p)?;
                    cfg.key_path(&cfg.name)
                }
                None => store.key_file.clone().unwrap_or_else(|| store.dir().join("key")),
            };
            let k = KeyFile::load(&path)?;
            match out {
                Some(o) => {
                    if o.exists() {
                        return Err(CliError::usage(format!("{} already exists; choose another --out", o.display())));
                    }
                    write_private_atomic(&o, k.to_text().as_bytes())
                        .map_err(|e| CliError::failed(format!("writing {}: {e}", o.display())))?;
                    eprintln!("key {} of source {:?} written to {}", k.key_id(), k.source, o.display());
                }
                None => print!("{}", k.to_text()),
            }
            Ok(ExitCode::Ok)
        }
        KeyCommand::Import { file, store, config } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
            let k = KeyFile::from_text(&text, &file)?;
            let store = match (store, config) {
                (Some(s), _) => s,
                (None, Some(p)) => return import_for_node(&k, &p),
                (None, None) => unreachable!("clap requires --store or --config"),
            };
            let cfg_path = store.join(CONFIG_FILE);
            let cfg = std::fs::read_to_string(&cfg_path).map_err(|e| {
                CliError::usage(format!("{} is not an omesh store ({}: {e})", store.display(), cfg_path.display()))
            })?;
            let cfg: omesh_core::store::config::StoreConfig =
                toml::from_str(&cfg).map_err(|e| CliError::usage(format!("{}: {e}", cfg_path.display())))?;
            if !cfg.key_id.is_empty() && cfg.key_id != k.key_id() {
                return Err(CliError::usage(format!(
                    "key {} (source {:?}) does not belong to store {} (which expects key {}); nothing was written",
                    k.key_id(),
                    k.source,
                    store.display(),
                    cfg.key_id
                )));
            }
            install(&k, &store.join("key"))
        }
    }
}

/// Install a key as DATA_DIR/keys/SOURCE.key for mesh restores.
fn import_for_node(k: &KeyFile, config: &std::path::Path) -> Result<ExitCode, CliError> {
    let cfg = crate::meshmode::load(config)?;
    let dest = cfg.key_path(&k.source);
    let dir = cfg.source_dir(&k.source);
    if let Ok(t) = std::fs::read_to_string(dir.join(CONFIG_FILE))
        && let Ok(c) = toml::from_str::<omesh_core::store::config::StoreConfig>(&t)
        && !c.key_id.is_empty()
        && c.key_id != k.key_id()
    {
        return Err(CliError::usage(format!(
            "key {} does not match the store of {} on this node (key {}); nothing written",
            k.key_id(),
            k.source,
            c.key_id
        )));
    }
    install(k, &dest)
}

/// Write `k` to `dest`, unless `dest` already holds it (fine) or another
/// key (refused: a key is never overwritten).
fn install(k: &KeyFile, dest: &std::path::Path) -> Result<ExitCode, CliError> {
    if dest.exists() {
        let existing = KeyFile::load(dest)?;
        if existing.key_id() == k.key_id() {
            eprintln!("{} already holds this key", dest.display());
            return Ok(ExitCode::Ok);
        }
        return Err(CliError::usage(format!(
            "{} already holds a different key (of {:?}); move it away first",
            dest.display(),
            existing.source
        )));
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::failed(format!("{}: {e}", dir.display())))?;
    }
    k.save(dest)?;
    eprintln!("key {} of source {:?} installed as {}", k.key_id(), k.source, dest.display());
    Ok(ExitCode::Ok)
}

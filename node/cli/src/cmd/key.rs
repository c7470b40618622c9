//! `omesh key export|import|rotate|accept`

use crate::args::StoreArgs;
use crate::output::{CliError, ExitCode};
use omesh_core::keyfile::{KDF_MEMORY_KIB, KDF_PASSES, KeyFile, write_private_atomic};
use omesh_core::store::config::CONFIG_FILE;
use omesh_core::store::{Access, KeySource, Store, StoreError};
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
        /// Seal the exported key with a passphrase (Argon2id + XChaCha20-Poly1305), asked twice on the
        /// terminal, or taken from --passphrase-file or OMESH_KEY_PASSPHRASE.
        #[arg(long)]
        passphrase: bool,
        /// Read the passphrase from the first line of FILE (implies --passphrase).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Install an exported key for a store (e.g. a store copied to a new machine).
    Import {
        /// Exported key file (sealed or not).
        file: PathBuf,
        /// A sealed key's passphrase from the first line of FILE (else OMESH_KEY_PASSPHRASE, else asked on the terminal).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
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
    /// Start a new key epoch: data written from now on is encrypted under a new secret.
    #[command(long_about = "Rotate the key: add a new epoch, a fresh random secret under which every \
        object written from now on is encrypted. The older epochs stay in the key file, only to read: \
        every older snapshot restores as before, and ids, deduplication and retention groups carry on \
        (the key id does not change). Export the key again afterwards: an export made before the \
        rotation cannot read anything written after it.\n\n\
        What it protects against: a copy of the key taken before the rotation (an old export, a \
        departed administrator, a lost backup of the key file) cannot decrypt data first written after \
        it. What it does not: data written before stays under the old epochs (and so does any chunk a \
        new snapshot shares with older ones, by deduplication); the holder of an old copy can still \
        compute ids and chunk boundaries, so could test whether a file it already knows is in a new \
        snapshot; and it does nothing against someone who has the current key file (docs/keys.md).\n\n\
        The store must not be in use: with --config, stop the daemon first (systemctl stop omesh), \
        rotate, export, start it.\n\n\
        Examples:\n  omesh key rotate --store /srv/omesh\n  \
        systemctl stop omesh && omesh key rotate --config /etc/omesh/omesh.toml && systemctl start omesh")]
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// On a peer: accept a source's snapshots under a new key.
    #[command(
        long_about = "Accept SOURCE's snapshots under a new key on this node.\n\n        A node binds each source it stores replicas of to the key of that source's first \
        snapshot here, and refuses snapshots under any other key: a source rebuilt with a new \
        key instead of its old one would otherwise split its history into two keys. When SOURCE \
        really starts a new history (its old key is lost), run this on every peer that refuses \
        it (the refusal names the key id). Snapshots under the old key stay until retention or \
        `omesh forget` removes them. Safe beside the running daemon."
    )]
    Accept {
        /// Source whose new key to accept.
        source: String,
        /// The new key id (32 hex digits, from the refusal or `omesh key export`).
        key_id: String,
        /// This node's configuration.
        #[arg(long, short = 'c', env = "OMESH_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
}

/// The passphrase for sealing (`confirm`: asked twice) or opening a key:
/// the first line of `file`, else OMESH_KEY_PASSPHRASE, else asked on the
/// terminal (never echoed).
fn passphrase(file: &Option<PathBuf>, confirm: bool) -> Result<zeroize::Zeroizing<String>, CliError> {
    let p = if let Some(f) = file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| CliError::usage(format!("--passphrase-file {}: {e}", f.display())))?,
        );
        zeroize::Zeroizing::new(text.lines().next().unwrap_or("").to_string())
    } else if let Ok(v) = std::env::var("OMESH_KEY_PASSPHRASE") {
        zeroize::Zeroizing::new(v)
    } else {
        let ask = |q: &str| {
            rpassword::prompt_password(q).map(zeroize::Zeroizing::new).map_err(|e| {
                CliError::usage(format!(
                    "a passphrase is needed and there is no terminal to ask on ({e}): give --passphrase-file FILE \
                     or set OMESH_KEY_PASSPHRASE"
                ))
            })
        };
        let p = ask("Passphrase for the key: ")?;
        if confirm && *ask("Same passphrase again: ")? != *p {
            return Err(CliError::usage("the two passphrases differ; nothing was written"));
        }
        p
    };
    if confirm && p.chars().count() < 8 {
        return Err(CliError::usage(
            "the passphrase is shorter than 8 characters; choose a longer one (a few random words); nothing was written",
        ));
    }
    if p.is_empty() {
        return Err(CliError::usage("the passphrase is empty"));
    }
    Ok(p)
}

pub fn run(c: KeyCommand) -> Result<ExitCode, CliError> {
    match c {
        KeyCommand::Export { store, out, passphrase: seal, passphrase_file } => {
            let path = match &store.config {
                Some(p) => {
                    let cfg = crate::meshmode::load(p)?;
                    cfg.key_path(&cfg.name)
                }
                None => store.key_file.clone().unwrap_or_else(|| store.dir().join("key")),
            };
            if store.config.is_some() && !path.exists() {
                return Err(CliError::usage(format!(
                    "this node has no key yet ({} does not exist): its first backup makes one \
                     (`omesh backup --config FILE`); on a node that replaces another, import that node's key first \
                     (`omesh key import --config FILE OLD.key`)",
                    path.display()
                )));
            }
            let k = KeyFile::load(&path)?;
            if let Some(o) = &out
                && o.exists()
            {
                return Err(CliError::usage(format!("{} already exists; choose another --out", o.display())));
            }
            let text = if seal || passphrase_file.is_some() {
                let p = passphrase(&passphrase_file, true)?;
                k.to_sealed_text(p.as_bytes(), KDF_MEMORY_KIB, KDF_PASSES).map_err(CliError::failed)?
            } else {
                eprintln!(
                    "omesh: warning: this export is not sealed with a passphrase: anyone who reads it can read every \
                     snapshot of {:?}. Use `omesh key export --passphrase` unless it goes straight into a password safe.",
                    k.source
                );
                k.to_text()
            };
            match out {
                Some(o) => {
                    write_private_atomic(&o, text.as_bytes())
                        .map_err(|e| CliError::failed(format!("writing {}: {e}", o.display())))?;
                    eprintln!("key {} of source {:?} written to {}", k.key_id(), k.source, o.display());
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::Ok)
        }
        KeyCommand::Accept { source, key_id, config } => accept(&source, &key_id, &config),
        KeyCommand::Rotate { store, json } => rotate(&store, json),
        KeyCommand::Import { file, store, config, passphrase_file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
            let k = if omesh_core::keyfile::is_sealed(&text) {
                let p = passphrase(&passphrase_file, false)?;
                KeyFile::from_sealed_text(&text, &file, p.as_bytes())?
            } else {
                KeyFile::from_text(&text, &file)?
            };
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

/// Install a key as DATA_DIR/keys/SOURCE.key for mesh restores, or as
/// this node's own key on a rebuilt node. A different key already there is
/// replaced only while nothing was made with it (no snapshot in its store):
/// the key a killed first backup minted, say. The replaced key is kept
/// beside it, never deleted.
fn import_for_node(k: &KeyFile, config: &std::path::Path) -> Result<ExitCode, CliError> {
    // the source names paths below DATA_DIR: a key file is not trusted to
    // name anything else
    if !omesh_proto::msg::valid_name(&k.source) {
        return Err(CliError::usage(format!(
            "the key file names source {:?}, which is not a node name (1-64 letters, digits, '.', '-', '_'); nothing written",
            k.source
        )));
    }
    let cfg = crate::meshmode::load(config)?;
    let dest = cfg.key_path(&k.source);
    let dir = cfg.source_dir(&k.source);
    let store_key = std::fs::read_to_string(dir.join(CONFIG_FILE))
        .ok()
        .and_then(|t| toml::from_str::<omesh_core::store::config::StoreConfig>(&t).ok())
        .map(|c| c.key_id)
        .filter(|id| !id.is_empty());
    let present = if dest.exists() { Some(KeyFile::load(&dest)?) } else { None };
    let store_other = store_key.filter(|id| *id != k.key_id());
    if let Some(other) = &store_other {
        let snapshots = snapshots_in(&dir)?;
        if snapshots > 0 {
            return Err(CliError::usage(format!(
                "key {} does not match this node's key {other} for {}, which has made {snapshots} snapshot(s) in {}; \
                 nothing written. Those snapshots open only with key {other}. To put {}'s old history (key {}) \
                 on this node instead: stop the daemon, move {} and {} aside (keep that key: it opens those \
                 snapshots), and import again",
                k.key_id(),
                k.source,
                dir.display(),
                k.source,
                k.key_id(),
                dir.display(),
                dest.display()
            )));
        }
    }
    // a different key file that no snapshot here needs: kept aside, never
    // deleted
    if let Some(p) = present.filter(|p| p.key_id() != k.key_id()) {
        let aside = dest.with_extension(format!("key.unused-{}", p.key_id()));
        std::fs::rename(&dest, &aside)
            .map_err(|e| CliError::failed(format!("moving {} to {}: {e}", dest.display(), aside.display())))?;
        eprintln!("moved the unused key {} to {}", p.key_id(), aside.display());
    }
    if let Some(other) = store_other {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| CliError::failed(format!("removing the unused store {}: {e}", dir.display())))?;
        eprintln!("removed {}: it held no snapshot (key {other})", dir.display());
    }
    install(k, &dest)
}

/// Snapshots in the store at `dir`, opened for writing so that a running
/// daemon (which holds it) is a clear error, not a race.
fn snapshots_in(dir: &std::path::Path) -> Result<usize, CliError> {
    match Store::open(dir, Access::Write, KeySource::None) {
        Ok(s) => Ok(s.snapshot_ids()?.len()),
        Err(e @ StoreError::Locked { .. }) => Err(CliError::usage(format!(
            "{e}; a key is replaced only with the daemon stopped (systemctl stop omesh), then start it again"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `omesh key rotate` (see `KeyCommand::Rotate`).
fn rotate(a: &StoreArgs, json: bool) -> Result<ExitCode, CliError> {
    let (dir, path) = match &a.config {
        Some(p) => {
            let cfg = crate::meshmode::load(p)?;
            (cfg.source_dir(&cfg.name), cfg.key_path(&cfg.name))
        }
        None => (a.dir().to_path_buf(), a.key_file.clone().unwrap_or_else(|| a.dir().join("key"))),
    };
    if !path.exists() {
        return Err(CliError::usage(format!(
            "{} does not exist: there is no key to rotate yet (a store or a node's first backup makes one)",
            path.display()
        )));
    }
    let mut k = KeyFile::load(&path)?;
    // the store's write lock, held while the key file changes: no backup
    // (the daemon's, which holds the lock while it runs) can go on sealing
    // under the old epoch after it, and the key must be the store's
    let _store = if dir.join(CONFIG_FILE).exists() {
        Some(Store::open(&dir, Access::Write, KeySource::Key(Box::new(k.clone()))).map_err(|e| match e {
            e @ StoreError::Locked { .. } => CliError::usage(format!(
                "{e}; the key is rotated while nothing uses the store: if the daemon holds it, stop it \
                 (systemctl stop omesh), rotate, export the key again and start it; nothing was changed"
            )),
            e => e.into(),
        })?)
    } else {
        None
    };
    let epoch = k.rotate().map_err(CliError::usage)?;
    k.replace(&path)?;
    owned(&path)?;
    if json {
        crate::output::print_json(
            "key_rotate",
            &serde_json::json!({
                "source": k.source,
                "key_id": k.key_id(),
                "epoch": epoch,
                "epochs": k.epoch_count(),
                "key_file": path.display().to_string(),
            }),
        )?;
    } else {
        println!(
            "key {} of source {:?} rotated: new data is encrypted under epoch {epoch}; epochs 0-{} stay in {} to read \
             older snapshots",
            k.key_id(),
            k.source,
            epoch - 1,
            path.display()
        );
    }
    eprintln!(
        "omesh: export the key again now (omesh key export --passphrase ...): an export made before this rotation \
         cannot read anything written from now on"
    );
    Ok(ExitCode::Ok)
}

/// Accept `source`'s snapshots here under `key_id` (see `KeyCommand::Accept`).
fn accept(source: &str, key_id: &str, config: &std::path::Path) -> Result<ExitCode, CliError> {
    if !omesh_proto::msg::valid_name(source) {
        return Err(CliError::usage(format!("{source:?} is not a node name (1-64 letters, digits, '.', '-', '_')")));
    }
    let cfg = crate::meshmode::load(config)?;
    if source == cfg.name {
        return Err(CliError::usage(format!(
            "{source} is this node: `omesh key accept` runs on the peers that hold {source}'s replicas; this node's own key is installed with `omesh key import`"
        )));
    }
    if key_id.len() != 32 || !omesh_proto::msg::valid_key_id(key_id) {
        return Err(CliError::usage(format!(
            "{key_id:?} is not a key id (32 hex digits; the refusal in the source's backup report names it)"
        )));
    }
    let layout = cfg.layout();
    let dir = layout.source_dir(source);
    if !dir.join(CONFIG_FILE).exists() {
        return Err(CliError::usage(format!(
            "this node holds nothing of {source} ({} is not a store); nothing to accept: its first push here binds its key",
            dir.display()
        )));
    }
    let old = layout.bound_key(source)?;
    if old.as_deref() == Some(key_id) {
        eprintln!("{source}'s snapshots on this node are already under key {key_id}");
        return Ok(ExitCode::Ok);
    }
    layout.bind_key(source, key_id, true)?;
    match old {
        Some(o) => eprintln!(
            "{source}'s snapshots on this node are now accepted under key {key_id} (not {o}); snapshots under key {o} stay until retention or `omesh forget` removes them"
        ),
        None => eprintln!("{source}'s snapshots on this node are now accepted under key {key_id}"),
    }
    Ok(ExitCode::Ok)
}

/// As root into a directory another user (the daemon's) owns: a key (and
/// a keys directory made here) get that owner, or the daemon could not
/// read them.
fn owned(p: &std::path::Path) -> Result<(), CliError> {
    omesh_core::fsutil::own_like_parent(p)
        .map_err(|e| CliError::failed(format!("giving {} its directory's owner: {e}", p.display())))
}

/// Write `k` to `dest`, unless `dest` already holds it (fine) or another
/// key (refused: a key is never overwritten).
fn install(k: &KeyFile, dest: &std::path::Path) -> Result<ExitCode, CliError> {
    if dest.exists() {
        let existing = KeyFile::load(dest)?;
        if existing.key_id() == k.key_id() {
            // the same key, maybe rotated since: the file with more epochs
            // wins, if one's epochs are the start of the other's
            if !existing.same_lineage(k) {
                return Err(CliError::usage(format!(
                    "{} holds key {} with other rotated epochs than the imported file: two rotations of one key \
                     diverged; nothing was written (keep both files: each opens what its own epochs sealed)",
                    dest.display(),
                    k.key_id()
                )));
            }
            if k.epoch_count() > existing.epoch_count() {
                k.replace(dest)?;
                owned(dest)?;
                eprintln!(
                    "{}: key {} updated from {} to {} epochs (it was rotated since)",
                    dest.display(),
                    k.key_id(),
                    existing.epoch_count(),
                    k.epoch_count()
                );
            } else {
                eprintln!("{} already holds this key", dest.display());
            }
            return Ok(ExitCode::Ok);
        }
        return Err(CliError::usage(format!(
            "{} already holds a different key (of {:?}); move it away first",
            dest.display(),
            existing.source
        )));
    }
    if let Some(dir) = dest.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| CliError::failed(format!("{}: {e}", dir.display())))?;
        owned(dir)?;
    }
    k.save(dest)?;
    owned(dest)?;
    eprintln!("key {} of source {:?} installed as {}", k.key_id(), k.source, dest.display());
    Ok(ExitCode::Ok)
}

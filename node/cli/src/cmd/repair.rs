//! `omesh repair index`

use crate::args::StoreArgs;
use crate::output::{CliError, ExitCode, print_json};
use omesh_core::store::{Access, Store};

#[derive(clap::Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the object index from the pack files.
    #[command(long_about = "Rebuild the object index from the pack files.\n\n\
        The index is only a cache of what the packs hold; this throws it away and scans every \
        pack. Damaged records are skipped and reported. Safe to run at any time the store is \
        not in use.")]
    Index {
        #[command(flatten)]
        store: StoreArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: RepairCommand) -> Result<ExitCode, CliError> {
    match c {
        RepairCommand::Index { store, json } => {
            let dir = match &store.config {
                None => store.dir().to_path_buf(),
                Some(p) => {
                    let cfg = crate::meshmode::load(p)?;
                    cfg.source_dir(&cfg.name)
                }
            };
            let s = Store::open(&dir, Access::Write, omesh_core::store::KeySource::None)?;
            let (_s, packs, objects, damaged) = s.rebuild_index()?;
            if json {
                print_json(
                    "repair index",
                    &serde_json::json!({"packs": packs, "objects": objects, "damaged_records": damaged}),
                )?;
            } else {
                println!("index rebuilt from {packs} packs: {objects} objects, {damaged} damaged records skipped");
            }
            Ok(if damaged == 0 { ExitCode::Ok } else { ExitCode::Damage })
        }
    }
}

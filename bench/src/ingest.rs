//! `ingest` subcommand (in progress).

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Emit one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`ingest` is not implemented yet")
}

//! `costack-nbd` binary. The serving loop is not wired up yet: for now this
//! only parses the command line.

use std::process::ExitCode;

use clap::Parser;
use costack_nbd::cli::{init_logging, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    tracing::debug!(?cli, "parsed command line");
    eprintln!("costack-nbd: not yet wired");
    ExitCode::from(2)
}

//! `vault` binary: parses arguments, sets up logging, hands over to `vault::cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = vault::cli::Cli::parse();
    vault::cli::main(args)
}

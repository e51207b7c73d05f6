//! The `weir` binary: parse the command line, set up logging, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Weir, a programmable API gateway on Pingora.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file (reload: SIGHUP, file change, or POST /reload).
    Run {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Take the listeners over from a running weir (graceful upgrade; then send the
        /// old process SIGQUIT).
        #[arg(long)]
        upgrade: bool,
        /// Socket the old and new process exchange listeners on during an upgrade.
        #[arg(long, default_value = "/tmp/weir_upgrade.sock")]
        upgrade_sock: String,
    },
    /// Validate a config file: exit 0, or print every error found and exit 1.
    Check {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { config } => match weir::gateway::Gateway::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            upgrade,
            upgrade_sock,
        } => {
            let opts = weir::server::RunOptions {
                upgrade,
                upgrade_sock,
            };
            match weir::server::run(&config, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

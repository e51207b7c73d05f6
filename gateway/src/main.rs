//! The `weir` binary: parse the command line, set up logging, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (`_RJEM_MALLOC_CONF` in the environment
/// still overrides them).
///
/// `tcache_max:65536`: the thread caches keep freed blocks up to 64 KiB, not just up
/// to jemalloc's default 32 KiB. Pingora gives every upstream response body a 64 KiB
/// read buffer, so without it each proxied request took one "large" allocation and
/// free through the arena (extent search, coalescing), ~3k instructions. A thread caches
/// at most 20 blocks of a large class: 1.25 MiB per worker at most.
///
/// `tcache_gc_incr_bytes:1048576`: a thread cache's garbage collection (which hands
/// cached blocks a thread did not use lately back to the arena) runs once per MiB a
/// thread allocates, not once per 64 KiB. At 64 KiB, that 64 KiB buffer alone set it
/// off on every request: blocks went back to the arena and were fetched again (under
/// its lock, from cold memory) a request later. The instruction count does not move;
/// throughput gains ~4% with or without plugins, and resident memory does not move
/// (BENCHMARKS.md, session 8). What a thread may cache at most is unchanged.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    // SAFETY: a pointer to the first byte of a NUL-terminated static string.
    Some(unsafe { &*c"tcache_max:65536,tcache_gc_incr_bytes:1048576".as_ptr() });

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

//! `weir-load`: parse the command line and dispatch to the library.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use weir_load::cli::{Cli, Command};
use weir_load::upstream::Upstream;
use weir_load::{runner, Error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Upstream(args)) => upstream(args),
        None => load(&cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-load: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn load(args: &weir_load::cli::RunArgs) -> Result<(), Error> {
    let report = runner::run(args.to_config()?, args.options())?;
    let text = if args.json {
        report.to_json()
    } else {
        report.to_text()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.trim_end())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Runtime(format!("cannot write the report: {e}")))
}

fn upstream(args: &weir_load::cli::UpstreamArgs) -> Result<(), Error> {
    let server = Upstream::bind(args.to_config()?).map_err(|e| Error::Runtime(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", server.local_addr())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Runtime(format!("cannot write to stdout: {e}")))?;
    drop(out);
    server.serve().map_err(|e| Error::Runtime(e.to_string()))
}

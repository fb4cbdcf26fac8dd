//! The `edco` binary: parse the command line, run it, print the error chain on failure.

use clap::Parser;

fn main() -> std::process::ExitCode {
    edco::alloc::tune_for_compute();
    edco::logging::init();
    match edco::cli::run(edco::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! The `edco` binary: parse the command line, run it, print the error chain on failure.

use clap::Parser;

fn main() -> std::process::ExitCode {
    edco::alloc::tune_for_compute();
    edco::logging::init();
    edco::interrupt::install();
    let cli = edco::cli::Cli::parse();
    match edco::threads::run_on_pool(|| edco::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

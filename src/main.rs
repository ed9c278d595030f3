//! `pyreload`: update a running Python program without restarting it.

mod cli;
mod control;
mod diagnostic;
mod draft;
mod engine;
#[cfg(test)]
mod fuzz;
mod host;
mod plan;
mod process;
mod report;
mod spec;
mod tree;
mod watch;

fn main() {
    // Started as `<tree dir>/bin/python3.X`: a child of a hosted program.
    if let Some(status) = host::shim::main_if_python() {
        std::process::exit(status);
    }
    std::process::exit(cli::main());
}

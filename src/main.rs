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
    std::process::exit(cli::main());
}

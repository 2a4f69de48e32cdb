//! `trainfleet`: the command-line entry point. Everything lives in the library (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    trainfleet::cli::main()
}

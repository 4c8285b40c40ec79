//! The `hoist` binary: parse flags, run a command, map its error to an exit code.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

//! `iolab`: the command line lives in `cli/`; this only runs it.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

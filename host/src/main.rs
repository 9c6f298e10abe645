//! The `knas` command-line tool; see `knas --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

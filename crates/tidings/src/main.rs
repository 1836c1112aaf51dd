//! The `tidings` binary: everything lives in the library; this only runs its command line.

fn main() -> std::process::ExitCode {
    tidings::cli::main()
}

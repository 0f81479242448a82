//! The `vigil` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    vigil::cli::main()
}

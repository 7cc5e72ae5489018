//! `chaosnet-agent`: see [`chaosnet_agent::cli`]. Kept thin so everything is testable.

fn main() -> std::process::ExitCode {
    chaosnet_agent::cli::main()
}

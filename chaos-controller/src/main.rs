//! `chaosnet`: see [`chaos_controller::cli`]. Kept thin so everything is testable.

fn main() -> std::process::ExitCode {
    chaos_controller::cli::main()
}

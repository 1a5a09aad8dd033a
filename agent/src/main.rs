fn main() -> std::process::ExitCode {
    vaultlet::cli::run()
}

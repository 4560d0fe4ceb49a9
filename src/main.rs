//! The `meshprobe` binary: parses the command line and hands over to the library.

fn main() -> std::process::ExitCode {
    // One TLS crypto provider for the whole process (kube's rustls, ring), chosen before
    // anything can make a TLS connection: two providers in one build panic at the first one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    meshprobe::cli::main()
}

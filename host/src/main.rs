//! `ssl-host`: self-supervised training of image encoders on libtorch, with plugins.

use std::process::ExitCode;

fn main() -> ExitCode {
    match ssl_host::run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprint!("{}", ssl_host::error_report(&error));
            ExitCode::FAILURE
        }
    }
}

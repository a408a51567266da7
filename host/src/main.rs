//! `ssl-host`: self-supervised training of image encoders on libtorch, with plugins.

use std::process::ExitCode;

fn main() -> ExitCode {
    match ssl_host::run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(stopped) = error.downcast_ref::<ssl_host::engine::signals::Stopped>() {
                // Not a failure: the run stopped on request and can continue.
                eprintln!("{stopped}");
                return ExitCode::from(stopped.exit_code());
            }
            eprint!("{}", ssl_host::error_report(&error));
            ExitCode::FAILURE
        }
    }
}

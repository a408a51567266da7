//! `ssl-host`: self-supervised training of image encoders on libtorch, with plugins.

use std::process::ExitCode;

fn main() -> ExitCode {
    let outcome = std::panic::catch_unwind(|| ssl_host::run(std::env::args().skip(1).collect()));
    let code = match &outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            if let Some(stopped) = error.downcast_ref::<ssl_host::engine::signals::Stopped>() {
                // Not a failure: the run stopped on request and can continue.
                eprintln!("{stopped}");
                ExitCode::from(stopped.exit_code())
            } else {
                eprint!("{}", ssl_host::error_report(error));
                ExitCode::FAILURE
            }
        }
        Err(_) => ExitCode::FAILURE,
    };
    // What this process fetched from object storage (datasets read from a bucket), if any.
    for line in ssl_host::shards::fetch_report() {
        eprintln!("{line}");
    }
    // Every exit path, a panic's too: the distributed world lives in a static that is never
    // dropped, so its heartbeat and backend end here, before static objects are destroyed.
    ssl_host::world::shutdown();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    code
}

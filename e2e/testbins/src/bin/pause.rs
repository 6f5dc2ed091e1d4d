//! The pod sandbox holder: keeps the pod's namespaces alive until it is told to stop.

use std::process::ExitCode;

use hostlb_testbins::signals::Termination;

fn main() -> ExitCode {
    match Termination::block().and_then(|termination| termination.wait()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pause: {err}");
            ExitCode::FAILURE
        }
    }
}

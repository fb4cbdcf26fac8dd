//! Ctrl-C and SIGTERM: the command stops at once (every file it writes is staged and renamed
//! into place, so nothing is left half-written) and says what was kept and how to go on, as the
//! command last told it (`keep`).

use std::sync::Mutex;

static KEPT: Mutex<Option<String>> = Mutex::new(None);

/// Exit status of a command stopped by a signal, as shells report SIGINT.
const INTERRUPTED: i32 = 130;

/// Installs the handler; a second installation (tests run commands in one process) is a no-op.
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        let kept = KEPT.lock().ok().and_then(|k| k.clone());
        match kept {
            Some(what) => eprintln!("\ninterrupted: {what}"),
            None => eprintln!("\ninterrupted"),
        }
        std::process::exit(INTERRUPTED);
    });
}

/// What an interruption now would leave, and how to continue, in a sentence.
pub fn keep(what: impl Into<String>) {
    if let Ok(mut k) = KEPT.lock() {
        *k = Some(what.into());
    }
}

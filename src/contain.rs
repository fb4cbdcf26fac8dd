//! A stranger's file must not crash edco. Library calls that can panic on malformed input (the
//! tokenizer library on a crafted `tokenizer.json`, the GGUF reader on a zero alignment) run
//! through [`contained`], which turns the panic into an error naming the file.

use anyhow::{Result, anyhow};
use std::cell::Cell;
use std::fmt::Display;
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`contained`], whose panics are reported as errors.
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Wraps the panic hook once: a panic on a thread inside [`contained`] is not printed (the
/// error says what happened); every other panic is reported as before.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it becomes an error saying `what` is malformed, with the panic's
/// message, reported once, as that error.
pub fn contained<T>(what: impl Display, f: impl FnOnce() -> T) -> Result<T> {
    install_hook();
    let outer = CONTAINED.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    result.map_err(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the reader failed".into());
        anyhow!("{what}: malformed ({why})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_naming_the_file() {
        let e = contained("m.gguf", || -> u64 {
            let zero = std::hint::black_box(0u64);
            10 / zero
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("m.gguf: malformed ("), "{e}");
        assert_eq!(contained("x", || 7).unwrap(), 7);
    }
}

//! Logging: `tracing` events to standard error, quiet (warnings only) by default. `RUST_LOG`
//! sets the filter when present; otherwise a training run's `run.log_level` does.

use anyhow::{Result, bail};
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Set only when `RUST_LOG` is absent, so that a config cannot override the user's environment.
static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Installs the subscriber; called once by the binary.
pub fn init() {
    let from_env = EnvFilter::try_from_default_env().ok();
    let user_set = from_env.is_some();
    let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| EnvFilter::new("warn")));
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    if !user_set {
        let _ = RELOAD.set(handle);
    }
}

/// Reads a level name, or a `tracing` filter with at least one `target=level` directive. A bare
/// word must be a level: `wran` is refused rather than read as a target name.
pub fn parse_filter(text: &str) -> Result<EnvFilter> {
    let t = text.trim();
    if !t.contains('=') && !LEVELS.contains(&t.to_ascii_lowercase().as_str()) {
        bail!(
            "expected one of {} or a filter such as `edco=debug`, got `{text}`",
            LEVELS.join(", ")
        );
    }
    EnvFilter::try_new(t).map_err(|e| anyhow::anyhow!("`{text}`: {e}"))
}

/// Applies a configured level unless `RUST_LOG` chose one (or no subscriber is installed).
pub fn apply_config_level(text: &str) -> Result<()> {
    if let Some(handle) = RELOAD.get() {
        handle.reload(parse_filter(text)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_filters_parse_and_typos_do_not() {
        for ok in ["warn", "INFO", "edco=debug", "warn,edco::train=trace"] {
            assert!(parse_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["wran", "", "edco=loud"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}

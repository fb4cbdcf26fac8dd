//! Progress on the terminal: bars with counts, a message and an ETA on stderr, which indicatif
//! hides when stderr is not a terminal (logs and CI stay clean).

/// A bar of `len` units labelled `label`.
pub fn progress_bar(len: usize, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar
}

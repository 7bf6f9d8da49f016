//! The progress display (`--progress`): one bar of versions with a message
//! of what the run is doing; hidden otherwise, so a run's code can report
//! progress without asking whether anyone is watching.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar `versions` long, shown only when `shown`.
pub(crate) fn bar(shown: bool, versions: u64) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(versions);
    b.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} versions {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

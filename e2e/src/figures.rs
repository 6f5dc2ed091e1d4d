//! The figures tests measure, printed in one greppable form each; `make bench` collects them.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use serde_json::json;

use crate::traffic::{PathRecord, Target};

/// Prints a measured figure in one greppable form.
pub fn report_timing(what: &str, took: Duration) {
    println!("timing: {what}: {:.2}s", took.as_secs_f64());
}

/// A figure a test measured, printed, and for `make bench` also appended as a one-key JSON
/// object per line to the file `HOSTLB_FIGURES` names, so that the bench reports the figures of
/// the very tests that assert on them.
pub fn figure(key: &str, value: f64) -> Result<()> {
    println!("figure: {key} = {value}");
    let Ok(path) = std::env::var("HOSTLB_FIGURES") else { return Ok(()) };
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).context(path.clone())?;
    writeln!(file, "{}", json!({ key: value })).context(path)?;
    Ok(())
}

/// The figures of traffic recorded on `Nodes::paths`, under `prefix`: on the published addresses
/// and on the proxy path, the requests sent and lost (both nodes together) and the longest gap
/// (the worse node's).
pub fn traffic_figures(prefix: &str, records: &[(Target, PathRecord)]) -> Result<()> {
    ensure!(records.len() == 4, "{} records, not one per path of Nodes::paths", records.len());
    for (kind, records) in [("published", &records[..2]), ("proxy_path", &records[2..])] {
        let sent: u32 = records.iter().map(|(_, record)| record.sent).sum();
        let lost: u32 = records.iter().map(|(_, record)| record.lost).sum();
        let gap = records.iter().map(|(_, record)| record.longest_gap).max().unwrap_or_default();
        figure(&format!("{prefix}_sent_{kind}"), sent.into())?;
        figure(&format!("{prefix}_lost_{kind}"), lost.into())?;
        figure(&format!("{prefix}_gap_ms_{kind}"), gap.as_millis() as f64)?;
    }
    Ok(())
}

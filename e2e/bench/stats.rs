//! Small statistics shared by `make bench`'s programs, and the reading of the memory figures
//! they take from /proc (included with `#[path]`, as they live in two crates).

#![allow(dead_code)] // each program uses a different part

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The value at `p` (0 to 1) of values sorted in ascending order.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `value` rounded to `digits` decimals, for results that a reader compares by eye.
pub fn rounded(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The smallest, the median and the largest of `values`: a figure with its spread.
pub fn min_median_max(values: &[f64]) -> (f64, f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, median(values.to_vec()), max)
}

/// A `Name:  123 kB` field of a /proc file (`status`, `smaps_rollup`), in KiB.
pub fn kib_field(text: &str, field: &str) -> Option<f64> {
    let value = text.lines().find_map(|line| line.strip_prefix(field))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

//! Human durations in topology files and policies.

/// Parses a human duration such as `500ms`, `30s`, `5m`, `1h` or `2d`.
///
/// ```
/// assert_eq!(medkg_topology::parse_duration("1.5s"), Some(std::time::Duration::from_millis(1500)));
/// assert_eq!(medkg_topology::parse_duration("soon"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" | "" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        _ => return None,
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    // (A value too large for a Duration is not one: `1e300d`.)
    std::time::Duration::try_from_secs_f64(seconds).ok()
}

//! Wall-clock time as the APIs report it.

/// Unix time in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Seconds from a request or a recipe as a Duration: NaN and negatives are none, and more than
/// a year is a year (`Duration::from_secs_f64` panics on both).
pub fn seconds(s: f64) -> std::time::Duration {
    const YEAR: f64 = 365.0 * 86400.0;
    std::time::Duration::from_secs_f64(if s.is_nan() { 0.0 } else { s.clamp(0.0, YEAR) })
}

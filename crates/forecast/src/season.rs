//! The seasonal period to model. Request load follows the day; a series that spans at least
//! three days at a step that divides the day models the daily season. Shorter series have no
//! season to learn from, and period 1 makes "seasonal naive" the plain last-value forecast.

/// Steps per season for a series of `len` points `step` seconds apart.
pub fn period(step: f64, len: usize) -> usize {
    const DAY: f64 = 86_400.0;
    if step <= 0.0 || step > DAY / 4.0 {
        return 1;
    }
    let per_day = (DAY / step).round();
    let divides = ((DAY / step) - per_day).abs() < 1e-6;
    if divides && len as f64 >= 3.0 * per_day {
        per_day as usize
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn daily_only_with_three_days() {
        assert_eq!(super::period(300.0, 4032), 288);
        assert_eq!(super::period(300.0, 500), 1);
        assert_eq!(super::period(1.0, 3600), 1);
        assert_eq!(super::period(7.0, 100_000), 1);
    }
}

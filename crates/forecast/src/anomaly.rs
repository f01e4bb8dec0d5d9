//! Anomalies in a latency, error or load series, found online and robust to seasonality.
//!
//! Each new value is compared with what is normal for its time: the median of the values one,
//! two and three seasons before (or, without a season, the median of the recent values). The
//! residual is scored by a robust z-score against the recent residuals (median and MAD, so the
//! anomalies themselves do not widen the yardstick). A run of points beyond the threshold is
//! one event, reported once at its first point.
//!
//! [`nab_score`] scores events against labelled windows the way the Numenta Anomaly Benchmark
//! does (standard profile: a window found early earns up to 1, a missed window costs 1, a
//! false alarm costs up to 0.11, the first 15% of the series is probation), normalised so
//! that never firing scores 0 and a perfect detector 100. It is written from the benchmark's
//! published description, not its code.

use std::collections::VecDeque;

/// Settings of a [`Detector`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    /// Steps per season (1: none).
    pub period: usize,
    /// Residuals that make up the yardstick.
    pub window: usize,
    /// Robust z-score beyond which a point is anomalous.
    pub threshold: f64,
    /// Points to see before judging any.
    pub warmup: usize,
    /// Points after an event during which no new event starts (one alert per incident).
    pub refractory: usize,
}

impl Settings {
    pub fn for_period(period: usize) -> Self {
        let period = period.max(1);
        Self {
            period,
            window: if period > 1 { period } else { 288 },
            threshold: 5.0,
            warmup: if period > 1 { 3 * period } else { 288 },
            refractory: if period > 1 { period / 4 } else { 72 },
        }
    }
}

/// One anomaly: where it started and how far out it was.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub index: usize,
    pub value: f64,
    pub expected: f64,
    pub score: f64,
}

/// An online detector over one series.
#[derive(Debug, Clone)]
pub struct Detector {
    settings: Settings,
    history: Vec<f64>,
    residuals: VecDeque<f64>,
    in_event: bool,
    last_event: Option<usize>,
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

impl Detector {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            history: Vec::new(),
            residuals: VecDeque::new(),
            in_event: false,
            last_event: None,
        }
    }

    fn expected(&self) -> Option<f64> {
        let n = self.history.len();
        let m = self.settings.period;
        if m > 1 {
            let mut same_phase: Vec<f64> = (1..=3)
                .filter_map(|k| n.checked_sub(k * m).map(|i| self.history[i]))
                .collect();
            (!same_phase.is_empty()).then(|| median(&mut same_phase))
        } else {
            let recent = &self.history[n.saturating_sub(12)..];
            (!recent.is_empty()).then(|| median(&mut recent.to_vec()))
        }
    }

    /// Adds the next value; returns an event when it starts one.
    pub fn observe(&mut self, value: f64) -> Option<Event> {
        let expected = self.expected();
        self.history.push(value);
        let expected = expected?;
        let residual = value - expected;
        let mut event = None;
        if self.history.len() > self.settings.warmup && self.residuals.len() >= 16 {
            let mut r: Vec<f64> = self.residuals.iter().copied().collect();
            let centre = median(&mut r);
            let mut deviations: Vec<f64> = r.iter().map(|x| (x - centre).abs()).collect();
            // 1.4826·MAD estimates σ for normal data; the floor (1% of the level) keeps flat
            // series from turning every wiggle into a huge score.
            let scale = (1.4826 * median(&mut deviations)).max(1e-9 + 1e-2 * expected.abs());
            let score = (residual - centre) / scale;
            let anomalous = score.abs() > self.settings.threshold;
            let index = self.history.len() - 1;
            let resting = self
                .last_event
                .is_some_and(|e| index - e <= self.settings.refractory);
            if anomalous && !self.in_event && !resting {
                self.last_event = Some(index);
                event = Some(Event {
                    index,
                    value,
                    expected,
                    score,
                });
            }
            self.in_event = anomalous;
        }
        self.residuals.push_back(residual);
        if self.residuals.len() > self.settings.window {
            self.residuals.pop_front();
        }
        event
    }
}

/// How events compare with labelled windows (indices into the series, inclusive).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    pub windows: usize,
    pub windows_found: usize,
    pub events: usize,
    pub events_in_windows: usize,
    pub precision: f64,
    pub recall: f64,
    /// NAB-style score, 0 = never firing, 100 = perfect.
    pub nab_score: f64,
}

fn scaled_sigmoid(y: f64) -> f64 {
    2.0 / (1.0 + (5.0 * y).exp()) - 1.0
}

/// Scores event indices against windows over a series of `len` points.
pub fn nab_score(events: &[usize], windows: &[(usize, usize)], len: usize) -> Evaluation {
    const TP: f64 = 1.0;
    const FP: f64 = 0.11;
    const FN: f64 = 1.0;
    let probation = (len as f64 * 0.15) as usize;
    let scored: Vec<usize> = events.iter().copied().filter(|&e| e >= probation).collect();
    let mut found = vec![false; windows.len()];
    let mut raw = 0.0;
    let mut in_windows = 0;
    for &e in &scored {
        if let Some(w) = windows.iter().position(|&(a, b)| a <= e && e <= b) {
            in_windows += 1;
            if !found[w] {
                found[w] = true;
                let (a, b) = windows[w];
                let length = (b - a).max(1) as f64;
                raw += TP * scaled_sigmoid((e as f64 - b as f64) / length);
            }
        } else {
            // A false alarm just after a window costs less than one far from any.
            let before = windows
                .iter()
                .filter(|&&(_, b)| b < e)
                .max_by_key(|&&(_, b)| b);
            let weight = match before {
                Some(&(a, b)) => scaled_sigmoid((e - b) as f64 / (b - a + 1) as f64),
                None => -1.0,
            };
            raw += FP * weight;
        }
    }
    let missed = found.iter().filter(|f| !**f).count();
    raw -= FN * missed as f64;
    let null = -FN * windows.len() as f64;
    let perfect = TP * scaled_sigmoid(-1.0) * windows.len() as f64;
    let nab = if perfect > null {
        100.0 * (raw - null) / (perfect - null)
    } else {
        0.0
    };
    let found_count = found.iter().filter(|f| **f).count();
    Evaluation {
        windows: windows.len(),
        windows_found: found_count,
        events: scored.len(),
        events_in_windows: in_windows,
        precision: if scored.is_empty() {
            0.0
        } else {
            in_windows as f64 / scored.len() as f64
        },
        recall: if windows.is_empty() {
            0.0
        } else {
            found_count as f64 / windows.len() as f64
        },
        nab_score: nab,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_in_a_seasonal_series_is_one_event_and_the_season_is_none() {
        let m = 24;
        let mut d = Detector::new(Settings::for_period(m));
        let mut events = Vec::new();
        for i in 0..m * 10 {
            let mut v = 100.0
                + 40.0 * (std::f64::consts::TAU * (i % m) as f64 / m as f64).sin()
                + ((i as u64).wrapping_mul(2_654_435_761) % 1000) as f64 / 250.0;
            if (200..203).contains(&i) {
                v += 60.0;
            }
            if let Some(e) = d.observe(v) {
                events.push(e.index);
            }
        }
        assert_eq!(events, vec![200]);
    }

    #[test]
    fn nab_scoring_rewards_early_detection_and_penalises_misses() {
        let windows = [(200, 300), (600, 700)];
        let perfect = nab_score(&[200, 600], &windows, 1000);
        assert!((perfect.nab_score - 100.0).abs() < 1e-9);
        assert_eq!((perfect.precision, perfect.recall), (1.0, 1.0));
        let late = nab_score(&[290, 690], &windows, 1000);
        assert!(late.nab_score < perfect.nab_score && late.nab_score > 0.0);
        assert_eq!(nab_score(&[], &windows, 1000).nab_score, 0.0);
        let noisy = nab_score(&[200, 600, 400, 900], &windows, 1000);
        assert!(noisy.nab_score < 100.0);
        assert_eq!(noisy.precision, 0.5);
        // Detections in probation (the first 15%) are not scored.
        assert_eq!(nab_score(&[10], &windows, 1000).events, 0);
    }
}

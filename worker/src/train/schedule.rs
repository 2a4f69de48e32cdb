//! Learning-rate schedules, computed per step (batch) so warm-up is smooth.

use std::f64::consts::PI;

use trainfleet_core::job::{ScheduleKind, TrainingSpec};

/// The learning rate at global step `step` (0-based) of a run with `steps_per_epoch` batches.
pub fn learning_rate(spec: &TrainingSpec, step: u64, steps_per_epoch: u64) -> f64 {
    let base = spec.learning_rate;
    let warmup = spec.warmup_epochs as u64 * steps_per_epoch;
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let total = spec.epochs as u64 * steps_per_epoch;
    match spec.schedule {
        ScheduleKind::Constant => base,
        ScheduleKind::Step => {
            let epoch = step / steps_per_epoch.max(1);
            base * spec
                .gamma
                .powi((epoch / spec.step_epochs.max(1) as u64) as i32)
        }
        ScheduleKind::Cosine => {
            let span = (total - warmup).max(1) as f64;
            base * 0.5 * (1.0 + (PI * (step - warmup) as f64 / span).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_each_schedule() {
        let spec = |schedule| TrainingSpec {
            learning_rate: 1.0,
            epochs: 10,
            warmup_epochs: 1,
            schedule,
            step_epochs: 3,
            gamma: 0.5,
            ..Default::default()
        };
        let constant = spec(ScheduleKind::Constant);
        assert_eq!(learning_rate(&constant, 0, 10), 0.1);
        assert_eq!(learning_rate(&constant, 9, 10), 1.0);
        assert_eq!(learning_rate(&constant, 99, 10), 1.0);
        let step = spec(ScheduleKind::Step);
        assert_eq!(learning_rate(&step, 29, 10), 1.0);
        assert_eq!(learning_rate(&step, 30, 10), 0.5);
        assert_eq!(learning_rate(&step, 60, 10), 0.25);
        let cosine = spec(ScheduleKind::Cosine);
        assert_eq!(learning_rate(&cosine, 10, 10), 1.0);
        assert!((learning_rate(&cosine, 55, 10) - 0.5).abs() < 1e-9);
        assert!(learning_rate(&cosine, 99, 10) < 0.001);
    }
}

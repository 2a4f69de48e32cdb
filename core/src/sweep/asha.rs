//! Asynchronous successive halving with promotions that resume (ASHA; Li et al., "A System for
//! Massively Parallel Hyperparameter Tuning", Algorithm 2), as pure functions over rung records.
//!
//! Rungs sit at `min_epochs · η^k` epochs, and the last at `max_epochs`. A trial that reaches a
//! rung reports its objective there and pauses (its checkpoint kept, no worker held). Whenever a
//! worker slot frees up, [`next`] looks from the highest rung down for a paused trial in the top
//! `⌊n/η⌋` of its rung (n: trials that reported at that rung) that was not promoted yet, and
//! promotes the best one: it resumes from its checkpoint, on any worker, up to the next rung.
//! Only when nothing can be promoted does a new trial start. Reaching the last rung ends a trial.
//!
//! Choices, documented where a user can see them:
//! - Ranking: better objective first; ties go to the lower trial number (the older trial).
//! - A trial that failed at a rung ranks below every trial with a value there.
//! - `⌊n/η⌋` is rounded down, as in the paper: with η = 3 a rung needs three reports before its
//!   first promotion.
//! - Promotions are decided as reports arrive (the asynchronous trade-off of the paper): a trial
//!   promoted early, among few reports, stays promoted, so over a whole sweep a rung may promote
//!   more than `⌊n/η⌋` trials; the best `⌊n/η⌋` of the final reports are always among them.

use serde::{Deserialize, Serialize};

/// The epochs at which trials pause: `min · η^k` below `max`, then `max`.
pub fn rungs(min_epochs: u32, max_epochs: u32, eta: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut at = u64::from(min_epochs.max(1));
    while at < u64::from(max_epochs) {
        out.push(at as u32);
        at *= u64::from(eta.max(2));
    }
    out.push(max_epochs);
    out
}

/// One trial's report at one rung.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RungEntry {
    /// The trial's number in its sweep.
    pub trial: u32,
    /// Its objective at the rung's epochs; `None` when it failed before reporting.
    pub value: Option<f64>,
    /// Whether it has been promoted to the next rung.
    pub promoted: bool,
}

/// One rung: its epochs and who reported there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// Epochs done at this rung.
    pub epochs: u32,
    /// Reports, in arrival order.
    pub entries: Vec<RungEntry>,
}

/// What to do with a free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Resume this paused trial up to rung `to` (an index into the rungs).
    Promote {
        /// The trial.
        trial: u32,
        /// The rung it continues to.
        to: usize,
    },
    /// Nothing to promote: start a new trial at rung 0.
    Start,
}

/// Sort key: better first, failed last, then the older trial.
fn ranked(entries: &[RungEntry], maximize: bool) -> Vec<&RungEntry> {
    let mut sorted: Vec<&RungEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| {
        let order = match (a.value, b.value) {
            (Some(x), Some(y)) if maximize => y.total_cmp(&x),
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        order.then(a.trial.cmp(&b.trial))
    });
    sorted
}

/// The next step for a free slot, given every rung's records (the last rung promotes no one).
/// `eta` is the reduction factor.
pub fn next(rungs: &[Rung], eta: u32, maximize: bool) -> Next {
    let below_top = rungs.len().saturating_sub(1);
    for k in (0..below_top).rev() {
        let rung = &rungs[k];
        let top = rung.entries.len() / eta.max(2) as usize;
        let best = ranked(&rung.entries, maximize)
            .into_iter()
            .take(top)
            .find(|e| !e.promoted && e.value.is_some());
        if let Some(e) = best {
            return Next::Promote {
                trial: e.trial,
                to: k + 1,
            };
        }
    }
    Next::Start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rung(epochs: u32, values: &[(u32, Option<f64>, bool)]) -> Rung {
        Rung {
            epochs,
            entries: values
                .iter()
                .map(|&(trial, value, promoted)| RungEntry {
                    trial,
                    value,
                    promoted,
                })
                .collect(),
        }
    }

    #[test]
    fn rungs_grow_by_eta_and_end_at_max() {
        assert_eq!(rungs(1, 9, 3), vec![1, 3, 9]);
        assert_eq!(rungs(1, 10, 3), vec![1, 3, 9, 10]);
        assert_eq!(rungs(2, 8, 2), vec![2, 4, 8]);
        assert_eq!(rungs(3, 3, 3), vec![3]);
    }

    #[test]
    fn a_rung_promotes_only_its_top_third_and_each_trial_once() {
        let top = rung(9, &[]);
        let two = vec![
            rung(1, &[(0, Some(0.5), false), (1, Some(0.9), false)]),
            top.clone(),
        ];
        assert_eq!(
            next(&two, 3, true),
            Next::Start,
            "2 reports: floor(2/3) = 0"
        );
        let three = vec![
            rung(
                1,
                &[
                    (0, Some(0.5), false),
                    (1, Some(0.9), false),
                    (2, Some(0.7), false),
                ],
            ),
            top.clone(),
        ];
        assert_eq!(next(&three, 3, true), Next::Promote { trial: 1, to: 1 });
        let promoted = vec![
            rung(
                1,
                &[
                    (0, Some(0.5), false),
                    (1, Some(0.9), true),
                    (2, Some(0.7), false),
                ],
            ),
            top,
        ];
        assert_eq!(next(&promoted, 3, true), Next::Start);
    }

    #[test]
    fn higher_rungs_first_minimising_ties_to_the_older_trial_and_failures_last() {
        let rungs = vec![
            rung(
                1,
                &[
                    (0, Some(0.2), false),
                    (1, Some(0.2), false),
                    (2, None, false),
                ],
            ),
            rung(
                3,
                &[
                    (3, Some(0.4), false),
                    (4, Some(0.1), false),
                    (5, Some(0.3), false),
                ],
            ),
            rung(9, &[]),
        ];
        assert_eq!(next(&rungs, 3, false), Next::Promote { trial: 4, to: 2 });
        let lower_only = vec![rungs[0].clone(), rung(9, &[])];
        assert_eq!(
            next(&lower_only, 3, false),
            Next::Promote { trial: 0, to: 1 }
        );
        let failed_best = vec![
            rung(1, &[(0, None, false), (1, None, false), (2, None, false)]),
            rung(9, &[]),
        ];
        assert_eq!(
            next(&failed_best, 3, true),
            Next::Start,
            "failed trials never resume"
        );
    }
}

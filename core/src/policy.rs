//! When a new dataset version is worth a retrain: the per-dataset policy as a pure function of
//! the facts and the time, so every rule is tested with a controlled clock.
//!
//! Rules, in the order they are checked:
//! 1. **Idempotent**: a retrain is keyed by (dataset root, job-config hash); a key already
//!    trained (or queued) never trains again.
//! 2. **Enough samples**: a version with a class holding fewer than `min_samples_per_class`
//!    usable samples (default 1: no class left empty) is not trained, whatever asked. The
//!    classes are the version's, those its scan left out entirely, and the champion's version's,
//!    so a class whose every image became undecodable (or was deleted) is seen as empty.
//! 3. **Coalesce**: at most one retrain per dataset waits for a worker; a newer version replaces
//!    the one it waits with (newest wins), so a burst of changes makes one retrain.
//! 4. **Manual** requests fire (they skip the growth and change rules, not 1, 2, 3 and 7).
//! 5. **First model**: no champion yet → fire.
//! 6. **Growth** (`on_growth_pct`) against the version the champion was trained on, or **content
//!    change** (`on_content_change`: same count, different root, e.g. relabelled images).
//! 7. **min_interval** since the last retrain started: a retrain that would fire earlier is
//!    deferred until then.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A dataset's retrain policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainPolicy {
    /// Retrain when the sample count grew by at least this percentage since the champion's
    /// version; `None` disables the rule.
    pub on_growth_pct: Option<f64>,
    /// Retrain when the content changed with the same sample count.
    pub on_content_change: bool,
    /// Least time between two retrains of the dataset.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// Cron expression (5 fields) of scheduled scans; `None`: scan on request only.
    pub schedule: Option<String>,
    /// IANA time zone of `schedule` (`None`: UTC).
    pub time_zone: Option<String>,
    /// A version with a class holding fewer usable samples than this is not trained; 0 turns
    /// the rule off. Default 1: no class may be left empty.
    pub min_samples_per_class: u64,
}

impl Default for RetrainPolicy {
    fn default() -> Self {
        Self {
            on_growth_pct: Some(10.0),
            on_content_change: true,
            min_interval: Duration::ZERO,
            schedule: None,
            time_zone: None,
            min_samples_per_class: 1,
        }
    }
}

/// The facts about one dataset version the policy looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionFacts {
    /// Merkle root.
    pub root: String,
    /// Samples in it.
    pub samples: u64,
    /// Usable samples per class; a class the scan saw but left wholly out is here with 0.
    #[serde(default)]
    pub by_class: BTreeMap<String, u64>,
}

/// The class with the fewest usable samples in `version` when it is below `min` (classes of
/// `champion` that `version` lacks count as 0): `(class, samples)`.
fn short_class(
    version: &VersionFacts,
    champion: Option<&VersionFacts>,
    min: u64,
) -> Option<(String, u64)> {
    let known = champion.into_iter().flat_map(|c| c.by_class.keys());
    let mut counts = version.by_class.clone();
    for class in known {
        counts.entry(class.clone()).or_insert(0);
    }
    counts
        .into_iter()
        .filter(|&(_, n)| n < min)
        .min_by_key(|&(_, n)| n)
}

/// What the policy knows about a dataset's retrains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetrainState {
    /// The version the champion was trained on.
    pub champion_version: Option<VersionFacts>,
    /// When the last retrain was started.
    pub last_retrain_at: Option<SystemTime>,
    /// The retrain waiting for a worker, if any: its version and key.
    pub pending: Option<(VersionFacts, String)>,
    /// Keys of every retrain ever started.
    pub started_keys: Vec<String>,
}

/// Why a retrain was asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A scan recorded a new version.
    NewVersion,
    /// A person asked (`trainfleet retrain DATASET`).
    Manual,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start a retrain with this idempotency key.
    Fire {
        /// (root, config hash) key.
        key: String,
        /// Which rule fired.
        reason: String,
    },
    /// A retrain already waits; it now uses this version instead, under this key.
    Coalesce {
        /// (root, config hash) key of the version it now uses.
        key: String,
        /// What happened.
        reason: String,
    },
    /// Not now, and not later for this version.
    Skip {
        /// Which rule said no.
        reason: String,
    },
    /// It would fire, but not before `until` (min_interval).
    Defer {
        /// When it may.
        until: SystemTime,
        /// Why.
        reason: String,
    },
}

/// The idempotency key of a retrain: the dataset root and the job-config hash.
pub fn retrain_key(root: &str, config_hash: &str) -> String {
    format!("{root}:{config_hash}")
}

/// Decides whether `version` (just recorded, or named by a manual request) should be retrained
/// with the job config hashed as `config_hash`.
pub fn decide(
    policy: &RetrainPolicy,
    state: &RetrainState,
    version: &VersionFacts,
    config_hash: &str,
    cause: Cause,
    now: SystemTime,
) -> Decision {
    let key = retrain_key(&version.root, config_hash);
    let short = |root: &str| root.chars().take(12).collect::<String>();
    if state.started_keys.contains(&key) {
        return Decision::Skip {
            reason: format!(
                "already trained on version {} with this config (idempotent)",
                short(&version.root)
            ),
        };
    }
    if let Some((class, n)) = short_class(
        version,
        state.champion_version.as_ref(),
        policy.min_samples_per_class,
    ) {
        let what = if n == 0 {
            "no usable samples".to_owned()
        } else {
            format!("only {n} usable sample{}", if n == 1 { "" } else { "s" })
        };
        return Decision::Skip {
            reason: format!(
                "class `{class}` has {what} in version {} (min_samples_per_class {}): not \
                 trained; add samples, or set min_samples_per_class to 0 to train without it",
                short(&version.root),
                policy.min_samples_per_class
            ),
        };
    }
    if let Some((pending, _)) = &state.pending {
        return Decision::Coalesce {
            key,
            reason: format!(
                "a retrain is already waiting (version {}); it will use version {} instead",
                short(&pending.root),
                short(&version.root)
            ),
        };
    }
    let fire = match (cause, &state.champion_version) {
        (Cause::Manual, _) => Some("requested by hand".to_owned()),
        (Cause::NewVersion, None) => Some("the dataset has no champion yet".to_owned()),
        (Cause::NewVersion, Some(champion)) => {
            let growth = if champion.samples == 0 {
                f64::INFINITY
            } else {
                (version.samples as f64 - champion.samples as f64) / champion.samples as f64 * 100.0
            };
            match policy.on_growth_pct {
                Some(pct) if growth >= pct => Some(format!(
                    "grew {growth:.1}% ({} → {} samples) >= on_growth_pct {pct}",
                    champion.samples, version.samples
                )),
                _ if policy.on_content_change
                    && version.samples == champion.samples
                    && version.root != champion.root =>
                {
                    Some(format!(
                        "content changed with the same {} samples (on_content_change)",
                        version.samples
                    ))
                }
                Some(pct) => {
                    return Decision::Skip {
                        reason: format!(
                            "grew {growth:.1}% ({} → {} samples) < on_growth_pct {pct}",
                            champion.samples, version.samples
                        ),
                    };
                }
                None => {
                    return Decision::Skip {
                        reason: "no rule of the policy applies to this change".into(),
                    };
                }
            }
        }
    };
    let reason = fire.expect("every path that gets here fires");
    if let Some(last) = state.last_retrain_at {
        let until = last + policy.min_interval;
        if until > now {
            return Decision::Defer {
                until,
                reason: format!(
                    "{reason}, but min_interval {} has not passed since the last retrain",
                    humantime::format_duration(policy.min_interval)
                ),
            };
        }
    }
    Decision::Fire { key, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(root: &str, samples: u64) -> VersionFacts {
        VersionFacts {
            root: root.into(),
            samples,
            by_class: BTreeMap::new(),
        }
    }

    fn with_classes(root: &str, classes: &[(&str, u64)]) -> VersionFacts {
        VersionFacts {
            root: root.into(),
            samples: classes.iter().map(|c| c.1).sum(),
            by_class: classes.iter().map(|&(c, n)| (c.to_owned(), n)).collect(),
        }
    }

    fn trained_on(root: &str, samples: u64) -> RetrainState {
        RetrainState {
            champion_version: Some(v(root, samples)),
            ..Default::default()
        }
    }

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    #[test]
    fn growth_fires_at_the_threshold_and_not_before() {
        let policy = RetrainPolicy {
            on_growth_pct: Some(10.0),
            on_content_change: false,
            ..Default::default()
        };
        let state = trained_on("r0", 1000);
        let at = |samples| {
            decide(
                &policy,
                &state,
                &v("r1", samples),
                "cfg",
                Cause::NewVersion,
                T0,
            )
        };
        assert!(
            matches!(at(1099), Decision::Skip { reason } if reason.contains("9.9% ") && reason.contains("< on_growth_pct 10"))
        );
        assert!(matches!(at(1100), Decision::Fire { reason, .. } if reason.contains("10.0%")));
        assert!(matches!(at(1500), Decision::Fire { key, .. } if key == "r1:cfg"));
    }

    #[test]
    fn a_relabel_with_the_same_count_fires_the_content_rule_only_when_enabled() {
        let on = RetrainPolicy::default();
        let state = trained_on("r0", 1000);
        let relabelled = v("r1", 1000);
        assert!(matches!(
            decide(&on, &state, &relabelled, "cfg", Cause::NewVersion, T0),
            Decision::Fire { reason, .. } if reason.contains("content changed")
        ));
        let off = RetrainPolicy {
            on_content_change: false,
            ..on
        };
        assert!(matches!(
            decide(&off, &state, &relabelled, "cfg", Cause::NewVersion, T0),
            Decision::Skip { .. }
        ));
    }

    #[test]
    fn a_burst_of_changes_makes_one_retrain_and_a_repeated_trigger_is_idempotent() {
        let policy = RetrainPolicy::default();
        let mut state = trained_on("r0", 1000);
        let mut fired = 0;
        for i in 1..=5 {
            let version = v(&format!("r{i}"), 1000 + 200 * i);
            match decide(&policy, &state, &version, "cfg", Cause::NewVersion, T0) {
                Decision::Fire { key, .. } => {
                    fired += 1;
                    state.pending = Some((version, key));
                }
                Decision::Coalesce { key, .. } => state.pending = Some((version, key)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(fired, 1, "five changes, one retrain");
        assert_eq!(state.pending.as_ref().unwrap().0.root, "r5", "newest wins");

        // The retrain starts; the same trigger again does nothing.
        let (version, key) = state.pending.take().unwrap();
        assert_eq!(
            key, "r5:cfg",
            "the key follows the version it will train on"
        );
        state.started_keys.push(retrain_key(&version.root, "cfg"));
        assert!(matches!(
            decide(&policy, &state, &version, "cfg", Cause::NewVersion, T0),
            Decision::Skip { reason } if reason.contains("idempotent")
        ));
        assert!(
            matches!(
                decide(&policy, &state, &version, "cfg", Cause::Manual, T0),
                Decision::Skip { .. }
            ),
            "even by hand: same data, same config, same model"
        );
        assert!(
            matches!(
                decide(&policy, &state, &version, "other-cfg", Cause::Manual, T0),
                Decision::Fire { .. }
            ),
            "a new config is a new retrain"
        );
    }

    #[test]
    fn min_interval_defers_until_it_has_passed() {
        let policy = RetrainPolicy {
            min_interval: Duration::from_secs(3600),
            ..Default::default()
        };
        let mut state = trained_on("r0", 1000);
        state.last_retrain_at = Some(T0);
        let grown = v("r1", 2000);
        let early = T0 + Duration::from_secs(1800);
        assert!(matches!(
            decide(&policy, &state, &grown, "cfg", Cause::NewVersion, early),
            Decision::Defer { until, .. } if until == T0 + Duration::from_secs(3600)
        ));
        let later = T0 + Duration::from_secs(3600);
        assert!(matches!(
            decide(&policy, &state, &grown, "cfg", Cause::NewVersion, later),
            Decision::Fire { .. }
        ));
    }

    #[test]
    fn a_first_model_and_a_manual_request_fire() {
        let policy = RetrainPolicy::default();
        assert!(matches!(
            decide(&policy, &RetrainState::default(), &v("r", 10), "c", Cause::NewVersion, T0),
            Decision::Fire { reason, .. } if reason.contains("no champion")
        ));
        let state = trained_on("r0", 1000);
        assert!(matches!(
            decide(&policy, &state, &v("r1", 1001), "c", Cause::Manual, T0),
            Decision::Fire { reason, .. } if reason.contains("by hand")
        ));
    }

    #[test]
    fn a_class_left_empty_or_too_small_is_not_trained_whatever_asked() {
        let policy = RetrainPolicy::default();
        let first = RetrainState::default();
        // The scan saw class `dog` but left every file of it out.
        let empty_dog = with_classes("r1", &[("cat", 40), ("dog", 0)]);
        for cause in [Cause::NewVersion, Cause::Manual] {
            assert!(matches!(
                decide(&policy, &first, &empty_dog, "c", cause, T0),
                Decision::Skip { reason } if reason.contains("class `dog` has no usable samples")
                    && reason.contains("min_samples_per_class 1")
            ));
        }
        // A class of the champion's version that this one lacks counts as empty.
        let state = RetrainState {
            champion_version: Some(with_classes("r0", &[("cat", 20), ("dog", 20)])),
            ..Default::default()
        };
        let no_dog = with_classes("r2", &[("cat", 60)]);
        assert!(matches!(
            decide(&policy, &state, &no_dog, "c", Cause::NewVersion, T0),
            Decision::Skip { reason } if reason.contains("class `dog` has no usable samples")
        ));
        // A higher bar names the smallest class and its count.
        let strict = RetrainPolicy {
            min_samples_per_class: 5,
            ..Default::default()
        };
        let thin = with_classes("r3", &[("cat", 60), ("dog", 3), ("eel", 4)]);
        assert!(matches!(
            decide(&strict, &state, &thin, "c", Cause::NewVersion, T0),
            Decision::Skip { reason } if reason.contains("class `dog` has only 3 usable samples")
        ));
        // 0 turns the rule off; a sound version fires.
        let off = RetrainPolicy {
            min_samples_per_class: 0,
            ..Default::default()
        };
        assert!(matches!(
            decide(&off, &state, &no_dog, "c", Cause::NewVersion, T0),
            Decision::Fire { .. }
        ));
        let sound = with_classes("r4", &[("cat", 30), ("dog", 30)]);
        assert!(matches!(
            decide(&policy, &state, &sound, "c", Cause::NewVersion, T0),
            Decision::Fire { .. }
        ));
    }
}

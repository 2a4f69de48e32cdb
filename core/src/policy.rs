//! When a new dataset version is worth a retrain: the per-dataset policy as a pure function of
//! the facts and the time, so every rule is tested with a controlled clock.
//!
//! Rules, in the order they are checked:
//! 1. **Idempotent**: a retrain is keyed by (dataset root, job-config hash); a key already
//!    trained (or queued) never trains again.
//! 2. **Coalesce**: at most one retrain per dataset waits for a worker; a newer version replaces
//!    the one it waits with (newest wins), so a burst of changes makes one retrain.
//! 3. **Manual** requests fire (they skip the growth and change rules, not 1, 2 and 6).
//! 4. **First model**: no champion yet → fire.
//! 5. **Growth** (`on_growth_pct`) against the version the champion was trained on, or **content
//!    change** (`on_content_change`: same count, different root, e.g. relabelled images).
//! 6. **min_interval** since the last retrain started: a retrain that would fire earlier is
//!    deferred until then.

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
}

impl Default for RetrainPolicy {
    fn default() -> Self {
        Self {
            on_growth_pct: Some(10.0),
            on_content_change: true,
            min_interval: Duration::ZERO,
            schedule: None,
            time_zone: None,
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
}

//! The promotion gate: given challenger and champion scores measured by one eval task on the
//! identical test split, may the challenger become the champion? Pure, so every rule is tested
//! without a cluster. The coordinator decides with it; the eval task's report shows the same
//! decision, computed from the same scores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::GateSpec;

/// The gate's decision, as stored with a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GateRecord {
    /// The verdict.
    pub promoted: bool,
    /// Each rule's outcome in words.
    pub reasons: Vec<String>,
    /// Metric compared.
    pub metric: String,
    /// Both values on the identical split.
    pub challenger_value: f64,
    /// See `challenger_value`; 0 without a champion.
    pub champion_value: f64,
    /// Champion compared against; empty for a first model.
    pub champion_id: String,
    /// McNemar's exact test, when the gate asked for it.
    #[serde(default)]
    pub mcnemar: Option<Mcnemar>,
}

/// McNemar's exact test on the paired per-sample correctness.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mcnemar {
    /// Samples only the challenger classified correctly.
    pub challenger_only: u64,
    /// Samples only the champion classified correctly.
    pub champion_only: u64,
    /// Two-sided p-value.
    pub p_value: f64,
}

/// The challenger's side of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Challenger<'a> {
    /// Headline metrics on the test split.
    pub metrics: &'a BTreeMap<String, f64>,
    /// Per-class recall, in `classes` order.
    pub recall: &'a [f64],
    /// Class names.
    pub classes: &'a [String],
}

/// The champion's scores on the same samples as the challenger's.
#[derive(Debug, Clone, Copy)]
pub struct ChampionScores<'a> {
    /// Headline metrics.
    pub metrics: &'a BTreeMap<String, f64>,
    /// Per-class recall, in the challenger's `classes` order.
    pub recall: &'a [f64],
    /// Samples only the challenger classified correctly.
    pub challenger_only: u64,
    /// Samples only the champion classified correctly.
    pub champion_only: u64,
}

/// The champion's side of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Champion<'a> {
    /// Its model id.
    pub id: &'a str,
    /// Its scores, or why it could not be scored.
    pub scores: Result<ChampionScores<'a>, &'a str>,
}

/// Two-sided p-value of McNemar's exact test: under "no difference" the discordant pairs split
/// like fair coin flips, so p = min(1, 2·P[X ≤ min(b, c)]) with X ~ Binomial(b + c, 1/2).
/// Summed in log space, so it is exact enough for any test-set size.
pub fn mcnemar_exact_p(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // ln P[X = i] for i = 0..=k, built incrementally: C(n, i+1) = C(n, i)·(n-i)/(i+1).
    let mut term = n as f64 * 0.5f64.ln();
    let mut logs = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        logs.push(term);
        term += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * logs.iter().map(|l| (l - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

/// Applies `gate` to the challenger and the champion (if the dataset has one). Every rule that
/// applies adds a reason; the challenger is promoted only when all of them pass.
pub fn decide(
    gate: &GateSpec,
    challenger: Challenger<'_>,
    champion: Option<Champion<'_>>,
) -> GateRecord {
    let metric = gate.metric.name();
    let value = |scores: &BTreeMap<String, f64>| scores.get(metric).copied();
    let Some(challenger_value) = value(challenger.metrics) else {
        return GateRecord {
            promoted: false,
            reasons: vec![format!(
                "the eval task reported no `{metric}` for the challenger"
            )],
            metric: metric.to_owned(),
            ..Default::default()
        };
    };
    let mut record = GateRecord {
        metric: metric.to_owned(),
        challenger_value,
        ..Default::default()
    };
    let Some(champion) = champion else {
        let accuracy = challenger.metrics.get("accuracy").copied().unwrap_or(0.0);
        record.promoted = accuracy >= gate.min_accuracy;
        record.reasons.push(if record.promoted {
            format!(
                "first model of its dataset: accuracy {accuracy:.4} >= floor {:.4}",
                gate.min_accuracy
            )
        } else {
            format!(
                "first model of its dataset, but accuracy {accuracy:.4} < floor {:.4}",
                gate.min_accuracy
            )
        });
        return record;
    };
    record.champion_id = champion.id.to_owned();
    let scores = match champion.scores {
        Ok(scores) => scores,
        Err(why) => {
            record.reasons.push(format!(
                "champion {} could not be scored on this data ({why}); keeping it",
                champion.id
            ));
            return record;
        }
    };
    let Some(champion_value) = value(scores.metrics) else {
        record.reasons.push(format!(
            "the eval task reported no `{metric}` for the champion"
        ));
        return record;
    };
    record.champion_value = champion_value;
    let needed = champion_value + gate.min_delta;
    let mut passed = challenger_value >= needed && challenger_value > champion_value;
    record.reasons.push(if passed {
        format!(
            "{metric} {challenger_value:.4} beats champion {} ({champion_value:.4} + min_delta {})",
            champion.id, gate.min_delta
        )
    } else {
        format!(
            "{metric} {challenger_value:.4} does not beat champion {} ({champion_value:.4} + \
             min_delta {}, strictly better required)",
            champion.id, gate.min_delta
        )
    });
    if gate.mcnemar_alpha > 0.0 {
        let (b, c) = (scores.challenger_only, scores.champion_only);
        let p = mcnemar_exact_p(b, c);
        record.mcnemar = Some(Mcnemar {
            challenger_only: b,
            champion_only: c,
            p_value: p,
        });
        let significant = b > c && p <= gate.mcnemar_alpha;
        passed &= significant;
        record.reasons.push(format!(
            "McNemar: {b} samples only the challenger got right, {c} only the champion; \
             p = {p:.4} {} alpha {}",
            if significant { "<=" } else { "fails" },
            gate.mcnemar_alpha
        ));
    }
    if gate.max_class_drop > 0.0 {
        let worst = challenger
            .recall
            .iter()
            .zip(scores.recall)
            .zip(challenger.classes)
            .map(|((new, old), class)| (old - new, class))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        match worst {
            Some((drop, class)) if drop > gate.max_class_drop => {
                passed = false;
                record.reasons.push(format!(
                    "class {class:?} recall drops by {drop:.4} > max_class_drop {}",
                    gate.max_class_drop
                ));
            }
            Some((drop, class)) => record.reasons.push(format!(
                "no class recall drops by more than {} (worst: {class:?}, {drop:+.4})",
                gate.max_class_drop
            )),
            None => {
                passed = false;
                record.reasons.push(
                    "per-class recall was not reported; max_class_drop cannot be checked".into(),
                );
            }
        }
    }
    record.promoted = passed;
    if !passed {
        record.reasons.push("champion kept".into());
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(accuracy: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("accuracy".to_owned(), accuracy)])
    }

    const CLASSES: [&str; 2] = ["cat", "dog"];

    fn classes() -> Vec<String> {
        CLASSES.iter().map(|c| c.to_string()).collect()
    }

    fn challenger<'a>(
        m: &'a BTreeMap<String, f64>,
        recall: &'a [f64],
        classes: &'a [String],
    ) -> Challenger<'a> {
        Challenger {
            metrics: m,
            recall,
            classes,
        }
    }

    #[test]
    fn mcnemar_exact_p_values_match_the_binomial_test() {
        assert_eq!(mcnemar_exact_p(0, 0), 1.0);
        assert!((mcnemar_exact_p(10, 0) - 2.0 * 0.5f64.powi(10)).abs() < 1e-12);
        assert!(
            (mcnemar_exact_p(0, 10) - 2.0 * 0.5f64.powi(10)).abs() < 1e-12,
            "symmetric"
        );
        // scipy.stats.binomtest(5, 20).pvalue
        assert!((mcnemar_exact_p(15, 5) - 0.041_389_465_332_031_25).abs() < 1e-12);
        assert_eq!(mcnemar_exact_p(5, 5), 1.0);
        // Lopsided: tiny but representable (normal approximation: z = 6.3, p ≈ 3e-10).
        let p = mcnemar_exact_p(600, 400);
        assert!(p > 1e-11 && p < 1e-8, "{p}");
        // Huge: underflows to 0 cleanly, never NaN; near-even stays near 1.
        assert_eq!(mcnemar_exact_p(60_000, 40_000), 0.0);
        assert!(mcnemar_exact_p(50_010, 49_990) > 0.9);
    }

    #[test]
    fn a_first_model_needs_only_the_floor() {
        let gate = GateSpec {
            min_accuracy: 0.9,
            ..Default::default()
        };
        let c = classes();
        assert!(decide(&gate, challenger(&scores(0.95), &[], &c), None).promoted);
        let refused = decide(&gate, challenger(&scores(0.85), &[], &c), None);
        assert!(!refused.promoted);
        assert!(
            refused.reasons[0].contains("< floor 0.9000"),
            "{:?}",
            refused.reasons
        );
    }

    #[test]
    fn a_challenger_must_beat_the_champion_by_min_delta_and_a_tie_keeps_the_champion() {
        let gate = GateSpec {
            min_delta: 0.01,
            ..Default::default()
        };
        let champ = scores(0.90);
        let c = classes();
        let vs = |gate: &GateSpec, acc: f64| {
            let m = scores(acc);
            decide(
                gate,
                challenger(&m, &[], &c),
                Some(Champion {
                    id: "m-1",
                    scores: Ok(ChampionScores {
                        metrics: &champ,
                        recall: &[],
                        challenger_only: 0,
                        champion_only: 0,
                    }),
                }),
            )
        };
        assert!(vs(&gate, 0.92).promoted);
        assert!(
            !vs(&gate, 0.905).promoted,
            "better, but by less than min_delta"
        );
        let tie = vs(&GateSpec::default(), 0.90);
        assert!(!tie.promoted, "{:?}", tie.reasons);
        assert_eq!((tie.challenger_value, tie.champion_value), (0.90, 0.90));
        assert!(tie.reasons.last().unwrap().contains("champion kept"));
    }

    #[test]
    fn mcnemar_and_class_drop_can_each_veto_a_better_average() {
        let c = classes();
        let champ = scores(0.90);
        let better = scores(0.92);
        let decide_with = |gate: GateSpec, b: u64, cc: u64, recall: &[f64]| {
            decide(
                &gate,
                challenger(&better, recall, &c),
                Some(Champion {
                    id: "m-1",
                    scores: Ok(ChampionScores {
                        metrics: &champ,
                        recall: &[0.90, 0.90],
                        challenger_only: b,
                        champion_only: cc,
                    }),
                }),
            )
        };
        let mcnemar = GateSpec {
            mcnemar_alpha: 0.05,
            ..Default::default()
        };
        // 2 points better on 100 samples: 12 vs 10 discordant pairs is noise.
        let noise = decide_with(mcnemar.clone(), 12, 10, &[0.92, 0.92]);
        assert!(!noise.promoted, "{:?}", noise.reasons);
        assert!(noise.mcnemar.unwrap().p_value > 0.5);
        let real = decide_with(mcnemar, 40, 20, &[0.92, 0.92]);
        assert!(real.promoted, "{:?}", real.reasons);

        let class_rule = GateSpec {
            max_class_drop: 0.05,
            ..Default::default()
        };
        let dropped = decide_with(class_rule.clone(), 0, 0, &[1.0, 0.80]);
        assert!(!dropped.promoted);
        assert!(
            dropped
                .reasons
                .iter()
                .any(|r| r.contains("\"dog\" recall drops by 0.1000")),
            "{:?}",
            dropped.reasons
        );
        assert!(decide_with(class_rule, 0, 0, &[0.93, 0.88]).promoted);
    }

    #[test]
    fn an_unscorable_champion_is_kept_with_the_reason() {
        let c = classes();
        let m = scores(0.99);
        let d = decide(
            &GateSpec::default(),
            challenger(&m, &[], &c),
            Some(Champion {
                id: "m-1",
                scores: Err("it has 10 classes, the data 47"),
            }),
        );
        assert!(!d.promoted);
        assert!(d.reasons[0].contains("47"), "{:?}", d.reasons);
    }
}

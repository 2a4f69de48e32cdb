//! The promotion gate: given challenger and champion scores measured by one eval task on the
//! identical test split, may the challenger become the champion? Pure, so every rule is tested
//! without a cluster.

use std::collections::BTreeMap;

use trainfleet_core::job::GateSpec;

use crate::records::GateRecord;

/// The champion's side of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Champion<'a> {
    /// Its model id.
    pub id: &'a str,
    /// Its scores on the same samples as the challenger's, or why it could not be scored.
    pub scores: Result<&'a BTreeMap<String, f64>, &'a str>,
}

/// Applies `gate` to the challenger's scores and the champion's (if the dataset has one).
pub fn decide(
    gate: &GateSpec,
    challenger: &BTreeMap<String, f64>,
    champion: Option<Champion<'_>>,
) -> GateRecord {
    let metric = gate.metric.name();
    let value = |scores: &BTreeMap<String, f64>| scores.get(metric).copied();
    let Some(challenger_value) = value(challenger) else {
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
        promoted: false,
        reasons: Vec::new(),
        metric: metric.to_owned(),
        challenger_value,
        champion_value: 0.0,
        champion_id: String::new(),
    };
    let Some(champion) = champion else {
        let accuracy = challenger.get("accuracy").copied().unwrap_or(0.0);
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
    let Some(champion_value) = value(scores) else {
        record.reasons.push(format!(
            "the eval task reported no `{metric}` for the champion"
        ));
        return record;
    };
    record.champion_value = champion_value;
    let needed = champion_value + gate.min_delta;
    record.promoted = challenger_value >= needed && challenger_value > champion_value;
    record.reasons.push(if record.promoted {
        format!(
            "{metric} {challenger_value:.4} beats champion {} ({champion_value:.4} + min_delta {})",
            champion.id, gate.min_delta
        )
    } else {
        format!(
            "{metric} {challenger_value:.4} does not beat champion {} ({champion_value:.4} + \
             min_delta {}, strictly better required); champion kept",
            champion.id, gate.min_delta
        )
    });
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(accuracy: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("accuracy".to_owned(), accuracy)])
    }

    #[test]
    fn a_first_model_needs_only_the_floor() {
        let gate = GateSpec {
            min_accuracy: 0.9,
            ..Default::default()
        };
        assert!(decide(&gate, &scores(0.95), None).promoted);
        let refused = decide(&gate, &scores(0.85), None);
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
        let vs = |acc: f64| {
            decide(
                &gate,
                &scores(acc),
                Some(Champion {
                    id: "m-1",
                    scores: Ok(&champ),
                }),
            )
        };
        assert!(vs(0.92).promoted);
        assert!(!vs(0.905).promoted, "better, but by less than min_delta");
        let no_delta = GateSpec::default();
        let tie = decide(
            &no_delta,
            &scores(0.90),
            Some(Champion {
                id: "m-1",
                scores: Ok(&champ),
            }),
        );
        assert!(!tie.promoted, "{:?}", tie.reasons);
        assert_eq!((tie.challenger_value, tie.champion_value), (0.90, 0.90));
        assert!(tie.reasons[0].contains("champion kept"));
    }

    #[test]
    fn an_unscorable_champion_is_kept_with_the_reason() {
        let d = decide(
            &GateSpec::default(),
            &scores(0.99),
            Some(Champion {
                id: "m-1",
                scores: Err("it has 10 classes, the data 47"),
            }),
        );
        assert!(!d.promoted);
        assert!(d.reasons[0].contains("47"), "{:?}", d.reasons);
    }
}

//! Assembles a run's report from what the eval task has at hand: the challenger's card,
//! `metrics.json` and config, both models' scores on the same samples, the gate's decision
//! (computed with the coordinator's own rule) and the dataset version the coordinator named.

use trainfleet_core::gate;
use trainfleet_core::job::JobSpec;
use trainfleet_proto::v1;

use super::{Comparison, DatasetSummary, PreviousVersion, RunReport, System};
use crate::artifacts::{MetricsFile, ModelCard};
use crate::job::{PairScores, ReportParts};

/// What a report is made from.
pub struct Inputs<'a> {
    /// The job.
    pub job_id: &'a str,
    /// The run's artifacts.
    pub run_uri: &'a str,
    /// What the coordinator sent with the eval.
    pub eval: &'a v1::EvalInputs,
    /// The challenger's resolved spec.
    pub spec: &'a JobSpec,
    /// The challenger's card.
    pub card: &'a ModelCard,
    /// Its epochs.
    pub metrics: &'a MetricsFile,
    /// Both models on the same samples.
    pub scores: &'a PairScores,
    /// The challenger's evaluation and images.
    pub parts: &'a ReportParts,
}

/// The report of a run trained on its own (`trainfleet-worker train`): no champion, no
/// registered version.
pub fn standalone_report(
    spec: &JobSpec,
    card: &ModelCard,
    epochs: &[crate::train::EpochReport],
    parts: &ReportParts,
    run_uri: &str,
) -> RunReport {
    RunReport {
        job_id: "local run".to_owned(),
        name: spec.name.clone(),
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        run_uri: run_uri.to_owned(),
        model: card.model.arch.name().to_owned(),
        config_yaml: serde_yaml::to_string(spec).unwrap_or_default(),
        config_hash: spec.config_hash(),
        system: System {
            device: card.training.device.clone(),
            threads: card.training.threads,
            libtorch_version: card.training.libtorch_version.clone(),
            trainfleet_version: card.training.trainfleet_version.clone(),
        },
        epochs: epochs.to_vec(),
        kept_epoch: card.training.kept_epoch,
        classes: card.classes.clone(),
        test: super::collect::scores(&parts.evaluation),
        dataset: DatasetSummary {
            source: parts.source.clone(),
            root: card.dataset.root_sha256.clone(),
            counts: parts.counts.clone(),
            skipped_count: parts.skipped.len() as u64,
            skipped: first_skipped(&parts.skipped),
            ..DatasetSummary::default()
        },
        samples: parts.samples.clone(),
        misclassified: parts.misclassified.clone(),
        confident: parts.confident.clone(),
        comparison: None,
    }
}

/// The gate's decision on these scores: the coordinator's rule on the same numbers.
pub fn decision(spec: &JobSpec, eval: &v1::EvalInputs, scores: &PairScores) -> gate::GateRecord {
    let champion = (!eval.champion.is_empty()).then(|| gate::Champion {
        id: &eval.champion_id,
        scores: match (&scores.champion, &scores.champion_error) {
            (Some(metrics), _) => Ok(gate::ChampionScores {
                metrics,
                recall: &scores.champion_recall,
                challenger_only: scores.challenger_only,
                champion_only: scores.champion_only,
            }),
            (None, Some(why)) => Err(why.as_str()),
            (None, None) => Err("the eval task did not score it"),
        },
    });
    let challenger = gate::Challenger {
        metrics: &scores.challenger,
        recall: &scores.challenger_recall,
        classes: &scores.classes,
    };
    gate::decide(&spec.gate, challenger, champion)
}

/// The report of one evaluated run.
pub fn run_report(i: &Inputs<'_>) -> RunReport {
    let (card, scores, parts) = (i.card, i.scores, i.parts);
    let version = i.eval.dataset_version.as_ref();
    RunReport {
        job_id: i.job_id.to_owned(),
        name: i.spec.name.clone(),
        generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        run_uri: i.run_uri.to_owned(),
        model: card.model.arch.name().to_owned(),
        config_yaml: serde_yaml::to_string(i.spec).unwrap_or_default(),
        config_hash: i.spec.config_hash(),
        system: System {
            device: card.training.device.clone(),
            threads: card.training.threads,
            libtorch_version: card.training.libtorch_version.clone(),
            trainfleet_version: card.training.trainfleet_version.clone(),
        },
        epochs: i.metrics.epochs.clone(),
        kept_epoch: card.training.kept_epoch,
        classes: scores.classes.clone(),
        test: super::collect::scores(&parts.evaluation),
        dataset: DatasetSummary {
            source: parts.source.clone(),
            root: scores.dataset_root.clone(),
            version: version.map_or(0, |v| v.number),
            samples: version.map_or(0, |v| v.samples),
            counts: parts.counts.clone(),
            previous: i.eval.previous_version.as_ref().map(|p| PreviousVersion {
                number: p.number,
                root: p.root.clone(),
                samples: p.samples,
            }),
            // A registered version says what its scan left out; else the loader's walk does.
            skipped_count: version.map_or(parts.skipped.len() as u64, |v| v.skipped_count),
            skipped: version.map_or_else(
                || first_skipped(&parts.skipped),
                |v| {
                    v.skipped
                        .iter()
                        .map(|e| (e.path.clone(), e.reason.clone()))
                        .collect()
                },
            ),
        },
        samples: parts.samples.clone(),
        misclassified: parts.misclassified.clone(),
        confident: parts.confident.clone(),
        comparison: Some(Comparison {
            champion_id: i.eval.champion_id.clone(),
            challenger: scores.challenger.clone(),
            champion: scores.champion.clone(),
            champion_error: scores.champion_error.clone(),
            challenger_recall: scores.challenger_recall.clone(),
            champion_recall: scores.champion_recall.clone(),
            challenger_only: scores.challenger_only,
            champion_only: scores.champion_only,
            gate: decision(i.spec, i.eval, scores),
        }),
    }
}

/// The first left-out entries a report lists (the count says how many there are in all).
pub(crate) fn first_skipped(all: &[(String, String)]) -> Vec<(String, String)> {
    all.iter().take(super::SKIPPED_LISTED).cloned().collect()
}

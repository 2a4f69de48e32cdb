//! Checkpoints: one safetensors file holding the model's variables (`model/…`), the optimiser
//! state (`optim/…`), the best weights under early stopping (`best/…`) and the run's metadata as
//! JSON (`meta/json`, a u8 tensor). One file replaced by one rename means a crash leaves either
//! the previous checkpoint or the new one, never weights from one epoch with metadata from
//! another.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor, nn};
use trainfleet_core::job::JobSpec;

use super::EpochReport;
use super::optim::Optimizer;
use crate::error::{Error, Result};

/// File name of the checkpoint inside a run's output directory.
pub const FILE: &str = "checkpoint.safetensors";

/// Where training stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Format version.
    pub format: u32,
    /// sha256 of the job spec's training-relevant parts; resume refuses a different config.
    pub config_hash: String,
    /// Last completed epoch.
    pub epoch: u32,
    /// Optimiser steps taken.
    pub global_step: u64,
    /// Every completed epoch's report.
    pub history: Vec<EpochReport>,
    /// Early stopping: best score (higher is better; none before the first validation), its
    /// epoch, epochs since. (An Option, not -inf: JSON has no infinities.)
    pub best_score: Option<f64>,
    /// See `best_score`.
    pub best_epoch: u32,
    /// See `best_score`.
    pub bad_epochs: u32,
}

impl CheckpointMeta {
    /// Metadata of a run that has not completed an epoch.
    pub fn new(config_hash: String) -> Self {
        Self {
            format: 1,
            config_hash,
            epoch: 0,
            global_step: 0,
            history: Vec::new(),
            best_score: None,
            best_epoch: 0,
            bad_epochs: 0,
        }
    }
}

/// sha256 of everything in the spec that changes what training computes (not its name).
pub fn config_hash(spec: &JobSpec) -> String {
    let canonical = serde_json::json!({
        "dataset": spec.dataset,
        "model": spec.model,
        "training": spec.training,
    });
    crate::data::hex(&Sha256::digest(canonical.to_string().as_bytes()))
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Checkpoint {
    /// Where training stood.
    pub meta: CheckpointMeta,
    tensors: HashMap<String, Tensor>,
    path: PathBuf,
}

impl Checkpoint {
    /// Writes the checkpoint for the current state (to a temporary file, then renamed).
    pub fn write(
        dir: &Path,
        meta: &CheckpointMeta,
        vs: &nn::VarStore,
        optimizer: &Optimizer,
        best: Option<&[(String, Tensor)]>,
    ) -> Result<()> {
        let json = serde_json::to_vec(meta).expect("metadata serialises");
        let mut named: Vec<(String, Tensor)> =
            vec![("meta/json".to_owned(), Tensor::from_slice(&json))];
        // safetensors stores dense row-major data: channels-last variables are written as
        // contiguous copies (and copied back into whatever layout the model uses on restore).
        let portable = |t: &Tensor| t.to_device(Device::Cpu).contiguous();
        for (name, t) in vs.variables() {
            named.push((format!("model/{name}"), portable(&t)));
        }
        for (name, t) in optimizer.state_tensors() {
            named.push((format!("optim/{name}"), portable(&t)));
        }
        for (name, t) in best.unwrap_or_default() {
            named.push((format!("best/{name}"), portable(t)));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE);
        let tmp = dir.join(format!(".tmp.{FILE}"));
        Tensor::write_safetensors(&named, &tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(())
    }

    /// Reads the checkpoint in `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Checkpoint>> {
        let path = dir.join(FILE);
        if !path.exists() {
            return Ok(None);
        }
        let corrupt = |message: String| Error::corrupt(&path, None, message);
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
            .map_err(|e| corrupt(format!("unreadable checkpoint: {e}")))?
            .into_iter()
            .collect();
        let json = tensors
            .get("meta/json")
            .ok_or_else(|| corrupt("no meta/json entry".into()))?;
        let bytes = Vec::<u8>::try_from(json).map_err(|e| corrupt(format!("meta/json: {e}")))?;
        let meta: CheckpointMeta =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("meta/json: {e}")))?;
        Ok(Some(Checkpoint {
            meta,
            tensors,
            path,
        }))
    }

    /// Loads the saved weights and optimiser state, after checking the checkpoint was written
    /// for the same job config.
    pub fn restore(
        &self,
        config_hash: &str,
        vs: &mut nn::VarStore,
        optimizer: &mut Optimizer,
    ) -> Result<()> {
        if self.meta.config_hash != config_hash {
            return Err(Error::Unsupported(format!(
                "{} was written for a different job config (config hash {} , this job {}); \
                 resume with the same config or use a fresh output directory",
                self.path.display(),
                &self.meta.config_hash[..12],
                &config_hash[..12]
            )));
        }
        let vars = vs.variables();
        for (name, var) in &vars {
            let saved = self.tensors.get(&format!("model/{name}")).ok_or_else(|| {
                Error::corrupt(
                    &self.path,
                    None,
                    format!("checkpoint lacks model variable `{name}`"),
                )
            })?;
            if saved.size() != var.size() {
                return Err(Error::corrupt(
                    &self.path,
                    None,
                    format!(
                        "model variable `{name}` has shape {:?}, the model {:?}",
                        saved.size(),
                        var.size()
                    ),
                ));
            }
            tch::no_grad(|| var.shallow_clone().copy_(saved));
        }
        let optim: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix("optim/")
                    .map(|k| (k.to_owned(), t.shallow_clone()))
            })
            .collect();
        optimizer.load_state(&optim, self.meta.global_step as i64)
    }

    /// The best weights saved under early stopping, if any.
    pub fn best_weights(&self) -> Option<Vec<(String, Tensor)>> {
        let best: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix("best/")
                    .map(|k| (k.to_owned(), t.shallow_clone()))
            })
            .collect();
        (!best.is_empty()).then_some(best)
    }
}

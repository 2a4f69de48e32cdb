//! Optimisers written on tensors, so that their state is ordinary named tensors that a
//! checkpoint can save and restore (libtorch's optimisers, as `tch` exposes them, cannot do that,
//! and resuming without the momentum buffers is not resuming).
//!
//! Semantics follow PyTorch's `torch.optim` (SGD with dampening 0; Adam with L2 weight decay in
//! the gradient; AdamW with decoupled decay), so hyperparameters mean what users expect. Adam and
//! AdamW run libtorch's fused multi-tensor kernel (`torch.optim.Adam(fused=True)`: one pass over
//! each parameter); `zero_grad` drops the gradients as PyTorch's `set_to_none=True` does, so
//! backward writes them fresh instead of adding into zeroed buffers.

use std::collections::HashMap;

use tch::{Tensor, nn};
use trainfleet_core::job::{OptimizerKind, TrainingSpec};

use crate::error::{Error, Result};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// An optimiser over a var store's trainable parameters, in name order.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    params: Vec<(String, Tensor)>,
    // SGD: [momentum buffer]; Adam/AdamW: [first moment, second moment].
    state: Vec<Vec<Tensor>>,
    // Adam/AdamW: each parameter's step count as the float scalar the fused kernel reads.
    steps: Vec<Tensor>,
    step: i64,
}

impl Optimizer {
    /// An optimiser for the trainable variables of `vs`, configured by `spec`.
    pub fn new(vs: &nn::VarStore, spec: &TrainingSpec) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = match spec.optimizer {
            OptimizerKind::Sgd if spec.momentum > 0.0 => 1,
            OptimizerKind::Sgd => 0,
            OptimizerKind::Adam | OptimizerKind::Adamw => 2,
        };
        let state = params
            .iter()
            .map(|(_, p)| (0..slots).map(|_| p.zeros_like().detach()).collect())
            .collect();
        let steps = match spec.optimizer {
            OptimizerKind::Adam | OptimizerKind::Adamw => params
                .iter()
                .map(|(_, p)| Tensor::zeros([], (tch::Kind::Float, p.device())))
                .collect(),
            OptimizerKind::Sgd => Vec::new(),
        };
        Self {
            kind: spec.optimizer,
            momentum: spec.momentum,
            nesterov: spec.nesterov,
            weight_decay: spec.weight_decay,
            params,
            state,
            steps,
            step: 0,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Drops every parameter's gradient (the next backward pass writes fresh ones).
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            super::fused::clear_grad(p);
        }
    }

    /// Scales gradients so that their global L2 norm is at most `max`; returns the norm before.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| p.grad())
                .filter(Tensor::defined)
                .collect();
            if grads.is_empty() {
                return 0.0;
            }
            let squares: Vec<Tensor> = grads.iter().map(|g| g.square().sum(g.kind())).collect();
            let total = f64::try_from(Tensor::stack(&squares, 0).sum(tch::Kind::Double).sqrt())
                .unwrap_or(0.0);
            if total > max {
                let scale = max / (total + 1e-6);
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
            total
        })
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        match self.kind {
            OptimizerKind::Sgd => {
                self.sgd_step(lr);
                Ok(())
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => self.adam_step(lr),
        }
    }

    fn sgd_step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for ((_, p), state) in self.params.iter_mut().zip(&mut self.state) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let mut g = if self.weight_decay > 0.0 {
                    &grad + &*p * self.weight_decay
                } else {
                    grad
                };
                if let Some(buf) = state.first_mut() {
                    let _ = buf.g_mul_scalar_(self.momentum);
                    let _ = buf.g_add_(&g);
                    g = if self.nesterov {
                        &g + &*buf * self.momentum
                    } else {
                        buf.shallow_clone()
                    };
                }
                let _ = p.g_sub_(&(g * lr));
            }
        });
    }

    fn adam_step(&mut self, lr: f64) -> Result<()> {
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).collect();
        let mut group = super::fused::AdamGroup {
            params: Vec::new(),
            grads: Vec::new(),
            exp_avgs: Vec::new(),
            exp_avg_sqs: Vec::new(),
            steps: Vec::new(),
        };
        let step = self.step as f64;
        for (i, grad) in grads.iter().enumerate() {
            if !grad.defined() {
                continue;
            }
            let _ = self.steps[i].shallow_clone().fill_(step);
            group.params.push(&self.params[i].1);
            group.grads.push(grad);
            group.exp_avgs.push(&self.state[i][0]);
            group.exp_avg_sqs.push(&self.state[i][1]);
            group.steps.push(&self.steps[i]);
        }
        let config = super::fused::AdamConfig {
            lr,
            beta1: BETA1,
            beta2: BETA2,
            weight_decay: self.weight_decay,
            eps: EPS,
            decoupled: self.kind == OptimizerKind::Adamw,
        };
        tch::no_grad(|| super::fused::adam_step(&group, config))
    }

    /// The state as named tensors (`{param}/{slot}`), for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((name, _), slots) in self.params.iter().zip(&self.state) {
            for (i, t) in slots.iter().enumerate() {
                out.push((format!("{name}/{i}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_tensors`] after `steps` steps.
    pub fn load_state(&mut self, saved: &HashMap<String, Tensor>, steps: i64) -> Result<()> {
        for ((name, _), slots) in self.params.iter().zip(&mut self.state) {
            for (i, t) in slots.iter_mut().enumerate() {
                let key = format!("{name}/{i}");
                let src = saved.get(&key).ok_or_else(|| {
                    Error::Unsupported(format!("checkpoint has no optimiser state `{key}`: was it written by another optimiser?"))
                })?;
                if src.size() != t.size() {
                    return Err(Error::Unsupported(format!(
                        "checkpoint optimiser state `{key}` has shape {:?}, expected {:?}",
                        src.size(),
                        t.size()
                    )));
                }
                tch::no_grad(|| t.copy_(src));
            }
        }
        self.step = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::*;

    /// Minimises (w - 3)² and checks the optimiser gets there.
    fn converges(kind: OptimizerKind, lr: f64) -> f64 {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().zeros("w", &[1]);
        let spec = TrainingSpec {
            optimizer: kind,
            momentum: 0.9,
            nesterov: kind == OptimizerKind::Sgd,
            ..Default::default()
        };
        let mut opt = Optimizer::new(&vs, &spec);
        for _ in 0..500 {
            opt.zero_grad();
            (&w - 3.0).square().sum(Kind::Float).backward();
            opt.step(lr).unwrap();
        }
        f64::try_from(w.sum(Kind::Double)).unwrap()
    }

    #[test]
    fn every_optimizer_minimises_a_quadratic() {
        for (kind, lr) in [
            (OptimizerKind::Sgd, 0.01),
            (OptimizerKind::Adam, 0.05),
            (OptimizerKind::Adamw, 0.05),
        ] {
            let w = converges(kind, lr);
            assert!((w - 3.0).abs() < 0.05, "{kind:?} ended at {w}");
        }
    }

    #[test]
    fn adam_first_step_matches_pytorch() {
        // torch.optim.Adam([w], lr=0.1) with w=1, loss=w² takes w to 0.9 on its first step.
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().ones("w", &[1]);
        let mut opt = Optimizer::new(
            &vs,
            &TrainingSpec {
                optimizer: OptimizerKind::Adam,
                ..Default::default()
            },
        );
        opt.zero_grad();
        w.square().sum(Kind::Float).backward();
        opt.step(0.1).unwrap();
        let w = f64::try_from(w.sum(Kind::Double)).unwrap();
        assert!((w - 0.9).abs() < 1e-6, "{w}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().ones("w", &[4]);
        let mut opt = Optimizer::new(&vs, &TrainingSpec::default());
        (&w * 10.0).sum(Kind::Float).backward(); // gradient 10 in each of 4 entries: norm 20
        let before = opt.clip_grad_norm(1.0);
        assert!((before - 20.0).abs() < 1e-4);
        let after = f64::try_from(w.grad().square().sum(Kind::Double).sqrt()).unwrap();
        assert!((after - 1.0).abs() < 1e-3, "{after}");
    }

    #[test]
    fn state_round_trips() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().ones("w", &[3]);
        let mut opt = Optimizer::new(&vs, &TrainingSpec::default());
        w.square().sum(Kind::Float).backward();
        opt.step(0.1).unwrap();
        let saved: HashMap<String, Tensor> = opt
            .state_tensors()
            .into_iter()
            .map(|(k, t)| (k, t.copy()))
            .collect();
        assert_eq!(saved.len(), 2);
        let mut fresh = Optimizer::new(&vs, &TrainingSpec::default());
        fresh.load_state(&saved, 1).unwrap();
        assert_eq!(fresh.steps(), 1);
        assert!(fresh.state_tensors()[0].1.equal(&saved["w/0"]));
        let missing = HashMap::new();
        assert!(
            fresh
                .load_state(&missing, 1)
                .unwrap_err()
                .to_string()
                .contains("no optimiser state `w/0`")
        );
    }
}

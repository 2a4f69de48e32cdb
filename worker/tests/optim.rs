//! The optimisers step as PyTorch's do: the same problem, the same hyperparameters, 30 steps
//! here (Adam and AdamW through libtorch's fused kernel, SGD with Nesterov momentum) and in
//! `torch.optim` (its default, unfused implementation, run with the PyTorch in `.venv`), and the
//! parameters must agree to float precision. A run stopped and resumed from the saved state
//! must land on the same values as one that never stopped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use tch::{Device, Kind, Tensor, nn};
use trainfleet_core::job::{OptimizerKind, TrainingSpec};
use trainfleet_worker::train::optim::Optimizer;

const STEPS: usize = 30;

fn python() -> PathBuf {
    std::env::var_os("TRAINFLEET_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

/// The starting point and the problem: w1 (3×4) and w2 (5), loss = (Σ a·w1)² + Σ (w2 - b)²,
/// all values fixed.
fn start() -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let w1 = (0..12).map(|i| (i as f32 * 0.7).sin()).collect();
    let a = (0..12).map(|i| (i as f32 * 0.3).cos()).collect();
    let w2 = (0..5).map(|i| i as f32 * 0.25 - 0.5).collect();
    let b = (0..5).map(|i| 1.0 - i as f32 * 0.4).collect();
    (w1, a, w2, b)
}

fn spec(kind: OptimizerKind) -> TrainingSpec {
    TrainingSpec {
        optimizer: kind,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.1,
        ..Default::default()
    }
}

/// `STEPS` steps here, stopping after `stop_at` (if any) and resuming in a fresh optimiser.
fn ours(kind: OptimizerKind, lr: f64, stop_at: Option<usize>) -> Vec<f32> {
    let (w1, a, w2, b) = start();
    let vs = nn::VarStore::new(Device::Cpu);
    let p1 = vs.root().zeros("w1", &[3, 4]);
    let p2 = vs.root().zeros("w2", &[5]);
    tch::no_grad(|| {
        p1.shallow_clone()
            .copy_(&Tensor::from_slice(&w1).view([3, 4]));
        p2.shallow_clone().copy_(&Tensor::from_slice(&w2));
    });
    let (a, b) = (Tensor::from_slice(&a).view([3, 4]), Tensor::from_slice(&b));
    let mut opt = Optimizer::new(&vs, &spec(kind));
    for step in 0..STEPS {
        if stop_at == Some(step) {
            let saved: HashMap<String, Tensor> = opt
                .state_tensors()
                .into_iter()
                .map(|(k, t)| (k, t.copy()))
                .collect();
            opt = Optimizer::new(&vs, &spec(kind));
            opt.load_state(&saved, step as i64).unwrap();
        }
        opt.zero_grad();
        let loss = (&p1 * &a).sum(Kind::Float).square() + (&p2 - &b).square().sum(Kind::Float);
        loss.backward();
        opt.step(lr).unwrap();
    }
    let mut out = Vec::<f32>::try_from(p1.flatten(0, -1)).unwrap();
    out.extend(Vec::<f32>::try_from(&p2).unwrap());
    out
}

fn pytorch(kind: OptimizerKind, lr: f64) -> Vec<f32> {
    let (w1, a, w2, b) = start();
    let optimizer = match kind {
        OptimizerKind::Adam => format!("torch.optim.Adam([w1, w2], lr={lr}, weight_decay=0.1)"),
        OptimizerKind::Adamw => format!("torch.optim.AdamW([w1, w2], lr={lr}, weight_decay=0.1)"),
        OptimizerKind::Sgd => format!(
            "torch.optim.SGD([w1, w2], lr={lr}, momentum=0.9, nesterov=True, weight_decay=0.1)"
        ),
    };
    let script = format!(
        "import json, torch\n\
         w1 = torch.tensor({w1:?}).view(3, 4).requires_grad_()\n\
         a = torch.tensor({a:?}).view(3, 4)\n\
         w2 = torch.tensor({w2:?}).requires_grad_()\n\
         b = torch.tensor({b:?})\n\
         opt = {optimizer}\n\
         for _ in range({STEPS}):\n\
         \x20   opt.zero_grad()\n\
         \x20   ((w1 * a).sum() ** 2 + ((w2 - b) ** 2).sum()).backward()\n\
         \x20   opt.step()\n\
         print(json.dumps(w1.flatten().tolist() + w2.tolist()))\n"
    );
    let out = Command::new(python())
        .args(["-W", "ignore", "-c", &script])
        .output()
        .expect("the .venv Python (make setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 2e-6,
        "{what}: differs by up to {worst}\n ours    {got:?}\n pytorch {want:?}"
    );
}

#[test]
fn adam_adamw_and_sgd_step_as_torch_optim_does_and_resume_exactly() {
    for (kind, lr) in [
        (OptimizerKind::Adam, 0.05),
        (OptimizerKind::Adamw, 0.05),
        (OptimizerKind::Sgd, 0.01),
    ] {
        let uninterrupted = ours(kind, lr, None);
        assert_close(&format!("{kind:?}"), &uninterrupted, &pytorch(kind, lr));
        let resumed = ours(kind, lr, Some(11));
        assert_eq!(
            uninterrupted, resumed,
            "{kind:?}: resuming after 11 steps lands elsewhere"
        );
    }
}

//! Where a training step's time goes, when asked (`TRAINFLEET_PROFILE_PHASES=1`): the batch
//! gather (index, copy, normalise), the forward pass with the loss, the backward pass (with
//! zeroing the gradients), and the optimiser step (with clipping and the running sums). On a
//! GPU each phase ends with a device synchronisation, so the times are the kernels' and the
//! profile slows the run; on a CPU kernels are synchronous and the clock is all it costs.

use std::time::{Duration, Instant};

use tch::Device;

/// The environment variable that turns the profile on.
pub const ENV: &str = "TRAINFLEET_PROFILE_PHASES";

/// The phases of a step, in order.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    /// Index the batch, copy it to the device, normalise (and augment).
    Gather = 0,
    /// The model's forward pass and the loss.
    Forward = 1,
    /// Zeroing the gradients and the backward pass.
    Backward = 2,
    /// Clipping, the optimiser's update, the running loss and accuracy.
    Step = 3,
}

const NAMES: [&str; 4] = ["gather", "forward", "backward", "step"];

/// Accumulates each phase's time over an epoch; does nothing when off.
#[derive(Debug)]
pub struct PhaseClock {
    device: Option<Device>,
    last: Instant,
    total: [Duration; 4],
    steps: u64,
}

impl PhaseClock {
    /// On when [`ENV`] is `1`.
    pub fn from_env(device: Device) -> Self {
        let on = std::env::var(ENV).is_ok_and(|v| v == "1");
        Self {
            device: on.then_some(device),
            last: Instant::now(),
            total: [Duration::ZERO; 4],
            steps: 0,
        }
    }

    /// Starts a step's clock.
    pub fn start(&mut self) {
        if self.device.is_some() {
            self.last = Instant::now();
        }
    }

    /// Ends `phase`: its time since the previous mark is added to it.
    pub fn end(&mut self, phase: Phase) {
        let Some(device) = self.device else {
            return;
        };
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
        let now = Instant::now();
        self.total[phase as usize] += now - self.last;
        self.last = now;
        if matches!(phase, Phase::Step) {
            self.steps += 1;
        }
    }

    /// Logs the epoch's milliseconds per step for each phase, then starts over.
    pub fn report(&mut self, epoch: u32) {
        if self.device.is_none() || self.steps == 0 {
            return;
        }
        let per_step = |d: Duration| d.as_secs_f64() * 1e3 / self.steps as f64;
        let [gather, forward, backward, step] = self.total.map(per_step);
        tracing::info!(
            epoch,
            steps = self.steps,
            gather_ms = format!("{gather:.3}"),
            forward_ms = format!("{forward:.3}"),
            backward_ms = format!("{backward:.3}"),
            step_ms = format!("{step:.3}"),
            "phase times per step"
        );
        let line: Vec<String> = NAMES
            .iter()
            .zip(self.total.map(per_step))
            .map(|(n, ms)| format!("\"{n}\": {ms:.4}"))
            .collect();
        eprintln!("PHASES {{\"epoch\": {epoch}, {}}}", line.join(", "));
        self.total = [Duration::ZERO; 4];
        self.steps = 0;
    }
}

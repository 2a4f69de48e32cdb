//! Safe wrappers over `csrc/optim.cpp`: libtorch's fused multi-tensor Adam/AdamW step (one
//! kernel pass over each parameter, CPU and CUDA) and releasing a gradient, neither of which
//! `tch` binds.

use std::ffi::{CStr, c_char, c_int};

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Error, Result};

unsafe extern "C" {
    fn trainfleet_fused_adam(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        steps: *const *mut C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: c_int,
    ) -> *mut c_char;
    fn trainfleet_clear_grad(tensor: *mut C_tensor);
    fn trainfleet_free_message(message: *mut c_char);
}

/// The tensors of one fused Adam step, one entry per parameter (all the same length).
pub struct AdamGroup<'a> {
    /// Parameters, updated in place.
    pub params: Vec<&'a Tensor>,
    /// Their gradients.
    pub grads: Vec<&'a Tensor>,
    /// First moments, updated in place.
    pub exp_avgs: Vec<&'a Tensor>,
    /// Second moments, updated in place.
    pub exp_avg_sqs: Vec<&'a Tensor>,
    /// Float scalars: each parameter's step count, this step included.
    pub steps: Vec<&'a Tensor>,
}

/// Hyperparameters of a fused Adam step.
#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// Weight decay: L2 in the gradient for Adam, decoupled for AdamW.
    pub weight_decay: f64,
    /// ε.
    pub eps: f64,
    /// AdamW (decoupled decay) rather than Adam.
    pub decoupled: bool,
}

fn handles(tensors: &[&Tensor]) -> Vec<*mut C_tensor> {
    tensors
        .iter()
        .map(|t| t.as_ptr() as *mut C_tensor)
        .collect()
}

/// One step of `torch._fused_adam_` / `torch._fused_adamw_` over `group`.
pub fn adam_step(group: &AdamGroup<'_>, config: AdamConfig) -> Result<()> {
    let n = group.params.len();
    for len in [
        group.grads.len(),
        group.exp_avgs.len(),
        group.exp_avg_sqs.len(),
        group.steps.len(),
    ] {
        assert_eq!(
            len, n,
            "a fused Adam group has one of each tensor per parameter"
        );
    }
    if n == 0 {
        return Ok(());
    }
    let (p, g, m, v, s) = (
        handles(&group.params),
        handles(&group.grads),
        handles(&group.exp_avgs),
        handles(&group.exp_avg_sqs),
        handles(&group.steps),
    );
    // SAFETY: every handle is a live tensor borrowed for the duration of the call; the C++
    // side only reads the pointer arrays (n entries each) and updates the tensors in place.
    let message = unsafe {
        trainfleet_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            config.lr,
            config.beta1,
            config.beta2,
            config.weight_decay,
            config.eps,
            c_int::from(config.decoupled),
        )
    };
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string malloc'd by the C++ side, freed
    // right after it is copied.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { trainfleet_free_message(message) };
    Err(Error::Unsupported(format!(
        "the fused Adam step failed: {text}"
    )))
}

/// Drops `tensor`'s gradient, so the next backward pass writes a fresh one.
pub fn clear_grad(tensor: &Tensor) {
    // SAFETY: a live tensor; resetting its gradient is what `zero_grad(set_to_none=True)` does.
    unsafe { trainfleet_clear_grad(tensor.as_ptr() as *mut C_tensor) }
}

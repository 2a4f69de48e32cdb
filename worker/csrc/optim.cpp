// libtorch's fused multi-tensor Adam/AdamW step and gradient release, for the worker's
// optimiser (worker/src/train/fused.rs). `tch` leaves these out of its generated bindings; each
// function here is one ATen call. Tensors arrive as `at::Tensor*`, the handle `tch` passes to C.
// Errors come back as a malloc'd message (the caller frees it); nullptr means success.

#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

namespace {

std::vector<at::Tensor> list(at::Tensor **tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}

char *message(const char *what) {
  size_t len = std::strlen(what) + 1;
  char *copy = static_cast<char *>(std::malloc(len));
  if (copy != nullptr) std::memcpy(copy, what, len);
  return copy;
}

}  // namespace

extern "C" {

// One Adam (decoupled == 0: L2 decay in the gradient) or AdamW (decoupled == 1) step over n
// parameters. `steps` are float scalars holding each parameter's step count after this step.
char *trainfleet_fused_adam(at::Tensor **params, at::Tensor **grads, at::Tensor **exp_avgs,
                            at::Tensor **exp_avg_sqs, at::Tensor **steps, size_t n, double lr,
                            double beta1, double beta2, double weight_decay, double eps,
                            int decoupled) {
  try {
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n), v = list(exp_avg_sqs, n),
         s = list(steps, n);
    std::vector<at::Tensor> no_max;
    if (decoupled) {
      at::_fused_adamw_(p, g, m, v, no_max, s, lr, beta1, beta2, weight_decay, eps, false, false);
    } else {
      at::_fused_adam_(p, g, m, v, no_max, s, lr, beta1, beta2, weight_decay, eps, false, false);
    }
    return nullptr;
  } catch (const std::exception &e) {
    return message(e.what());
  }
}

// Drops a tensor's gradient (PyTorch's zero_grad(set_to_none=True)): the next backward pass
// writes a fresh one instead of adding into a zeroed buffer.
void trainfleet_clear_grad(at::Tensor *tensor) { tensor->mutable_grad().reset(); }

void trainfleet_free_message(char *message) { std::free(message); }
}

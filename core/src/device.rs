//! Compute devices a worker reports at registration.

/// CPU or CUDA GPU.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum DeviceKind {
    /// The host CPU (every worker has one).
    Cpu,
    /// An NVIDIA GPU seen by libtorch.
    Cuda,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        })
    }
}

/// One device a worker can train on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    /// CPU or CUDA.
    pub kind: DeviceKind,
    /// 0 for the CPU, N for `cuda:N`.
    pub index: u32,
    /// Model name as the hardware reports it.
    pub name: String,
    /// Host RAM for the CPU, device memory for a GPU; 0 when unknown.
    pub memory_bytes: u64,
    /// Logical cores (CPU only).
    pub cores: u32,
}

impl Device {
    /// The libtorch-style name: `cpu` or `cuda:N`.
    pub fn torch_name(&self) -> String {
        match self.kind {
            DeviceKind::Cpu => "cpu".to_owned(),
            DeviceKind::Cuda => format!("cuda:{}", self.index),
        }
    }
}

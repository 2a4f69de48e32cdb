//! The devices this worker can train on: always the CPU, plus every CUDA device libtorch sees.
//!
//! libtorch tells us how many CUDA devices there are but not their names or memory, so those
//! come from `nvidia-smi` (or the driver's /proc entries) when present. Names are for people;
//! scheduling only relies on kind, count and memory.

use std::process::Command;

use trainfleet_core::device::{Device, DeviceKind};

/// Detects devices. Never fails: what cannot be measured is reported as unknown (0 or a generic
/// name), since a worker with an unnamed GPU is still a worker with a GPU.
pub fn detect() -> Vec<Device> {
    let mut devices = vec![cpu()];
    let count = u32::try_from(tch::Cuda::device_count()).unwrap_or(0);
    if count > 0 {
        let smi = nvidia_smi();
        let visible = visible_ordinals();
        for index in 0..count {
            // With CUDA_VISIBLE_DEVICES=2,3 libtorch's cuda:0 is physical GPU 2.
            let physical = visible.get(index as usize).copied().unwrap_or(index);
            let known = smi.iter().find(|g| g.index == physical);
            devices.push(Device {
                kind: DeviceKind::Cuda,
                index,
                name: known
                    .map(|g| g.name.clone())
                    .unwrap_or_else(|| format!("CUDA device {index}")),
                memory_bytes: known.map_or(0, |g| g.memory_bytes),
                cores: 0,
            });
        }
    }
    devices
}

/// Whether libtorch can use CUDA in this process (false on CPU-only hosts, and on GPU hosts where
/// `libtorch_cuda` was not linked, which is exactly what the build script prevents).
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

fn cpu() -> Device {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| parse_meminfo_total(&text))
        .unwrap_or(0);
    Device {
        kind: DeviceKind::Cpu,
        index: 0,
        name,
        memory_bytes,
        cores,
    }
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn visible_ordinals() -> Vec<u32> {
    std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[derive(Debug, PartialEq)]
struct SmiGpu {
    index: u32,
    name: String,
    memory_bytes: u64,
}

fn nvidia_smi() -> Vec<SmiGpu> {
    let output = Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output();
    match output {
        Ok(out) if out.status.success() => parse_smi(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    }
}

fn parse_smi(text: &str) -> Vec<SmiGpu> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(',').map(str::trim);
            let index = fields.next()?.parse().ok()?;
            let name = fields.next()?.to_owned();
            let mib: u64 = fields.next()?.parse().ok()?;
            Some(SmiGpu {
                index,
                name,
                memory_bytes: mib * 1024 * 1024,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_always_there_and_measured_on_linux() {
        let devices = detect();
        let cpu = &devices[0];
        assert_eq!(cpu.kind, DeviceKind::Cpu);
        assert!(cpu.cores >= 1);
        assert!(!cpu.name.is_empty());
        if cfg!(target_os = "linux") {
            assert!(
                cpu.memory_bytes > 64 << 20,
                "MemTotal read from /proc/meminfo"
            );
        }
        let cuda = devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Cuda)
            .count();
        assert_eq!(cuda as i64, tch::Cuda::device_count());
    }

    #[test]
    fn parses_nvidia_smi_csv() {
        let text = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA A10G, 23028\ngarbage\n";
        let gpus = parse_smi(text);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpus[1].memory_bytes, 23028 * 1024 * 1024);
    }

    #[test]
    fn parses_meminfo() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       16384 kB\nMemFree: 1 kB\n"),
            Some(16384 * 1024)
        );
        assert_eq!(parse_meminfo_total("nothing"), None);
    }
}

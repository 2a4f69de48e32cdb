//! Scan benchmark: trainfleet's dataset scan against `sha256sum` over the same files, and an
//! incremental rescan of a large unchanged tree.
//!
//! 1. Full scan: `--files` files of `--file-kib` KiB in `--classes` class directories, hashed by
//!    `scan_imagefolder` (all cores, `full: true`) and by one `sha256sum` process over the same
//!    paths (through `xargs`, as a user would). Both read from the page cache (the files were
//!    just written, and each side runs once to warm before timing). Alternating order, medians.
//! 2. Incremental rescan: `--small-files` 1 KiB files, scanned once, then rescanned with the
//!    previous manifest: nothing is read, only listed and stat'ed.
//!
//! Prints one JSON object. `bench/scan.sh` builds and runs it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use trainfleet_core::manifest::{ScanOptions, scan_imagefolder};

#[derive(Debug, Parser)]
struct Args {
    /// Files in the full-scan tree.
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Size of each, KiB.
    #[arg(long, default_value_t = 256)]
    file_kib: usize,
    /// Class directories.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Timed rounds of each side.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Files in the incremental-rescan tree.
    #[arg(long, default_value_t = 100_000)]
    small_files: usize,
}

fn make_tree(root: &Path, files: usize, classes: usize, bytes: usize) -> anyhow::Result<()> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; bytes];
    for i in 0..files {
        let dir = root.join(format!("class{:03}", i % classes));
        std::fs::create_dir_all(&dir)?;
        for chunk in block.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(dir.join(format!("{i:07}.png")), &block)?;
    }
    Ok(())
}

fn sha256sum(root: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . -type f -name '*.png' -print0 | xargs -0 sha256sum > /dev/null")
        .current_dir(root)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "sha256sum failed");
    Ok(started.elapsed())
}

fn scan(root: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let scan = scan_imagefolder(
        root,
        None,
        ScanOptions {
            full: true,
            ..Default::default()
        },
    )?;
    let took = started.elapsed();
    anyhow::ensure!(scan.hashed == scan.manifest.files.len());
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let big = dir.path().join("big");
    make_tree(&big, args.files, args.classes, args.file_kib << 10)?;
    let bytes = (args.files * (args.file_kib << 10)) as f64;
    // Warm both (page cache, binaries), then alternate.
    scan(&big)?;
    sha256sum(&big)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        if round % 2 == 0 {
            ours.push(scan(&big)?);
            theirs.push(sha256sum(&big)?);
        } else {
            theirs.push(sha256sum(&big)?);
            ours.push(scan(&big)?);
        }
    }
    let (ours, theirs) = (median(ours), median(theirs));

    let small = dir.path().join("small");
    make_tree(&small, args.small_files, 100, 1024)?;
    let started = Instant::now();
    let first = scan_imagefolder(&small, None, ScanOptions::default())?;
    let first_secs = started.elapsed().as_secs_f64();
    let mut rescans = Vec::new();
    for _ in 0..args.rounds {
        let started = Instant::now();
        let again = scan_imagefolder(&small, Some(&first.manifest), ScanOptions::default())?;
        rescans.push(started.elapsed());
        anyhow::ensure!(again.hashed == 0 && again.manifest.root == first.manifest.root);
    }
    let result = serde_json::json!({
        "threads": rayon_threads(),
        "full_scan": {
            "files": args.files,
            "mib": bytes / (1 << 20) as f64,
            "trainfleet_seconds": ours,
            "sha256sum_seconds": theirs,
            "trainfleet_mib_per_sec": bytes / (1 << 20) as f64 / ours,
            "sha256sum_mib_per_sec": bytes / (1 << 20) as f64 / theirs,
            "speedup": theirs / ours,
        },
        "incremental": {
            "files": args.small_files,
            "first_scan_seconds": first_secs,
            "unchanged_rescan_seconds_median": median(rescans),
        },
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

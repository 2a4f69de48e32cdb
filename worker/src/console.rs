//! The worker's console front-end: what `trainfleet-worker train`, `devices` and `verify` print
//! (a progress bar, epoch lines, the test metrics, the report's path). `main.rs` parses the
//! flags and calls these.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use indicatif::{ProgressBar, ProgressStyle};
use trainfleet_core::job::JobSpec;

use crate::data::DataSettings;
use crate::devices;
use crate::train::{Event, RunOptions};

/// `trainfleet-worker train`: trains `spec` into `out` with a progress bar and epoch lines,
/// then prints the test metrics, the weights and the report. Ctrl-C (`cancel`) stops within one
/// batch with the last epoch checkpointed, and exits 130 saying how to resume.
pub fn train(
    spec: &JobSpec,
    job: &Path,
    data_dir: &DataSettings,
    out: &Path,
    resume: bool,
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} batches  {msg}  eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    // Epoch lines go to stdout whether or not the bar is drawn (it hides itself off a terminal).
    let say = |line: String| {
        if bar.is_hidden() {
            println!("{line}")
        } else {
            bar.println(line)
        }
    };
    let mut on_event = |event: &Event<'_>| match event {
        Event::Resumed { epoch } => say(format!(
            "resuming after epoch {epoch} from {}",
            out.display()
        )),
        Event::EpochStarted {
            epoch,
            epochs,
            batches,
        } => {
            bar.reset();
            bar.set_length(*batches);
            bar.set_prefix(format!("{epoch}/{epochs}"));
        }
        Event::Batch {
            batch,
            loss,
            images_per_sec,
            ..
        } => {
            bar.set_position(*batch);
            bar.set_message(format!("loss {loss:.4}  {images_per_sec:.0} img/s"));
        }
        Event::Epoch(r) => say(format!(
            "epoch {:>3}  train loss {:.4} acc {:.2}%  val {}  {:.0} img/s  lr {:.2e}",
            r.epoch,
            r.train_loss,
            r.train_accuracy * 100.0,
            match (r.val_loss, r.val_accuracy) {
                (Some(l), Some(a)) => format!("loss {l:.4} acc {:.2}%", a * 100.0),
                _ => "-".to_owned(),
            },
            r.images_per_sec,
            r.learning_rate
        )),
    };
    let options = RunOptions {
        resume,
        cancel: Some(cancel),
        report: true,
        ..Default::default()
    };
    let trained = match crate::job::run(spec, data_dir, out, &options, &mut on_event) {
        Ok(trained) => trained,
        Err(crate::Error::Cancelled) => {
            bar.abandon();
            eprintln!(
                "interrupted; the last completed epoch is checkpointed. Continue with:\n  \
                 trainfleet-worker train --config {} --out {} --resume",
                job.display(),
                out.display()
            );
            std::process::exit(130);
        }
        Err(e) => anyhow::bail!("{} ({})", e, job.display()),
    };
    bar.finish_and_clear();
    let test = &trained.outcome.test;
    println!(
        "test accuracy {:.2}%  macro-F1 {:.4}  loss {:.4}  ({} samples){}",
        test.accuracy * 100.0,
        test.macro_f1,
        test.loss,
        test.samples,
        test.top5_accuracy
            .map(|t| format!("  top-5 {:.2}%", t * 100.0))
            .unwrap_or_default()
    );
    if let Some(reason) = &trained.outcome.stopped_early {
        println!("stopped early: {reason}");
    }
    println!(
        "model: {} (sha256 {})",
        out.join("model.safetensors").display(),
        trained.card.weights_sha256
    );
    // The report: a failure to make it is said, and the run stands.
    let report = trained
        .report_parts
        .unwrap_or_else(|| Err("not gathered".into()))
        .map_err(crate::Error::Report)
        .and_then(|parts| {
            let dir = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_owned());
            let report = crate::report::build::standalone_report(
                spec,
                &trained.card,
                &trained.outcome.epochs,
                &parts,
                &format!("file://{}", dir.display()),
            );
            crate::report::write(&dir.join("report"), &report)
        });
    match report {
        Ok(written) => println!("report: file://{}", written.html.display()),
        Err(e) => eprintln!("warning: no report for this run: {e}"),
    }
    Ok(())
}

/// `trainfleet-worker devices`: what this machine offers libtorch, as JSON.
pub fn print_devices() -> anyhow::Result<()> {
    let devices: Vec<serde_json::Value> = devices::detect()
        .iter()
        .map(|d| {
            serde_json::json!({
                "device": d.torch_name(),
                "name": d.name,
                "memory_bytes": d.memory_bytes,
                "cores": d.cores,
            })
        })
        .collect();
    let report = serde_json::json!({
        "libtorch_version": crate::LIBTORCH_VERSION,
        "cuda_available": devices::cuda_available(),
        "devices": devices,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `trainfleet-worker verify`: the outcome of re-checking a trained run; an error when the
/// reloaded model does not reproduce its recorded predictions.
pub fn print_verified(verified: &crate::job::Verified) -> anyhow::Result<()> {
    println!(
        "weights sha256 {} verified; {} rebuilt; {}/{} test predictions match the recorded ones; accuracy {:.2}%",
        &verified.card.weights_sha256[..16],
        verified.card.model.arch.name(),
        verified.matching,
        verified.samples,
        verified.accuracy * 100.0
    );
    if verified.matching != verified.samples {
        anyhow::bail!("the reloaded model does not reproduce its recorded predictions");
    }
    Ok(())
}

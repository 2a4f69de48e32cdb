//! Models trained by earlier versions keep loading and verifying.
//!
//! `fixtures/trained-before-issue-14/` is a small `cnn` (batch norm, dropout, a hidden layer)
//! trained on synth-digits by the worker as it was before initialisation followed PyTorch's
//! (commit 4b970c5's parent), kept as that run wrote it. `trainfleet-worker verify` must still
//! accept it: the weights match their sha256, the model rebuilds from its card, and every test
//! prediction it recorded is reproduced on the regenerated data.

use std::path::Path;
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_model_trained_before_the_initialisation_change_still_verifies() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trained-before-issue-14");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    copy_dir(&fixture, &run);
    let verify = |run: &Path| {
        Command::new(env!("CARGO_BIN_EXE_trainfleet-worker"))
            .arg("verify")
            .arg(run)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap()
    };
    let out = verify(&run);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cnn rebuilt; 60/60 test predictions match the recorded ones"),
        "{stdout}"
    );

    // The check is real: one changed weight byte is refused.
    let weights = run.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let out = verify(&run);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sha256"), "{stderr}");
}

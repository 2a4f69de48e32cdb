//! Every input the fuzzers kept, replayed on stable: the seed and minimized corpus
//! (`bench/fuzz/corpus/<target>/`) and every input that once crashed a target
//! (`bench/fuzz/regressions/<target>/`, named for what it found). Each must run through its
//! target without a panic. `bench/fuzz.sh` runs the fuzzers themselves.

#[path = "../bench/fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("bench/fuzz")
        .join(kind)
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_kept_input_runs_through_its_target_without_a_panic() {
    let mut replayed = 0;
    for (name, target) in targets::TARGETS {
        let corpus = inputs("corpus", name);
        assert!(
            !corpus.is_empty(),
            "{name} has no corpus in bench/fuzz/corpus/{name}"
        );
        for path in corpus.iter().chain(&inputs("regressions", name)) {
            let data = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", path.display());
            replayed += 1;
        }
    }
    println!("{replayed} inputs replayed");
}

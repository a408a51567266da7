//! Every file of every corpus (`fuzz/corpus/<target>/`: the seeds and the `regression-*`
//! inputs that once crashed a reader) through its target, as the fuzzer calls it. A panic
//! here is a reader bug (or a regression of a fixed one); a target whose corpus is missing or
//! empty fails, so the corpora cannot silently disappear.

use ssl_fuzz_targets::{corpus_dir, TARGETS};

fn replay(name: &str) {
    let target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target `{name}`"))
        .1;
    let dir = corpus_dir(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| target(&data));
        assert!(outcome.is_ok(), "{name}: {} panicked", file.display());
    }
    eprintln!("{name}: {} inputs replayed", files.len());
}

#[test]
fn every_target_has_a_test_here() {
    let source = include_str!("replay.rs");
    for (name, _) in TARGETS {
        assert!(
            source.contains(&format!("fn {name}() {{\n    replay(\"{name}\")")),
            "no replay test for target `{name}`"
        );
    }
}

#[test]
fn dicom() {
    replay("dicom")
}

#[test]
fn image() {
    replay("image")
}

#[test]
fn cifar_binary() {
    replay("cifar_binary")
}

#[test]
fn cifar_pickle() {
    replay("cifar_pickle")
}

#[test]
fn csv_tables() {
    replay("csv_tables")
}

#[test]
fn run_config() {
    replay("run_config")
}

#[test]
fn augmentation_yaml() {
    replay("augmentation_yaml")
}

#[test]
fn checkpoint() {
    replay("checkpoint")
}

#[test]
fn build_info() {
    replay("build_info")
}

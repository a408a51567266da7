//! The command line of the built binary: `--version`, a command's `--help`, shell completions,
//! overrides after a command, and errors with their causes.

use e2e::*;

#[test]
fn version_names_the_libtorch_it_runs_on() {
    let run = ssl_host(&["--version"]);
    run.assert_ok();
    let line = run.stdout.trim();
    assert!(line.starts_with("ssl-host 0."), "{line}");
    // NCCL is compiled in by default (the set-up installs the CUDA headers it needs).
    for part in [
        "plugin-api ",
        "tch 0.24.0",
        "libtorch 2.11.0",
        "collectives: gloo, nccl",
    ] {
        assert!(line.contains(part), "`{line}` lacks `{part}`");
    }
}

#[test]
fn each_command_has_its_own_help() {
    let run = ssl_host(&["dump", "--help"]);
    run.assert_ok();
    for line in [
        "Usage: ssl-host dump",
        "--dataset=<NAME>",
        "--out=<DIR>",
        "--limit=<N>",
        "--<dataset parameter>=value",
    ] {
        assert!(
            run.stdout.contains(line),
            "dump --help lacks `{line}`:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("--model"), "{}", run.stdout);
    let top = ssl_host(&["--help"]);
    top.assert_ok();
    assert!(
        top.stdout.contains("make-rsna-csv") && top.stdout.contains("--plugin <PATH>"),
        "{}",
        top.stdout
    );
}

#[test]
fn completion_scripts() {
    let run = ssl_host(&["completions", "bash"]);
    run.assert_ok();
    assert!(
        run.stdout.contains("complete") && run.stdout.contains("inspect-checkpoint"),
        "{}",
        run.stdout
    );
    ssl_host(&["completions", "tcsh"]).assert_clear_error(&["tcsh", "bash"]);
}

#[test]
fn overrides_pass_through_a_command() {
    let run = ssl_host(&[
        "show-config",
        "--model=ShapesBYOL",
        "--encoder_params.cifar_stem=true",
        "--num_epochs=3",
    ]);
    run.assert_ok();
    assert!(run.stdout.contains("num_epochs = 3"), "{}", run.stdout);
    assert!(run.stdout.contains("cifar_stem = true"), "{}", run.stdout);
    ssl_host(&["show-config", "--model=ShapesBYOL", "--num_epoch=3"])
        .assert_clear_error(&["unknown parameter `num_epoch`", "did you mean `num_epochs`"]);
    ssl_host(&["dupm", "--dataset=Shapes"])
        .assert_clear_error(&["unknown command `dupm`", "did you mean `dump`"]);
    ssl_host(&[
        "export-encoder",
        "--checkpoint=run",
        "--out=e.safetensors",
        "--chekpoint=other",
    ])
    .assert_clear_error(&["unknown option --chekpoint", "did you mean --checkpoint"]);
}

#[test]
fn errors_print_each_cause_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = ssl_host(&[
        "--resume",
        &format!("--output_dir={}", dir.path().display()),
    ]);
    run.assert_clear_error(&["last.safetensors"]);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines[0].starts_with("error: --resume"), "{}", run.stderr);
    assert!(
        lines[1..].iter().any(|l| l.starts_with("caused by: ")),
        "{}",
        run.stderr
    );
}

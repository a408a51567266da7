//! `ssl-host list` and every way loading a plugin can fail: each is one clear error that names
//! the file, with exit code 1 and no panic report.

use e2e::*;
use std::path::{Path, PathBuf};

fn png_plugin() -> PathBuf {
    artifact("libexample_png_folder.so")
}

fn cnn_plugin() -> PathBuf {
    artifact("libexample_tiny_cnn.so")
}

#[test]
fn list_shows_builtins() {
    let run = ssl_host(&["list"]);
    run.assert_ok();
    assert!(run.stdout.contains("Shapes"), "{}", run.stdout);
    let shapes_line = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("Shapes"))
        .unwrap();
    assert!(shapes_line.contains("built-in"), "{shapes_line}");
    assert!(run.stdout.contains("libtorch 2.11.0"), "{}", run.stdout);
    let configs = run.stdout.split("model configs:").nth(1).unwrap();
    assert!(configs.contains("NIH_RSNA_BYOL"), "{configs}");
}

/// The plugin of docs/plugins.md ("Writing a plugin"), built exactly as written there (only
/// the plugin-api path filled in): it loads, its dataset dumps, and a misspelt parameter is an
/// error naming it.
#[test]
fn the_documented_plugin_builds_and_works() {
    let guide = std::fs::read_to_string(repo_root().join("docs/plugins.md")).unwrap();
    let section = &guide[guide.find("# Writing a plugin").expect("the section")..];
    let block = |lang: &str| -> String {
        let start = section
            .find(&format!("```{lang}\n"))
            .unwrap_or_else(|| panic!("no {lang} block"))
            + lang.len()
            + 4;
        let len = section[start..].find("```").unwrap();
        section[start..start + len].to_string()
    };
    let work = target_dir()
        .join("fixtures")
        .join("src")
        .join("docs-plugin");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("src")).unwrap();
    std::fs::write(work.join("src/lib.rs"), block("rust")).unwrap();
    let manifest = block("toml").replace(
        "/path/to/ssl-host/plugin-api",
        repo_root().join("plugin-api").to_str().unwrap(),
    );
    // Its own workspace root: the fixture lies inside this repository's folder.
    std::fs::write(
        work.join("Cargo.toml"),
        format!("{manifest}\n[workspace]\n"),
    )
    .unwrap();
    let so = build_fixture(&work, "my_plugin");
    let so = so.to_str().unwrap();

    let listed = ssl_host(&["--plugin", so, "list"]);
    listed.assert_ok();
    assert!(listed.stdout.contains("Noise"), "{}", listed.stdout);
    let out = tempfile::tempdir().unwrap();
    let dump = format!("--out={}", out.path().display());
    ssl_host(&["--plugin", so, "dump", "--dataset=Noise", &dump, "--len=5"]).assert_ok();
    let labels = std::fs::read_to_string(out.path().join("labels.csv")).unwrap();
    assert_eq!(labels.lines().count(), 6, "{labels}");
    ssl_host(&["--plugin", so, "dump", "--dataset=Noise", &dump, "--lne=5"])
        .assert_clear_error(&["unknown parameter `lne`", "accepted: root, split, len"]);
}

#[test]
fn list_shows_external_plugins_with_their_paths() {
    let png = png_plugin();
    let cnn = cnn_plugin();
    // --plugin before and after the command.
    let run = ssl_host(&[
        "--plugin",
        png.to_str().unwrap(),
        "list",
        "--plugin",
        cnn.to_str().unwrap(),
    ]);
    run.assert_ok();
    for (entry, path) in [("PngFolder", &png), ("TinyCNN", &cnn)] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(entry))
            .unwrap_or_else(|| panic!("{entry} missing:\n{}", run.stdout));
        assert!(line.contains(path.to_str().unwrap()), "{line}");
        assert!(line.contains("0.1.0"), "version missing: {line}");
    }
    assert!(run.stdout.contains("Shapes"), "built-ins stay listed");
}

#[test]
fn missing_file() {
    ssl_host(&["--plugin", "/nonexistent/libnothing.so", "list"])
        .assert_clear_error(&["/nonexistent/libnothing.so", "does not exist"]);
}

#[test]
fn not_a_shared_library() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, "this is a text file, not an ELF library\n").unwrap();
    ssl_host(&["list", "--plugin", fake.to_str().unwrap()])
        .assert_clear_error(&[fake.to_str().unwrap(), "not a shared library"]);
}

#[test]
fn truncated_shared_library() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(png_plugin()).unwrap();
    let cut = dir.path().join("libcut.so");
    std::fs::write(&cut, &bytes[..4096]).unwrap();
    ssl_host(&["list", "--plugin", cut.to_str().unwrap()])
        .assert_clear_error(&[cut.to_str().unwrap(), "truncated ELF file"]);
}

#[test]
fn shared_library_that_is_not_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("other.c");
    std::fs::write(&source, "int answer(void) { return 42; }\n").unwrap();
    let so = dir.path().join("libother.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(status.success());
    ssl_host(&["--plugin", so.to_str().unwrap(), "list"])
        .assert_clear_error(&[so.to_str().unwrap(), "not an ssl-host plugin"]);
}

/// Copies the minimal fixture plugin next to a copy of plugin-api patched by `patch`, builds
/// it, and returns the `.so`.
fn build_against_patched_api(name: &str, patch: impl Fn(&Path)) -> PathBuf {
    let work = target_dir().join("fixtures").join("src").join(name);
    let _ = std::fs::remove_dir_all(&work);
    copy_dir(&repo_root().join("tests/fixtures/minimal-dataset"), &work);
    copy_dir(
        &repo_root().join("plugin-api/src"),
        &work.join("plugin-api/src"),
    );
    for file in ["Cargo.toml", "build.rs"] {
        std::fs::copy(
            repo_root().join("plugin-api").join(file),
            work.join("plugin-api").join(file),
        )
        .unwrap();
    }
    let manifest = work.join("Cargo.toml");
    // A package and library name of its own, so parallel fixture builds do not overwrite
    // each other's .so in the shared target directory.
    let lib_name = format!("minimal_dataset_{}", name.replace('-', "_"));
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace(
            "path = \"../../../plugin-api\"",
            &format!("path = \"plugin-api\", package = \"ssl-plugin-api-{name}\""),
        )
        .replace(
            "name = \"minimal-dataset\"",
            &format!("name = \"minimal-dataset-{name}\""),
        )
        .replace(
            "name = \"minimal_dataset\"",
            &format!("name = \"{lib_name}\""),
        );
    std::fs::write(&manifest, text).unwrap();
    // The copy is its own package too: cargo names the artifacts of workspace members by name
    // and version only, so an unrenamed copy would overwrite the real plugin-api's.
    replace_in(
        &work.join("plugin-api/Cargo.toml"),
        "name = \"ssl-plugin-api\"",
        &format!("name = \"ssl-plugin-api-{name}\""),
    );
    patch(&work.join("plugin-api"));
    build_fixture(&work, &lib_name)
}

fn replace_in(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.contains(from),
        "{} no longer contains `{from}`; update the test",
        file.display()
    );
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn plugin_built_against_another_plugin_api() {
    let so = build_against_patched_api("other-api-version", |api| {
        replace_in(
            &api.join("Cargo.toml"),
            "version = \"0.1.0\"",
            "version = \"0.2.0\"",
        );
    });
    ssl_host(&["--plugin", so.to_str().unwrap(), "list"]).assert_clear_error(&[
        so.to_str().unwrap(),
        "plugin-api: plugin built against 0.2.0, host provides 0.1.0",
    ]);
}

#[test]
fn plugin_built_against_another_libtorch_and_variant() {
    let so = build_against_patched_api("other-libtorch", |api| {
        replace_in(
            &api.join("build.rs"),
            "let (tch, libtorch, variant) = torch_build();",
            "let (tch, libtorch, variant) = (\"0.23.0\", \"2.10.0+cpu\", \"cpu\");",
        );
    });
    let run = ssl_host(&["--plugin", so.to_str().unwrap(), "list"]);
    run.assert_clear_error(&[
        so.to_str().unwrap(),
        "tch: plugin built against 0.23.0",
        "libtorch: plugin built against 2.10.0+cpu",
    ]);
    // The host's own libtorch build from the wheel is the CUDA one.
    assert!(
        run.stderr
            .contains("libtorch build (cpu/cuda): plugin built against cpu"),
        "{}",
        run.stderr
    );
}

#[test]
fn two_plugins_offering_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("libexample_png_folder_copy.so");
    std::fs::copy(png_plugin(), &copy).unwrap();
    let png = png_plugin();
    ssl_host(&[
        "--plugin",
        png.to_str().unwrap(),
        "--plugin",
        copy.to_str().unwrap(),
        "list",
    ])
    .assert_clear_error(&[
        "dataset `PngFolder` is offered by two plugins",
        png.to_str().unwrap(),
        copy.to_str().unwrap(),
    ]);
}

#[test]
fn plugin_panics_become_errors() {
    let so = build_fixture(
        &repo_root().join("tests/fixtures/panicky-dataset"),
        "panicky_dataset",
    );
    let out = tempfile::tempdir().unwrap();
    let run = ssl_host(&[
        "--plugin",
        so.to_str().unwrap(),
        "dump",
        "--dataset=PanickyGet",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    // `--out DIR` (space) is not an option form; use the right one.
    assert_eq!(run.code, Some(1));
    let run = ssl_host(&[
        "--plugin",
        so.to_str().unwrap(),
        "dump",
        "--dataset=PanickyGet",
        &format!("--out={}", out.path().display()),
    ]);
    run.assert_clear_error(&[
        "plugin code panicked in Dataset::get",
        "index out of bounds",
        "src/lib.rs",
    ]);
    let run = ssl_host(&[
        "--plugin",
        so.to_str().unwrap(),
        "dump",
        "--dataset=PanickyFactory",
        &format!("--out={}", out.path().display()),
    ]);
    run.assert_clear_error(&[
        "creating dataset `PanickyFactory`",
        "plugin code panicked",
        "`Option::unwrap()` on a `None` value",
    ]);
}

#[test]
fn dataset_plugin_builds_and_loads_without_libtorch() {
    let so = build_workspace_package_alone("example-png-folder", "example_png_folder");
    let needed = needed_libraries(&so);
    assert!(
        !needed.is_empty(),
        "readelf found no NEEDED entries in {}",
        so.display()
    );
    assert!(
        !needed
            .iter()
            .any(|l| l.contains("torch") || l.contains("c10")),
        "{needed:?}"
    );
    let run = ssl_host(&["list", "--plugin", so.to_str().unwrap()]);
    run.assert_ok();
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("example-png-folder") && l.contains("plugin-api"))
        .unwrap();
    assert!(line.contains("no libtorch"), "{line}");
}

fn minimal_plugin() -> PathBuf {
    build_fixture(
        &repo_root().join("tests/fixtures/minimal-dataset"),
        "minimal_dataset",
    )
}

/// A third-party dataset declares small images as CIFAR does; the host reads it through the
/// real `.so` ABI without creating the dataset, and `list` shows it.
#[test]
fn a_plugin_declares_small_images_through_the_abi() {
    let so = minimal_plugin();
    let plugin = ssl_plugin_api::host::load_plugin_file(&so).expect("the fixture loads");
    let factory = plugin
        .datasets
        .iter()
        .find(|f| f.name() == "OnePixel")
        .expect("OnePixel is offered");
    let info = factory.info();
    assert!(info.small_images, "{info:?}");
    assert_eq!(info.image_kind, ssl_plugin_api::ImageKind::Rgb);
    assert!(
        !info.varying_sizes && info.eval_transforms.is_empty(),
        "{info:?}"
    );

    let run = ssl_host(&["--plugin", so.to_str().unwrap(), "list"]);
    run.assert_ok();
    let mut lines = run
        .stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("OnePixel"));
    assert!(lines.next().is_some(), "OnePixel missing:\n{}", run.stdout);
    let declared = lines.next().unwrap_or_default();
    assert!(declared.contains("declares: small images"), "{declared}");
}

/// An error's causes cross the boundary: the host sees the plugin's chain as a chain and the
/// user reads every link.
#[test]
fn plugin_errors_keep_their_causes_across_the_abi() {
    let so = minimal_plugin();
    let plugin = ssl_plugin_api::host::load_plugin_file(&so).expect("the fixture loads");
    let factory = plugin
        .datasets
        .iter()
        .find(|f| f.name() == "OnePixel")
        .unwrap();
    let params = ssl_plugin_api::Params::from_json(r#"{"fail": true}"#).unwrap();
    let error = factory.create(&params).err().expect("the factory fails");
    let mut chain = vec![error.to_string()];
    let mut next = std::error::Error::source(&error);
    while let Some(cause) = next {
        chain.push(cause.to_string());
        next = cause.source();
    }
    assert_eq!(
        chain,
        [
            "creating dataset `OnePixel`",
            "opening the pixel table",
            "no pixel table here"
        ]
    );

    let out = tempfile::tempdir().unwrap();
    ssl_host(&[
        "--plugin",
        so.to_str().unwrap(),
        "dump",
        "--dataset=OnePixel",
        "--fail=true",
        &format!("--out={}", out.path().display()),
    ])
    .assert_clear_error(&[
        "creating dataset `OnePixel`",
        "opening the pixel table",
        "no pixel table here",
    ]);
}

/// Plugins compile plugin-api without its host side (feature `host`: the loader); ssl-host
/// enables it.
#[test]
fn plugins_do_not_compile_the_host_loader() {
    let features_of_api = |package: &str| -> String {
        let output = std::process::Command::new(env!("CARGO"))
            .args([
                "tree",
                "--offline",
                "-e",
                "features",
                "-i",
                "ssl-plugin-api",
                "-p",
            ])
            .arg(package)
            .current_dir(repo_root())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo tree -p {package} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for plugin in ["example-png-folder", "example-tiny-cnn"] {
        let tree = features_of_api(plugin);
        assert!(tree.contains(&format!("{plugin} v0.1.0")), "{tree}");
        assert!(!tree.contains("ssl-plugin-api feature \"host\""), "{tree}");
    }
    let host = features_of_api("ssl-host");
    assert!(host.contains("ssl-plugin-api feature \"host\""), "{host}");
}

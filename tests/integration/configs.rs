//! Every shipped config parses, validates, and dry-runs against the shipped data.

use crate::common;

use edco::config::Config;
use edco::model::config::Arch;

#[test]
fn shipped_configs_are_valid_and_dry_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Data paths in the configs are relative to the repository root, as users run them.
    std::env::set_current_dir(root).unwrap();
    let mut names = Vec::new();
    // Each dry run into a directory of its own, so runs a user made do not count; the smoke
    // config's model (made by `init-model` in CI) is a tiny one here.
    let runs = tempfile::tempdir().unwrap();
    let tiny = common::tiny_model(Arch::Qwen3, true, 0);
    for entry in std::fs::read_dir(root.join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut overrides = vec![format!(
            "run.output_dir={}",
            runs.path().join(&name).display()
        )];
        if name == "smoke" {
            overrides.push(format!(
                "model.source={}",
                tiny.path().join("model").display()
            ));
        }
        let cfg =
            Config::load(&path, &overrides).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        edco::trainer::run(&cfg, None, true)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(
        names,
        [
            "demo.toml",
            "grpo_law.toml",
            "sft_medical.toml",
            "sft_telecom.toml",
            "smoke.toml"
        ]
    );
}

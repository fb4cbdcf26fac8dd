//! Every shipped config parses, validates, and dry-runs against the shipped data.

use edco::config::Config;

#[test]
fn shipped_configs_are_valid_and_dry_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Data paths in the configs are relative to the repository root, as users run them.
    std::env::set_current_dir(root).unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root.join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let cfg = Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
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

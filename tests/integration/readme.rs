//! The README's config reference cannot drift from the code: every key of the config (from
//! serialising the defaults) must have its row, and every row must name a real key.

fn keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() => keys(&path, t, out),
            _ => out.push(path),
        }
    }
}

#[test]
fn every_config_key_is_documented_in_the_readme() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Config reference")
        .nth(1)
        .expect("README has a Config reference section");
    let section = section.split("\n## ").next().unwrap();
    let defaults = toml::Value::try_from(edco::config::Config::default()).unwrap();
    let mut code_keys = Vec::new();
    keys("", defaults.as_table().unwrap(), &mut code_keys);
    assert!(code_keys.len() > 60, "{code_keys:?}");
    let rows: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next().map(str::to_string))
        .collect();
    let missing: Vec<&String> = code_keys.iter().filter(|k| !rows.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "config keys missing from the README: {missing:?}"
    );
    let unknown: Vec<&String> = rows.iter().filter(|r| !code_keys.contains(r)).collect();
    assert!(
        unknown.is_empty(),
        "README rows that are not config keys: {unknown:?}"
    );
}

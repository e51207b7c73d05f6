//! Every file in config/ is valid, and `weir check` reports every error with file and line.

use super::common::*;

#[test]
fn every_shipped_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let out = std::process::Command::new(WEIR)
            .args(["check", "--config"])
            .arg(&path)
            .env("WEIR_ADMIN_TOKEN", "example-token")
            .current_dir(dir.join(".."))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "config/ holds a quickstart and a fuller example"
    );
}

#[test]
fn check_lists_every_error_with_location() {
    let (ok, out) = weir_check(
        r#"
[server]
listen = ["127.0.0.1:8080"]
trusted_proxies = ["not-a-cidr"]

[[upstreams]]
name = "a"
targets = ["127.0.0.1:1"]

[[routes]]
name = "r"
paths = ["~(unclosed"]
upstream = "missing"
"#,
    );
    assert!(!ok);
    assert!(
        out.contains("weir.toml:4: `server.trusted_proxies[0]`"),
        "{out}"
    );
    assert!(
        out.contains("weir.toml:12: `routes[0].paths[0]`: bad regex"),
        "{out}"
    );
    assert!(
        out.contains("weir.toml:13: `routes[0].upstream`: unknown upstream `missing`"),
        "{out}"
    );
}

#[test]
fn check_reports_syntax_errors_with_line() {
    let (ok, out) = weir_check("[server]\nlisten = [\"127.0.0.1:8080\"\n");
    assert!(!ok);
    assert!(out.contains("weir.toml:"), "{out}");
    let (ok, out) = weir_check("[server]\nlisten = [\"127.0.0.1:8080\"]\ngrace_period = 5\n");
    assert!(!ok);
    assert!(
        out.contains("weir.toml:3") && out.contains("\"2s\""),
        "{out}"
    );
}

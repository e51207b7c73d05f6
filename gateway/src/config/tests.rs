//! Every kind of config error, each checked for its file, line, key and advice.

use std::path::Path;

use super::*;

const BASE: &str = r#"
[server]
listen = ["127.0.0.1:8080"]

[[upstreams]]
name = "users"
targets = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3 }]

[[routes]]
name = "users"
paths = ["/v1/users"]
upstream = "users"
"#;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str(Path::new("weir.toml"), text, |k| match k {
        "TOKEN" => Some("s3cr\"et".into()),
        _ => None,
    })
}

/// The single error of a config, asserting it names `key` on `line`.
fn one_error(text: &str, key: &str, line: usize, advice: &str) -> ConfigError {
    let errs = load(text).expect_err("config should be rejected").0;
    let e = errs
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error for `{key}` in {errs:#?}"))
        .clone();
    assert_eq!(e.line, Some(line), "line of `{key}`: {e}");
    assert!(
        e.message.contains(advice),
        "`{}` should contain `{advice}`",
        e.message
    );
    assert!(
        e.to_string()
            .starts_with(&format!("weir.toml:{line}: `{key}`")),
        "{e}"
    );
    e
}

#[test]
fn base_config_loads_with_defaults() {
    let c = load(BASE).unwrap();
    assert_eq!(c.upstreams[0].targets[1].weight(), 3);
    assert_eq!(c.upstreams[0].timeouts.connect, Dur::secs(2));
    assert_eq!(c.admin.listen, "127.0.0.1:9901");
    assert!(c.server.reject_ambiguous_framing);
}

#[test]
fn unknown_route_upstream() {
    let text = BASE.replace("upstream = \"users\"", "upstream = \"nope\"");
    one_error(
        &text,
        "routes[0].upstream",
        12,
        "unknown upstream `nope`; defined upstreams: users",
    );
}

#[test]
fn duplicate_names() {
    let text = format!("{BASE}\n[[routes]]\nname = \"users\"\nupstream = \"users\"\n");
    one_error(&text, "routes[1].name", 15, "duplicate route name");
    let text = format!("{BASE}\n[[upstreams]]\nname = \"users\"\ntargets = [\"127.0.0.1:1\"]\n");
    one_error(&text, "upstreams[1].name", 15, "duplicate upstream name");
}

#[test]
fn bad_regex() {
    let text = BASE.replace("\"/v1/users\"", "\"/ok\", \"~^/v1/(\"");
    one_error(&text, "routes[0].paths[1]", 11, "bad regex");
}

#[test]
fn bad_cidr() {
    let text = BASE.replace(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"127.0.0.1:8080\"]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/99\"]",
    );
    one_error(&text, "server.trusted_proxies[1]", 4, "not a CIDR");
}

#[test]
fn bad_duration_names_line_and_units() {
    let text = BASE.replace(
        "weight = 3 }]",
        "weight = 3 }]\ntimeouts = { connect = \"2 parsecs\" }",
    );
    let errs = load(&text).unwrap_err().0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(8));
    assert!(errs[0].message.contains("invalid duration"), "{}", errs[0]);
    assert!(errs[0].message.contains("\"250ms\""));
}

#[test]
fn unknown_field_is_named() {
    let text = BASE.replace("paths = [", "pahts = [");
    let errs = load(&text).unwrap_err().0;
    assert_eq!(errs[0].key, "pahts");
    assert_eq!(errs[0].line, Some(11));
    assert!(errs[0].message.contains("expected one of"), "{}", errs[0]);
}

#[test]
fn bad_listen_address_and_threads() {
    let text = BASE.replace("127.0.0.1:8080", "localhost") + "";
    one_error(&text, "server.listen[0]", 3, "IP:PORT");
    let text = BASE.replace("listen = [", "threads = 0\nlisten = [");
    one_error(&text, "server.threads", 3, "1 to 1024");
}

#[test]
fn admin_beyond_loopback_needs_token() {
    let text = format!("[admin]\nlisten = \"0.0.0.0:9901\"\n{BASE}");
    one_error(&text, "admin.listen", 2, "without a token");
    let ok = format!("[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"${{TOKEN}}\"\n{BASE}");
    let c = load(&ok).unwrap();
    assert_eq!(
        c.admin.token.as_deref(),
        Some("s3cr\"et"),
        "substituted values stay literal"
    );
}

#[test]
fn unset_env_var_names_its_line() {
    let text = format!("{BASE}\n[admin]\ntoken = \"${{MISSING_VAR}}\"\n");
    let errs = load(&text).unwrap_err().0;
    assert_eq!(errs[0].line, Some(15));
    assert!(errs[0].message.contains("`MISSING_VAR` is not set"));
    let literal = format!("{BASE}\n[[routes]]\nname = \"d\"\npaths = [\"=/d\"]\nrespond = {{ status = 200, body = \"$${{x}}\" }}\n");
    let c = load(&literal).unwrap();
    assert_eq!(c.routes[1].respond.as_ref().unwrap().body, "${x}");
}

#[test]
fn env_vars_in_comments_are_left_alone() {
    // A commented-out line naming an unset variable, a `#` inside strings (where
    // substitution still happens) and a multi-line string holding a `#`.
    let text = format!(
        "{BASE}\n# token = \"${{MISSING_VAR}}\"\n[[routes]]\nname = \"d\"\npaths = [\"=/d#\"] # ${{NOPE}}\nrespond = {{ status = 200, body = \"\"\"\nx # ${{TOKEN}}\n'# \"\"\" }} # ${{ALSO_NOT}}\n"
    );
    let c = load(&text).unwrap();
    assert_eq!(c.routes[1].paths, ["=/d#"]);
    assert_eq!(
        c.routes[1].respond.as_ref().unwrap().body,
        "x # s3cr\"et\n'# "
    );
    assert_eq!(comment_start("a = 'x#' # c", &mut None), Some(9));
    assert_eq!(comment_start(r##"a = "\"#" # c"##, &mut None), Some(10));
}

#[test]
fn route_needs_exactly_one_action() {
    let text = BASE.replace("upstream = \"users\"\n", "");
    let errs = load(&text).unwrap_err().0;
    assert!(errs
        .iter()
        .any(|e| e.key == "routes[0]" && e.message.contains("needs an action")));
    let both = BASE.replace(
        "upstream = \"users\"",
        "upstream = \"users\"\nrespond = { status = 200 }",
    );
    one_error(&both, "routes[0].respond", 13, "not both");
}

#[test]
fn upstream_rules() {
    let text = BASE.replace("weight = 3", "weight = 0");
    one_error(&text, "upstreams[0].targets[1].weight", 7, "1 to 10000");
    let text = BASE.replace("\"127.0.0.1:9001\"", "\"127.0.0.1:9002\"");
    one_error(&text, "upstreams[0].targets[1]", 7, "listed twice");
    let text = BASE.replace("weight = 3 }]", "weight = 3 }]\nhash_on = \"ip\"");
    one_error(&text, "upstreams[0].hash_on", 8, "consistent_hash");
    let text = BASE.replace(
        "weight = 3 }]",
        "weight = 3 }]\nlb = \"consistent_hash\"\nhash_on = \"body\"",
    );
    one_error(&text, "upstreams[0].hash_on", 9, "header:NAME");
    let text = BASE.replace("weight = 3 }]", "weight = 3 }]\nretry_on_status = [404]");
    one_error(
        &text,
        "upstreams[0].retry_on_status[0]",
        8,
        "only 500, 502, 503 and 504",
    );
    let text = BASE.replace("\"127.0.0.1:9001\"", "\"no-port-here\"");
    one_error(&text, "upstreams[0].targets[0]", 7, "no port");
}

#[test]
fn bad_lb_kind_lists_valid_ones() {
    let text = BASE.replace("weight = 3 }]", "weight = 3 }]\nlb = \"fastest\"");
    let errs = load(&text).unwrap_err().0;
    assert_eq!(errs[0].line, Some(8));
    assert!(errs[0].message.contains("round_robin"), "{}", errs[0]);
}

#[test]
fn host_and_header_rules() {
    let text = BASE.replace("paths = [", "hosts = [\"API.example.com\"]\npaths = [");
    one_error(&text, "routes[0].hosts[0]", 11, "lower-case");
    let text = BASE.replace(
        "upstream = \"users\"",
        "upstream = \"users\"\nrequest_headers = { set = { \"bad name\" = \"v\" } }",
    );
    one_error(
        &text,
        "routes[0].request_headers.set.bad name",
        13,
        "not a valid header name",
    );
}

#[test]
fn several_errors_reported_together() {
    let text = BASE
        .replace("upstream = \"users\"", "upstream = \"nope\"")
        .replace("weight = 3", "weight = 0");
    assert_eq!(load(&text).unwrap_err().0.len(), 2);
}

#[test]
fn redaction_hides_tokens() {
    let ok = format!("[admin]\ntoken = \"${{TOKEN}}\"\n{BASE}");
    let v = redacted_json(&load(&ok).unwrap());
    assert_eq!(v["admin"]["token"], "<redacted>");
    assert_eq!(v["routes"][0]["name"], "users");
}

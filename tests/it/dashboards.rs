//! What operators import: the Grafana dashboard (`examples/grafana/rtcgate.json`) and the
//! Prometheus alert rules (`examples/prometheus/rtcgate-rules.yml`, with their unit tests in
//! `rtcgate-rules.test.yml`). Their queries parse, they name only metrics, labels and label
//! values rtcgate exports (the README's table and a live scrape), the alerts fire when they
//! should and not otherwise, and the dashboard has the panels the README promises.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::*;

const DASHBOARD: &str = "examples/grafana/rtcgate.json";
const RULES: &str = "examples/prometheus/rtcgate-rules.yml";
const RULE_TESTS: &str = "examples/prometheus/rtcgate-rules.test.yml";

/// The panels the README promises, each with a metric its queries must plot.
const PANELS: [(&str, &str); 13] = [
    ("Pool headroom", "rtcgate_pool_headroom"),
    ("Sessions per backend", "rtcgate_backend_max_sessions"),
    ("Rooms per backend", "rtcgate_backend_rooms"),
    ("Backend states", "rtcgate_backend_state"),
    ("Health checks by result", "rtcgate_health_checks_total"),
    ("Requests by code", "rtcgate_requests_total"),
    ("Request latency", "rtcgate_request_duration_seconds_bucket"),
    ("Sticky outcomes", "rtcgate_sticky_total"),
    ("Rejections by reason", "rtcgate_rejected_total"),
    ("Tunnels opened", "rtcgate_websocket_tunnels_total"),
    ("Tunnels closed by reason", "rtcgate_tunnels_closed_total"),
    ("Config reloads", "rtcgate_config_reloads_total"),
    (
        "TLS handshake failures",
        "rtcgate_tls_handshake_failures_total",
    ),
];

/// The alerts the README describes.
const ALERTS: [&str; 7] = [
    "RtcgatePoolHeadroomLow",
    "RtcgateBackendDown",
    "RtcgateAllBackendsDown",
    "RtcgateReloadFailing",
    "RtcgateRejectionsRising",
    "RtcgateTlsHandshakeFailuresRising",
    "RtcgateScaleHookFailing",
];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs promtool: its success and its output, or `None` when it is not installed.
fn promtool(args: &[&str], dir: &Path) -> Option<(bool, String)> {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("promtool: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

// --- The dashboard -------------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Every panel that shows data (the panels of rows too, collapsed or not), rows left out.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

fn template_vars(d: &Value) -> &[Value] {
    d["templating"]["list"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The PromQL query of a template variable, as the Prometheus data source reads it (a string,
/// or Grafana 10's `{"query": ...}`); `label_values(X, label)` becomes `count by (label) (X)`,
/// which Prometheus can check.
fn variable_query(v: &Value) -> Option<String> {
    let q = v["query"]["query"].as_str().or(v["query"].as_str())?.trim();
    if let Some(args) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (selector, label) = args
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        return Some(format!("count by ({}) ({})", label.trim(), selector.trim()));
    }
    if let Some(expr) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Some(expr.to_string());
    }
    panic!(
        "template variable {}: a query Prometheus cannot check: {q}",
        v["name"]
    );
}

/// Every PromQL query of the dashboard: (where it is, the query).
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((
                format!("panel {:?} {}", p["title"], t["refId"]),
                expr.into(),
            ));
        }
    }
    for v in template_vars(d).iter().filter(|v| v["type"] == "query") {
        if let Some(q) = variable_query(v) {
            out.push((format!("variable {}", v["name"]), q));
        }
    }
    out
}

/// `expr` with Grafana's variables replaced as Grafana would: the dashboard's own (each a
/// regex matcher's value, "All" being `.*`) and the built-in intervals. A variable the
/// dashboard does not define is an error: Grafana would leave it in and the panel stay empty.
fn substitute(expr: &str, defined: &BTreeSet<String>) -> Result<String, String> {
    let builtin = |name: &str| match name {
        "__rate_interval" | "__interval" => Some("1m"),
        "__range" => Some("6h"),
        "__range_s" => Some("21600"),
        "__range_ms" => Some("21600000"),
        "__interval_ms" => Some("60000"),
        _ => None,
    };
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or("an unclosed ${")?;
            let inner = &braced[..end];
            (inner.split(':').next().unwrap_or(inner), end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match builtin(name) {
            Some(value) => out.push_str(value),
            None if defined.contains(name) => out.push_str(".*"),
            None => return Err(format!("${name} is no variable of the dashboard")),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The panels the README promises are there, each plotting its metric, on the dashboard's
/// data source; the dashboard is one Grafana 10 imports, and it can pick a pool.
#[test]
fn dashboard_has_the_promised_panels() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().unwrap_or_default();
    assert!(
        schema >= 38,
        "schemaVersion {schema}: Grafana 10 writes 38 or later"
    );
    let vars = template_vars(&d);
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(
        ds["query"], "prometheus",
        "a Prometheus data source to pick"
    );
    let pool = var("pool");
    assert_eq!(
        variable_query(pool).as_deref(),
        Some("count by (pool) (rtcgate_pool_headroom)"),
        "pools from label_values(rtcgate_pool_headroom, pool)"
    );
    let panels = panels(&d);
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = &p["title"];
        assert!(
            ids.insert(p["id"].as_u64()),
            "panel id of {title} taken twice"
        );
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {title} on the picked data source"
        );
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "panel {title}: a query without expr"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "panel {title}");
        }
    }
    for (title, metric) in PANELS {
        let p = panels
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel titled {title:?}"));
        let plotted = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| metric_names(t["expr"].as_str().unwrap_or_default()).contains(metric));
        assert!(plotted, "panel {title:?} does not plot {metric}");
    }
}

/// Every query of the dashboard, template variables' too, is PromQL Prometheus accepts once
/// Grafana has put its variables in.
#[test]
fn dashboard_queries_parse() {
    let d = dashboard();
    let defined: BTreeSet<String> = template_vars(&d)
        .iter()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    let queries = dashboard_queries(&d);
    assert!(queries.len() > PANELS.len(), "{} queries", queries.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (at, expr)) in queries.iter().enumerate() {
        let expr = substitute(expr, &defined).unwrap_or_else(|e| panic!("{at}: {e}"));
        // A JSON string is a YAML double-quoted scalar.
        let quoted = serde_json::to_string(&expr).expect("a string");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("dashboard.yml"), &rules).expect("write");
    match promtool(&["check", "rules", "dashboard.yml"], dir.path()) {
        None => required_in_ci("promtool"),
        Some((true, _)) => {}
        Some((false, out)) => panic!(
            "promtool rejects a query of {DASHBOARD}:\n{out}\n{}",
            numbered(&queries)
        ),
    }
}

fn numbered(queries: &[(String, String)]) -> String {
    queries
        .iter()
        .enumerate()
        .map(|(i, (at, q))| format!("query_{i}: {at}: {q}\n"))
        .collect()
}

// --- The alert rules -----------------------------------------------------------------------

/// One alerting rule of rtcgate-rules.yml: its name and the text of its entry.
struct Rule {
    alert: String,
    text: String,
}

/// The rules of rtcgate-rules.yml, read by lines: the file is ours, written in one shape
/// (`- alert: NAME`, then its keys indented below it).
fn rules(text: &str) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            out.push(Rule {
                alert: name.trim().to_string(),
                text: String::new(),
            });
        } else if let Some(rule) = out.last_mut() {
            rule.text.push_str(line);
            rule.text.push('\n');
        }
    }
    out
}

impl Rule {
    /// The value of `key:` (a one-line value, or the indented block under `key: |`).
    fn value(&self, key: &str) -> Option<String> {
        let mut lines = self.text.lines();
        let (indent, first) = lines.by_ref().find_map(|l| {
            let t = l.trim_start();
            let v = t.strip_prefix(key)?.strip_prefix(':')?;
            Some((l.len() - t.len(), v.trim()))
        })?;
        if !matches!(first, "|" | "|-" | ">" | ">-") {
            return Some(first.trim_matches(['"', '\'']).to_string());
        }
        let block: Vec<&str> = lines
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(str::trim)
            .collect();
        Some(block.join("\n").trim().to_string())
    }
}

/// The series of the rules' unit tests (each `- series: '...'`).
fn test_series(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("- series:"))
        .map(|s| s.trim().trim_matches(['\'', '"']).to_string())
        .collect()
}

/// promtool accepts the rules, and their unit tests pass.
#[test]
fn alert_rules_check_and_pass_their_tests() {
    let dir = repo_file("examples/prometheus");
    let Some((ok, out)) = promtool(&["check", "rules", "rtcgate-rules.yml"], &dir) else {
        required_in_ci("promtool");
        return;
    };
    assert!(ok, "promtool check rules {RULES}:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "rtcgate-rules.test.yml"], &dir).expect("promtool");
    assert!(ok, "promtool test rules {RULE_TESTS}:\n{out}");
}

/// Each alert the README describes is there, says how long the condition must hold, how bad
/// it is and what it means; and its unit tests hold a case where it fires and one where it
/// does not.
#[test]
fn every_alert_is_complete_and_tested_both_ways() {
    let text = read(RULES);
    assert!(
        text.contains("- name: rtcgate\n"),
        "the group is named rtcgate"
    );
    let rules = rules(&text);
    let names: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(names, ALERTS, "the alerts of {RULES}");
    let tests = read(RULE_TESTS);
    for r in &rules {
        let a = &r.alert;
        for key in ["expr", "for", "severity", "summary", "description"] {
            let v = r.value(key).unwrap_or_default();
            assert!(!v.is_empty(), "{a} has no {key}");
        }
        let severity = r.value("severity").unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity.as_str()),
            "{a}: severity {severity}"
        );
        // Each `alertname: A` in the tests is followed by its exp_alerts: empty, or a list.
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|c| c.starts_with(&format!("{a}\n")))
            .collect();
        let quiet = cases
            .iter()
            .filter(|c| c.contains("exp_alerts: []"))
            .count();
        let fires = cases
            .iter()
            .filter(|c| c.contains("exp_alerts:\n") && c.contains("exp_labels:"))
            .count();
        assert!(quiet > 0, "{a}: no test where it does not fire");
        assert!(fires > 0, "{a}: no test where it fires");
    }
}

// --- Names, labels and values against what rtcgate exports ---------------------------------

/// The identifiers starting `rtcgate_` in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("rtcgate_") {
        if text[..at].chars().next_back().is_some_and(word) {
            continue;
        }
        let end = text[at..]
            .find(|c: char| !word(c))
            .map_or(text.len(), |e| at + e);
        out.insert(text[at..end].to_string());
    }
    out
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Op(String),
    Punct(char),
}

/// PromQL's tokens, as far as names, matchers and label lists need.
fn tokens(expr: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' | '\'' | '`' => {
                let mut s = String::new();
                while let Some(d) = chars.next() {
                    match d {
                        '\\' if c != '`' => s.extend(chars.next()),
                        d if d == c => break,
                        d => s.push(d),
                    }
                }
                out.push(Token::Str(s));
            }
            '=' | '!' | '<' | '>' => {
                let mut op = c.to_string();
                if let Some(&d) = chars.peek().filter(|d| matches!(d, '=' | '~')) {
                    op.push(d);
                    chars.next();
                }
                out.push(Token::Op(op));
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' => {
                let mut w = c.to_string();
                while let Some(&d) = chars
                    .peek()
                    .filter(|d| d.is_ascii_alphanumeric() || matches!(d, '_' | ':' | '.'))
                {
                    w.push(d);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
            c => out.push(Token::Punct(c)),
        }
    }
    out
}

/// A label matcher of a selector: `label op "value"`.
#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// What a query asks of the metrics: each selector's metric and matchers, and the labels it
/// groups and matches by (`by`, `without`, `on`, `ignoring`, `group_left`, `group_right`).
fn uses(expr: &str) -> (Vec<(String, Vec<Matcher>)>, Vec<String>) {
    let t = tokens(expr);
    let (mut selectors, mut grouping) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < t.len() {
        match &t[i] {
            Token::Word(w) if w.starts_with("rtcgate_") => {
                let mut matchers = Vec::new();
                if t.get(i + 1) == Some(&Token::Punct('{')) {
                    i += 2;
                    while let (Some(Token::Word(l)), Some(Token::Op(op)), Some(Token::Str(v))) =
                        (t.get(i), t.get(i + 1), t.get(i + 2))
                    {
                        matchers.push(Matcher {
                            label: l.clone(),
                            op: op.clone(),
                            value: v.clone(),
                        });
                        i += 3;
                        if t.get(i) == Some(&Token::Punct(',')) {
                            i += 1;
                        }
                    }
                    assert_eq!(t.get(i), Some(&Token::Punct('}')), "a selector in {expr}");
                }
                selectors.push((w.clone(), matchers));
            }
            Token::Word(w)
                if matches!(
                    w.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) && t.get(i + 1) == Some(&Token::Punct('(')) =>
            {
                i += 2;
                while let Some(Token::Word(l)) = t.get(i) {
                    grouping.push(l.clone());
                    i += 1;
                    if t.get(i) == Some(&Token::Punct(',')) {
                        i += 1;
                    }
                }
                assert_eq!(t.get(i), Some(&Token::Punct(')')), "a label list in {expr}");
            }
            _ => {}
        }
        i += 1;
    }
    (selectors, grouping)
}

/// A metric family rtcgate documents or exports: its type, labels and, where the README
/// names them, each label's values.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
    values: BTreeMap<String, BTreeSet<String>>,
}

/// The README's metrics table: `| \`name\` | type | labels |`, a label's values after
/// `label = ` (`state = up, down, draining, maint`), notes in parentheses.
fn readme_metrics() -> BTreeMap<String, Family> {
    let text = read("README.md");
    let table = text
        .split("\n## Metrics\n")
        .nth(1)
        .expect("a Metrics section in the README");
    let mut out = BTreeMap::new();
    for line in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(name) = cells.get(1).and_then(|c| c.strip_prefix("`rtcgate_")) else {
            continue;
        };
        let name = format!("rtcgate_{}", name.trim_end_matches('`'));
        let mut f = Family {
            kind: cells[2]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .into(),
            ..Family::default()
        };
        let mut labels = String::new();
        let mut depth = 0;
        for c in cells[3].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => labels.push(c),
                _ => {}
            }
        }
        let mut enumerated: Option<String> = None;
        for piece in labels.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((label, value)) = piece.split_once('=') {
                let label = label.trim().to_string();
                f.labels.insert(label.clone());
                f.values
                    .entry(label.clone())
                    .or_default()
                    .insert(value.trim().into());
                enumerated = Some(label);
            } else if let Some(label) = &enumerated {
                f.values
                    .entry(label.clone())
                    .or_default()
                    .insert(piece.into());
            } else if piece != "—" {
                f.labels.insert(piece.into());
            }
        }
        out.insert(name, f);
    }
    assert!(
        out.contains_key("rtcgate_requests_total") && out.len() > 20,
        "the README's metrics table: {out:?}"
    );
    out
}

/// The families of a scrape, with the labels and values their series carry.
fn scraped_families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            out.entry(name.into()).or_default().kind = kind.into();
        }
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| out.contains_key(*b)))
            .filter(|_| !out.contains_key(name))
            .unwrap_or(name)
            .to_string();
        let f = out
            .get_mut(&family)
            .unwrap_or_else(|| panic!("a sample without # TYPE: {line}"));
        let (selectors, _) = uses(&line[..line.rfind(' ').unwrap_or(line.len())]);
        for (_, matchers) in selectors {
            for m in matchers.into_iter().filter(|m| m.label != "le") {
                f.labels.insert(m.label.clone());
                f.values.entry(m.label).or_default().insert(m.value);
            }
        }
    }
    out
}

/// `/metrics` of a proxy that has forwarded a request and a WebSocket tunnel, and reloaded
/// its config once well and once not.
async fn scrape_after_traffic() -> String {
    let backends = spawn_backends(2).await;
    let config = config_for(&backends, "");
    let proxy = spawn_proxy(&config).await;
    let mut c = proxy.h1().await;
    assert_eq!(c.get("/").await.status, http::StatusCode::OK);
    let mut ws = proxy.ws_plain("/ws", None).await;
    echo(ws.ws(), "through").await;
    assert_eq!(proxy.post_reload().await.status, http::StatusCode::OK);
    proxy.rewrite_config(&config.replace("[limits]", "[limits]\nno_such_key = 1"));
    eventually("the bad file's reload counted", async || {
        let text = metrics(&proxy).await;
        sample(
            &text,
            "rtcgate_config_reloads_total",
            &[("result", "error")],
        )
        .is_some()
    })
    .await;
    metrics(&proxy).await
}

/// Every metric the dashboard and the alerts name (their unit tests' series too) is in the
/// README's table and exported by rtcgate: in a live scrape, or, for a family with no series
/// yet (a vec metric no event has created), registered by src/metrics.rs. The labels they
/// select and group by are the family's, and the values they match are ones it takes.
#[tokio::test]
async fn dashboard_and_rules_name_only_exported_metrics() {
    let readme = readme_metrics();
    let scrape = scrape_after_traffic().await;
    let scraped = scraped_families(&scrape);
    let registered = read("src/metrics.rs");
    let d = dashboard();
    let mut queries: Vec<(String, String)> = dashboard_queries(&d)
        .into_iter()
        .map(|(at, q)| (format!("{DASHBOARD}: {at}"), q))
        .collect();
    let rules_text = read(RULES);
    for r in rules(&rules_text) {
        let expr = r.value("expr").unwrap_or_default();
        queries.push((format!("{RULES}: {}", r.alert), expr));
    }
    for s in test_series(&read(RULE_TESTS)) {
        queries.push((format!("{RULE_TESTS}: series"), s));
    }
    let mut problems = Vec::new();
    // Names first, anywhere in the files (comments and annotations too).
    let mut names = metric_names(&rules_text);
    names.extend(metric_names(&read(RULE_TESTS)));
    for (_, q) in &queries {
        names.extend(metric_names(q));
    }
    let family_of = |name: &str| -> Option<String> {
        if readme.contains_key(name) {
            return Some(name.to_string());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|s| {
            let base = name.strip_suffix(s)?;
            (readme.get(base)?.kind == "histogram").then(|| base.to_string())
        })
    };
    for name in &names {
        let Some(family) = family_of(name) else {
            problems.push(format!("{name}: not in the README's metrics table"));
            continue;
        };
        if !scraped.contains_key(&family) && !registered.contains(&format!("\"{family}\"")) {
            problems.push(format!(
                "{name}: in the README, but rtcgate neither exports nor registers {family}"
            ));
        }
    }
    // Then labels and values, query by query.
    let known = |family: &str| scraped.get(family).or(readme.get(family));
    for (at, q) in &queries {
        let (selectors, grouping) = uses(q);
        let mut in_query: BTreeSet<String> = ["job", "instance"].map(String::from).into();
        let mut all_known = true;
        for (name, matchers) in &selectors {
            let Some((family, f)) = family_of(name).and_then(|fam| known(&fam).map(|f| (fam, f)))
            else {
                all_known = false; // reported above
                continue;
            };
            let bucket = name.ends_with("_bucket") && f.kind == "histogram";
            in_query.extend(f.labels.iter().cloned());
            if bucket {
                in_query.insert("le".into());
            }
            for m in matchers {
                let label = m.label.as_str();
                let scraped_adds = ["job", "instance"].contains(&label);
                if !(f.labels.contains(label) || scraped_adds || (bucket && label == "le")) {
                    problems.push(format!("{at}: {name} has no label {label}"));
                    continue;
                }
                let values: BTreeSet<&String> = [readme.get(&family), scraped.get(&family)]
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.values.get(label))
                    .flatten()
                    .collect();
                let readme_lists = readme
                    .get(&family)
                    .is_some_and(|f| f.values.contains_key(label));
                let plain = |v: &str| v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                let wanted: Vec<&str> = match m.op.as_str() {
                    "=" | "!=" => vec![m.value.as_str()],
                    _ => m.value.split('|').collect(),
                };
                if readme_lists && wanted.iter().all(|v| plain(v)) {
                    for v in wanted.iter().filter(|v| !values.iter().any(|x| x == v)) {
                        problems.push(format!("{at}: {name}{{{label}}} never takes {v:?}"));
                    }
                }
            }
        }
        for label in grouping
            .iter()
            .filter(|l| all_known && !in_query.contains(*l))
        {
            problems.push(format!(
                "{at}: groups or matches by {label}, which none of its metrics has"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard or the rules ask for what rtcgate does not export:\n{}\n\nscrape:\n{scrape}",
        problems.join("\n")
    );
}

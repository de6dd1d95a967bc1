//! What a scenario prints: a human table, the outcome of its checks, and one closing line of JSON.

use serde_json::{Map, Value};

/// Most failure messages kept (the count is always exact).
const MAX_FAILURE_MESSAGES: usize = 20;

/// Collects what went wrong. A scenario whose check has failures exits non-zero.
#[derive(Debug, Default)]
pub struct Check {
    count: u64,
    messages: Vec<String>,
}

impl Check {
    pub fn fail(&mut self, message: impl Into<String>) {
        self.count += 1;
        let message = message.into();
        if self.messages.len() < MAX_FAILURE_MESSAGES && !self.messages.contains(&message) {
            self.messages.push(message);
        }
    }

    /// Fails with `message()` unless `ok`.
    pub fn expect(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.fail(message());
        }
    }

    /// Takes over another check's failures.
    pub fn absorb(&mut self, other: Check) {
        self.count += other.count;
        let room = MAX_FAILURE_MESSAGES.saturating_sub(self.messages.len());
        self.messages.extend(other.messages.into_iter().take(room));
    }

    pub fn passed(&self) -> bool {
        self.count == 0
    }
}

/// A scenario's figures, in the order they are printed.
pub struct Report {
    scenario: &'static str,
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
}

impl Report {
    pub fn new(scenario: &'static str, label: Option<&str>) -> Report {
        let mut json = Map::new();
        json.insert("scenario".into(), scenario.into());
        json.insert("label".into(), label.map_or(Value::Null, Value::from));
        Report { scenario, rows: Vec::new(), json }
    }

    /// A figure shown in the table as `shown` and in the JSON as `key: value`.
    pub fn add(&mut self, name: &str, shown: impl Into<String>, key: &str, value: impl Into<Value>) {
        self.rows.push((name.to_owned(), shown.into()));
        self.json.insert(key.to_owned(), value.into());
    }

    /// A figure shown as its own value (numbers, mostly).
    pub fn figure(&mut self, name: &str, key: &str, value: impl Into<Value> + Clone + std::fmt::Display) {
        let shown = value.to_string();
        self.add(name, shown, key, value);
    }

    /// An optional figure (server figures need --server-pid): "n/a" in the table, null in the JSON.
    pub fn maybe(&mut self, name: &str, key: &str, value: Option<f64>) {
        match value {
            Some(value) => self.figure(name, key, value),
            None => self.add(name, "n/a", key, Value::Null),
        }
    }

    /// Prints the table, the check and the JSON line; returns whether the check passed.
    pub fn print(mut self, check: &Check) -> bool {
        let width = self.rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        println!();
        println!("== {} ==", self.scenario);
        for (name, value) in &self.rows {
            println!("  {name:<width$}  {value}");
        }
        if check.passed() {
            println!("  check: ok");
        } else {
            println!("  check: FAILED ({} problems)", check.count);
            for message in &check.messages {
                println!("    - {message}");
            }
        }
        self.json.insert("check".into(), if check.passed() { "ok" } else { "failed" }.into());
        self.json.insert("failures".into(), check.count.into());
        self.json.insert("failure_examples".into(), check.messages.clone().into());
        println!("{}", Value::Object(self.json));
        check.passed()
    }
}

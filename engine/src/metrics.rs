//! `GET /metrics`: Prometheus (OpenMetrics text) through `prometheus-client`.
//!
//! Two sources. Events counted where they happen (egress starts and ends, upload outcomes,
//! recipe load failures, Lua budget hits) are counters in `EVENTS`. Everything that is a state
//! (egresses by status, output bytes and bitrates, stream retries, recipes that do not load,
//! admission, the process's CPU and memory) is read at scrape time by `Scrape`, so nothing
//! is kept twice and a scrape costs a walk over the egress list.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::egress::manager::Manager;
use crate::egress::{EgressRecord, EgressStatus};

type Labels = Vec<(&'static str, String)>;

/// Events counted as they happen (label values → count).
#[derive(Default)]
pub struct Events {
    started: Mutex<HashMap<Labels, u64>>,
    ended: Mutex<HashMap<Labels, u64>>,
    uploads: Mutex<HashMap<Labels, u64>>,
    recipe_load_failures: AtomicU64,
    budget_hits: AtomicU64,
}

pub static EVENTS: LazyLock<Events> = LazyLock::new(Events::default);

fn bump(map: &Mutex<HashMap<Labels, u64>>, labels: Labels) {
    *map.lock().unwrap_or_else(|p| p.into_inner()).entry(labels).or_default() += 1;
}

/// An upload's outcome: `uploaded`, `attempt_failed` (retried) or `backed_up` (given up).
pub fn upload(outcome: &'static str) {
    bump(&EVENTS.uploads, vec![("outcome", outcome.to_string())]);
}

pub fn recipe_load_failed() {
    EVENTS.recipe_load_failures.fetch_add(1, Ordering::Relaxed);
}

pub fn budget_hit() {
    EVENTS.budget_hits.fetch_add(1, Ordering::Relaxed);
}

/// Counts an egress's start now and its end when it comes (a manager observer).
pub fn follow(record: &Arc<EgressRecord>) {
    let recipe = record.recipe.clone();
    let ended = move |record: &EgressRecord| {
        let snapshot = record.snapshot();
        let status = if snapshot.limit_reached() { "limit_reached".into() } else { status_name(snapshot.status) };
        let reason = match (snapshot.failure, snapshot.status) {
            (Some(kind), _) => snake(&format!("{kind:?}")),
            (None, EgressStatus::Failed) if record.is_restored() => "restarted".into(),
            // A pipeline or output error (a refused stream, a crashed browser...).
            (None, EgressStatus::Failed) => "error".into(),
            // Why it ended, from egret's closed set (a recipe's own words would make the
            // label set unbounded).
            (None, _) => {
                use crate::egress::reason::*;
                let known = [STOPPED_BY_API, LIMIT_REACHED, ALL_STREAMS_STOPPED, SHUTDOWN, SOURCE_ENDED, RESTARTED];
                let given = snapshot.reason.as_deref().filter(|r| known.contains(r));
                given.map_or_else(|| "other".into(), |r| r.replace(' ', "_").to_ascii_lowercase())
            }
        };
        bump(&EVENTS.ended, vec![("recipe", record.recipe.clone()), ("status", status), ("reason", reason)]);
    };
    if record.is_restored() {
        ended(record); // interrupted by a restart: only its end happens in this run
        return;
    }
    // Observers hear of an egress once its start returns, which may be after it ended.
    bump(&EVENTS.started, vec![("recipe", recipe)]);
    let record = record.clone();
    tokio::spawn(async move {
        record.finished().await;
        ended(&record);
    });
}

fn status_name(status: EgressStatus) -> String {
    snake(&format!("{status:?}"))
}

/// `RecipeFailed` → `recipe_failed`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// What a scrape reads from the running server.
#[derive(Debug)]
struct Scrape {
    manager: Arc<Manager>,
    admission: Option<Arc<crate::worker::admission::Admission>>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let records = self.manager.list();
        let snapshots: Vec<_> = records.iter().map(|r| r.snapshot()).collect();
        let mut out = Out(&mut encoder);

        let mut by_status: HashMap<Labels, i64> = HashMap::new();
        for s in &snapshots {
            *by_status.entry(vec![("recipe", s.recipe.clone()), ("status", status_name(s.status))]).or_default() += 1;
        }
        out.gauges("egret_egresses", "Egresses known to this server, by recipe and status", by_status)?;
        let counted = |map: &Mutex<HashMap<Labels, u64>>| map.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.counters("egret_egress_starts", "Egresses started in this run", counted(&EVENTS.started))?;
        out.counters(
            "egret_egress_ends",
            "Egresses ended in this run, by status and failure kind",
            counted(&EVENTS.ended),
        )?;

        let (mut bytes, mut bitrate, mut retries) = (HashMap::new(), HashMap::new(), HashMap::new());
        let mut all_retries = 0u64;
        for s in &snapshots {
            for o in &s.outputs {
                all_retries += u64::from(o.retries);
                if s.status.is_terminal() {
                    continue; // live figures of running egresses only: bounded label sets
                }
                let labels = vec![
                    ("egress_id", s.egress_id.clone()),
                    ("recipe", s.recipe.clone()),
                    ("output", o.field.clone()),
                    ("kind", o.kind.name.to_string()),
                ];
                let rate = if o.duration > 0.5 { o.bytes as f64 * 8.0 / o.duration } else { 0.0 };
                bytes.insert(labels.clone(), o.bytes as i64);
                bitrate.insert(labels.clone(), rate);
                if o.kind.name == "stream" {
                    retries.insert(labels, i64::from(o.retries));
                }
            }
        }
        out.gauges("egret_output_bytes", "Bytes written by each output of a running egress", bytes)?;
        out.gauges_f("egret_output_bitrate_bps", "Average bitrate of each output of a running egress", bitrate)?;
        out.gauges("egret_output_stream_retries", "Reconnects of each stream output of a running egress", retries)?;
        out.counter("egret_stream_reconnects", "Stream reconnects, every egress known", all_retries)?;
        out.counters("egret_uploads", "Uploads by outcome", counted(&EVENTS.uploads))?;

        let recipes = self.manager.recipes().to_json();
        let broken = recipes.as_array().map_or(0, |a| a.iter().filter(|r| !r["last_error"].is_null()).count());
        out.gauge("egret_recipes", "Recipes installed", recipes.as_array().map_or(0, Vec::len) as f64)?;
        out.gauge("egret_recipes_broken", "Recipes whose file does not load now", broken as f64)?;
        let failures = EVENTS.recipe_load_failures.load(Ordering::Relaxed);
        out.counter("egret_recipe_load_failures", "Recipe loads that failed in this run", failures)?;
        let hits = EVENTS.budget_hits.load(Ordering::Relaxed);
        out.counter("egret_lua_budget_hits", "Recipe calls stopped by the Lua time budget", hits)?;

        // LiveKit's livekit_egress_available: can this server take another egress now?
        let (load, capacity) = self.admission.as_ref().map_or((None, None), |a| (Some(a.load()), Some(a.capacity())));
        let available = !self.manager.is_draining() && load.zip(capacity).is_none_or(|(l, c)| l < c);
        out.gauge("egret_available", "1 when a new egress would be taken now", if available { 1.0 } else { 0.0 })?;
        out.gauge("egret_draining", "1 while shutting down", if self.manager.is_draining() { 1.0 } else { 0.0 })?;
        if let (Some(load), Some(capacity)) = (load, capacity) {
            out.gauge("egret_worker_load_cores", "Cores in use or reserved (worker admission)", load)?;
            out.gauge("egret_worker_capacity_cores", "Cores this worker admits egresses up to", capacity)?;
        }

        let process = crate::worker::admission::process_figures();
        out.counter_f("egret_process_cpu_seconds", "CPU time of egret itself", process.own_cpu_s)?;
        // A gauge: children that end take their CPU time with them.
        out.gauge(
            "egret_process_tree_cpu_seconds",
            "CPU time of egret and its children alive now (Chromium, Xvfb, PulseAudio)",
            process.tree_cpu_s,
        )?;
        out.gauge("egret_process_resident_memory_bytes", "Resident memory of egret itself", process.own_rss as f64)?;
        out.gauge(
            "egret_process_tree_resident_memory_bytes",
            "Resident memory of egret and its children",
            process.tree_rss as f64,
        )?;
        Ok(())
    }
}

/// Writes one metric family at a time.
struct Out<'a, 'b>(&'a mut DescriptorEncoder<'b>);

impl Out<'_, '_> {
    fn gauges(&mut self, name: &str, help: &str, values: HashMap<Labels, i64>) -> std::fmt::Result {
        let first = ConstGauge::new(0i64);
        let mut family = self.0.encode_descriptor(name, help, None, first.metric_type())?;
        for (labels, value) in sorted(values) {
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauges_f(&mut self, name: &str, help: &str, values: HashMap<Labels, f64>) -> std::fmt::Result {
        let mut family = self.0.encode_descriptor(name, help, None, ConstGauge::new(0f64).metric_type())?;
        for (labels, value) in sorted(values) {
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counters(&mut self, name: &str, help: &str, values: HashMap<Labels, u64>) -> std::fmt::Result {
        let mut family = self.0.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
        for (labels, value) in sorted(values) {
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let gauge = ConstGauge::new(value);
        gauge.encode(self.0.encode_descriptor(name, help, None, gauge.metric_type())?)
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let counter = ConstCounter::new(value);
        counter.encode(self.0.encode_descriptor(name, help, None, counter.metric_type())?)
    }

    fn counter_f(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let counter = ConstCounter::new(value);
        counter.encode(self.0.encode_descriptor(name, help, None, counter.metric_type())?)
    }
}

fn sorted<V>(values: HashMap<Labels, V>) -> Vec<(Labels, V)> {
    let mut list: Vec<_> = values.into_iter().collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list
}

/// The registry a server scrapes.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(manager: Arc<Manager>, admission: Option<Arc<crate::worker::admission::Admission>>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape { manager, admission }));
        Metrics { registry }
    }

    /// The OpenMetrics text of every metric now.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Manager")
    }
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_snake_case() {
        assert_eq!(snake("RecipeFailed"), "recipe_failed");
        assert_eq!(snake("Complete"), "complete");
    }
}

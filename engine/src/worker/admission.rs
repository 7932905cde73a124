//! Which requests this worker takes: each recipe has a CPU cost (in cores); a new egress's cost
//! is reserved for its first seconds (before its processes show in the measurement), then its
//! measured use counts. Nothing is admitted above 0.8 of the machine's CPUs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Never admit above this share of the CPUs.
pub const MAX_CPU_FRACTION: f64 = 0.8;
/// How long a new egress's declared cost stands in for its measured use.
const RESERVATION: Duration = Duration::from_secs(15);

/// Defaults in cores: each LiveKit request type's cost from the egress table (egret's bench on
/// 2 cores at 720p30; LiveKit reserves 4 / 4 / 2 / 1 / 0.5), plus an audio-only composite
/// (~0.1 measured) and the test source.
pub fn default_costs() -> HashMap<String, f64> {
    let kinds = crate::egress::livekit::KINDS.iter().map(|k| (k.recipe, k.cost));
    kinds.chain([("audio_only", 0.25), ("testsrc", 0.5)]).map(|(k, v)| (k.to_string(), v)).collect()
}

#[derive(Debug)]
pub struct Admission {
    capacity: f64,
    costs: HashMap<String, f64>,
    /// Egresses of the last seconds and their reserved cost.
    reserved: Mutex<HashMap<String, (f64, Instant)>>,
    /// Cores used by egret's process tree (chromium, Xvfb, Pulse included), as f64 bits.
    measured: AtomicU64,
}

impl Admission {
    pub fn new(cpus: f64, costs: HashMap<String, f64>) -> Self {
        let mut all = default_costs();
        all.extend(costs);
        Admission {
            capacity: cpus * MAX_CPU_FRACTION,
            costs: all,
            reserved: Mutex::new(HashMap::new()),
            measured: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// The cost of one request: its recipe's, or `audio_only` for an audio-only composite.
    pub fn cost(&self, recipe: &str, params: &serde_json::Value) -> f64 {
        let audio_only = params.get("audio_only").and_then(|v| v.as_bool()).unwrap_or(false);
        let key = if audio_only && ["room_composite", "web"].contains(&recipe) { "audio_only" } else { recipe };
        self.costs.get(key).copied().unwrap_or(1.0)
    }

    /// The claim's affinity (higher = less loaded), or None when the request does not fit.
    pub fn affinity(&self, cost: f64) -> Option<f32> {
        let load = self.load();
        let after = load + cost;
        if after > self.capacity + 1e-9 {
            tracing::info!(load, cost, capacity = self.capacity, "worker full: not claiming");
            return None;
        }
        Some(((1.0 - after / self.capacity).max(0.0) as f32).max(0.01))
    }

    pub fn reserve(&self, egress_id: &str, cost: f64) {
        self.reserved.lock().unwrap().insert(egress_id.to_string(), (cost, Instant::now()));
    }

    pub fn release(&self, egress_id: &str) {
        self.reserved.lock().unwrap().remove(egress_id);
    }

    /// Cores the admitted egresses may use (`cpus` × the safe fraction).
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// Cores in use now plus those reserved by egresses just claimed.
    pub fn load(&self) -> f64 {
        let mut reserved = self.reserved.lock().unwrap();
        reserved.retain(|_, (_, at)| at.elapsed() < RESERVATION);
        let fresh: f64 = reserved.values().map(|(cost, _)| cost).sum();
        f64::from_bits(self.measured.load(Ordering::Relaxed)) + fresh
    }

    /// Samples egret's process tree once a second, for as long as the worker runs.
    pub async fn measure(self: std::sync::Arc<Self>) {
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let me = std::process::id();
        let mut last = (tree_ticks(me), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = (tree_ticks(me), Instant::now());
            let cores = (now.0.saturating_sub(last.0)) as f64 / ticks / (now.1 - last.1).as_secs_f64();
            self.measured.store(cores.to_bits(), Ordering::Relaxed);
            last = now;
        }
    }
}

/// CPU and memory of egret and of its process tree, for /metrics.
pub struct ProcessFigures {
    pub own_cpu_s: f64,
    pub tree_cpu_s: f64,
    pub own_rss: u64,
    pub tree_rss: u64,
}

pub fn process_figures() -> ProcessFigures {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let me = std::process::id();
    let (tree_ticks, tree_pages, own) = tree_stats(me);
    ProcessFigures {
        own_cpu_s: own.0 as f64 / ticks,
        tree_cpu_s: tree_ticks as f64 / ticks,
        own_rss: own.1 * page,
        tree_rss: tree_pages * page,
    }
}

/// utime + stime of `root` and its live descendants, in clock ticks.
fn tree_ticks(root: u32) -> u64 {
    tree_stats(root).0
}

/// (ticks, resident pages) of `root`'s tree, and (ticks, pages) of `root` alone.
fn tree_stats(root: u32) -> (u64, u64, (u64, u64)) {
    let mut parent_of = HashMap::new();
    let mut ticks = HashMap::new();
    let mut pages = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return (0, 0, (0, 0)) };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: state ppid ... utime(12) stime(13).
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 21 {
            parent_of.insert(pid, fields[1].parse::<u32>().unwrap_or(0));
            ticks.insert(pid, fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0));
            // rss (field 24 of stat, 22 after the command)
            pages.insert(pid, fields[21].parse::<u64>().unwrap_or(0));
        }
    }
    let in_tree = |mut pid: u32| {
        while pid > 1 {
            if pid == root {
                return true;
            }
            pid = parent_of.get(&pid).copied().unwrap_or(0);
        }
        false
    };
    let tree: Vec<u32> = ticks.keys().copied().filter(|pid| in_tree(*pid)).collect();
    let own = (ticks.get(&root).copied().unwrap_or(0), pages.get(&root).copied().unwrap_or(0));
    (tree.iter().map(|p| ticks[p]).sum(), tree.iter().map(|p| pages.get(p).copied().unwrap_or(0)).sum(), own)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_claims_until_its_reservations_fill_it() {
        let admission = Admission::new(1.0, [("web".to_string(), 0.5)].into());
        let web = admission.cost("web", &serde_json::json!({}));
        assert_eq!(web, 0.5);
        assert!(admission.affinity(web).is_some());
        admission.reserve("EG_a", web);
        assert!(admission.affinity(web).is_none(), "0.5 + 0.5 > 0.8 of one CPU");
        let audio = admission.cost("room_composite", &serde_json::json!({ "audio_only": true }));
        assert!(admission.affinity(audio).is_some(), "an audio-only composite still fits");
        admission.release("EG_a");
        assert!(admission.affinity(web).unwrap() > 0.3);
    }
}

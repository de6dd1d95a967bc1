//! Measurements: publish-to-receive latency and delivered-frame counts recorded per worker thread
//! (no shared counter on the hot path), and CPU time / resident memory of a process from /proc.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Every time in the load generator is nanoseconds since this instant. Publishers and receivers
/// live in the same process, so the monotonic clock needs no synchronisation.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

pub fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Largest latency the histograms hold (larger values are clamped to it).
const MAX_LATENCY_NS: u64 = 120_000_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, MAX_LATENCY_NS, 3).expect("static histogram bounds are valid")
}

/// What one worker thread recorded.
struct Recorder {
    latency_ns: Histogram<u64>,
    frames: u64,
}

/// Every thread's recorder, so a snapshot can merge them.
static RECORDERS: Mutex<Vec<Arc<Mutex<Recorder>>>> = Mutex::new(Vec::new());

thread_local! {
    // Locked only by its own thread, except during a snapshot: uncontended, a few ns.
    static LOCAL: Arc<Mutex<Recorder>> = {
        let recorder = Arc::new(Mutex::new(Recorder { latency_ns: new_histogram(), frames: 0 }));
        RECORDERS.lock().expect("recorder registry").push(Arc::clone(&recorder));
        recorder
    };
}

/// Counts one received benchmark frame; records its latency when `sent_ns` is given.
pub fn record_frame(sent_ns: Option<u64>) {
    LOCAL.with(|recorder| {
        let mut recorder = recorder.lock().expect("recorder lock");
        recorder.frames += 1;
        if let Some(sent_ns) = sent_ns {
            let latency = now_ns().saturating_sub(sent_ns).clamp(1_000, MAX_LATENCY_NS);
            recorder.latency_ns.saturating_record(latency);
        }
    });
}

/// Frames counted so far, over all threads.
pub fn frames() -> u64 {
    RECORDERS.lock().expect("recorder registry").iter().map(|r| r.lock().expect("recorder lock").frames).sum()
}

/// Clears every recorder (between phases).
pub fn reset() {
    for recorder in RECORDERS.lock().expect("recorder registry").iter() {
        let mut recorder = recorder.lock().expect("recorder lock");
        recorder.frames = 0;
        recorder.latency_ns.reset();
    }
}

/// The merged latency histogram of every thread.
pub fn latency() -> Histogram<u64> {
    let mut merged = new_histogram();
    for recorder in RECORDERS.lock().expect("recorder registry").iter() {
        merged.add(&recorder.lock().expect("recorder lock").latency_ns).expect("same bounds");
    }
    merged
}

/// Waits until `frames() >= expected` or `timeout` passes; true if reached.
pub async fn wait_for_frames(expected: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if frames() >= expected {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub samples: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| round2(as_f64(ns) / 1000.0);
        Percentiles {
            p50: us(histogram.value_at_quantile(0.50)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
            samples: histogram.len(),
        }
    }
}

/// A reading of a process's CPU time and resident memory.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// User and system time.
    pub cpu_us: u64,
    /// System time alone: the kernel working for the process (system calls, and on loopback
    /// the receiver's side of every send, see docs/benchmarks.md).
    pub system_us: u64,
    pub rss_bytes: u64,
}

/// Samples `/proc/<pid>` (`self` for the load generator).
pub fn sample(pid: &str) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15, in clock ticks.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        Ok(fields.get(index).ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?.parse()?)
    };
    let ticks_per_sec = rustix::param::clock_ticks_per_second().max(1);
    let to_us = |ticks: u64| ticks.saturating_mul(1_000_000) / ticks_per_sec;
    let system_ticks = ticks(12)?;
    let cpu_us = to_us(ticks(11)? + system_ticks);
    let system_us = to_us(system_ticks);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?
        .parse()?;
    Ok(ProcSample { cpu_us, system_us, rss_bytes: rss_kib * 1024 })
}

/// The machine's CPU time from the first line of /proc/stat, in us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTime {
    /// Time the guest's own CPUs spent working (user, nice, system, irq, softirq): every
    /// process's time, and interrupts the kernel bills to none.
    pub busy_us: u64,
    /// Steal: time the CPUs were ready to run while the host (hypervisor) ran something else. It
    /// is nobody's in the guest, but it slows everything in it: the server's kernel time per
    /// publish grows with it (docs/benchmarks.md, round two, eleventh pass).
    pub steal_us: u64,
}

impl MachineTime {
    fn read() -> anyhow::Result<MachineTime> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        MachineTime::parse(stat.lines().next().unwrap_or_default(), rustix::param::clock_ticks_per_second())
    }

    /// Parses the aggregate `cpu` line: `cpu user nice system idle iowait irq softirq steal ...`
    /// in clock ticks. Kernels without a steal column (no hypervisor support) report none.
    fn parse(line: &str, ticks_per_sec: u64) -> anyhow::Result<MachineTime> {
        let fields = line.strip_prefix("cpu ").ok_or_else(|| anyhow::anyhow!("no cpu line in /proc/stat"))?;
        let ticks: Vec<u64> = fields.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
        let tick = |index: usize| ticks.get(index).copied().unwrap_or(0);
        let to_us = |ticks: u64| ticks.saturating_mul(1_000_000) / ticks_per_sec.max(1);
        // Idle (3) and iowait (4) are the CPUs waiting, not working.
        let busy = tick(0) + tick(1) + tick(2) + tick(5) + tick(6);
        Ok(MachineTime { busy_us: to_us(busy), steal_us: to_us(tick(7)) })
    }
}

/// Samples the server (if its pid was given), the load generator and the machine together.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub server: Option<ProcSample>,
    pub client: ProcSample,
    pub machine: MachineTime,
    pub at: Instant,
}

impl Usage {
    pub fn now(server_pid: Option<u32>) -> anyhow::Result<Usage> {
        let server = server_pid.map(|pid| sample(&pid.to_string())).transpose()?;
        Ok(Usage { server, client: sample("self")?, machine: MachineTime::read()?, at: Instant::now() })
    }

    /// CPU the rest of the machine (neither the server nor the load generator) used between
    /// `self` and `later`, in % of one core: how much other work in the guest disturbed the
    /// measurement. The host's steal is not in it (see `steal_percent`).
    pub fn others_percent(&self, later: &Usage) -> Option<f64> {
        let (server_us, client_us) = self.cpu_since(later);
        let busy = later.machine.busy_us.saturating_sub(self.machine.busy_us);
        let others = busy.saturating_sub(server_us? + client_us);
        per(others * 100, self.wall_us(later)?)
    }

    /// The host's steal between `self` and `later`, in % of one core: how much the machine under
    /// the guest disturbed the measurement, which no process in the guest shows.
    pub fn steal_percent(&self, later: &Usage) -> Option<f64> {
        let steal = later.machine.steal_us.saturating_sub(self.machine.steal_us);
        per(steal * 100, self.wall_us(later)?)
    }

    fn wall_us(&self, later: &Usage) -> Option<u64> {
        u64::try_from(later.at.duration_since(self.at).as_micros()).ok()
    }

    /// The server's system (kernel) time between `self` and `later`, in us.
    pub fn server_system_since(&self, later: &Usage) -> Option<u64> {
        self.server.zip(later.server).map(|(a, b)| b.system_us.saturating_sub(a.system_us))
    }

    /// CPU used between `self` and `later`: (server us, load generator us).
    pub fn cpu_since(&self, later: &Usage) -> (Option<u64>, u64) {
        let server = self.server.zip(later.server).map(|(a, b)| b.cpu_us.saturating_sub(a.cpu_us));
        (server, later.client.cpu_us.saturating_sub(self.client.cpu_us))
    }
}

/// Lossless enough for reporting: counts and times here stay far below 2^52.
#[expect(clippy::cast_precision_loss, reason = "report figures, far below 2^52")]
pub fn as_f64(value: u64) -> f64 {
    value as f64
}

pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// `amount / per`, rounded to two decimals; None when `per` is zero.
pub fn per(amount: u64, per: u64) -> Option<f64> {
    (per > 0).then(|| round2(as_f64(amount) / as_f64(per)))
}

/// `count / seconds`, rounded.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { (as_f64(count) / secs).round() } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::MachineTime;

    #[test]
    fn machine_time_separates_the_hosts_steal_from_the_guests_work() {
        // user nice system idle iowait irq softirq steal guest guest_nice, at 100 ticks/s.
        let line = "cpu  7710 5 4830 3350 2350 0 1130 6200 0 0";
        let time = MachineTime::parse(line, 100).expect("a well-formed cpu line");
        assert_eq!(time.busy_us, (7710 + 5 + 4830 + 1130) * 10_000);
        assert_eq!(time.steal_us, 6200 * 10_000);
    }

    #[test]
    fn machine_time_without_a_steal_column_has_none() {
        let time = MachineTime::parse("cpu  100 0 50 900 10", 100).expect("an old kernel's cpu line");
        assert_eq!(time, MachineTime { busy_us: 1_500_000, steal_us: 0 });
    }

    #[test]
    fn machine_time_refuses_a_line_that_is_not_the_aggregate() {
        assert!(MachineTime::parse("cpu0 1 2 3", 100).is_err());
        assert!(MachineTime::parse("cpu  1 two 3", 100).is_err());
    }
}

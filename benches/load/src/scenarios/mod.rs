//! The scenarios. Each one sets up its sockets, measures, checks what was received, and prints a
//! [`crate::report::Report`]; it returns whether its check passed.

pub mod broadcast;
pub mod idle;
pub mod publish;
pub mod replay;
pub mod storm;

use std::time::Duration;

use crate::report::Report;
use crate::stats::{self, Percentiles, Usage};

/// How long a scenario waits for all its sockets to subscribe.
pub const SUBSCRIBE_ALL_TIMEOUT: Duration = Duration::from_secs(180);

/// Adds p50/p99/p999/max rows of a latency histogram, in microseconds.
pub fn add_latency(report: &mut Report, what: &str, key: &str, latency: &hdrhistogram::Histogram<u64>) {
    let p = Percentiles::of(latency);
    report.add(
        &format!("{what} p50/p99/p999/max (us)"),
        format!("{} / {} / {} / {}  ({} samples)", p.p50, p.p99, p.p999, p.max, p.samples),
        key,
        serde_json::to_value(p).expect("percentiles serialise"),
    );
}

/// Adds the CPU rows: server and load generator CPU time per `unit`, and their utilisation.
pub fn add_cpu(report: &mut Report, from: &Usage, to: &Usage, units: u64, unit: &str) {
    let (server_us, client_us) = from.cpu_since(to);
    let wall_us = u64::try_from(to.at.duration_since(from.at).as_micros()).unwrap_or(u64::MAX);
    report.maybe(
        &format!("server CPU us per {unit}"),
        &format!("server_cpu_us_per_{unit}"),
        server_us.and_then(|us| stats::per(us, units)),
    );
    report.maybe(
        &format!("  of which in the kernel, us per {unit}"),
        &format!("server_kernel_cpu_us_per_{unit}"),
        from.server_system_since(to).and_then(|us| stats::per(us, units)),
    );
    report.maybe(
        "server CPU (% of one core)",
        "server_cpu_percent",
        server_us.and_then(|us| stats::per(us * 100, wall_us)),
    );
    report.figure(
        &format!("load generator CPU us per {unit}"),
        &format!("loadgen_cpu_us_per_{unit}"),
        stats::per(client_us, units).unwrap_or(0.0),
    );
    report.figure(
        "load generator CPU (% of one core)",
        "loadgen_cpu_percent",
        stats::per(client_us * 100, wall_us).unwrap_or(0.0),
    );
    add_others(report, from, to);
}

/// How busy the rest of the machine was: other processes, and the host under the guest, disturb
/// every figure here.
pub fn add_others(report: &mut Report, from: &Usage, to: &Usage) {
    report.maybe("other processes' CPU (% of one core)", "others_cpu_percent", from.others_percent(to));
    report.maybe("the host's steal (% of one core)", "steal_percent", from.steal_percent(to));
}

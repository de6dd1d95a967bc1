//! This process's counters in `/proc/self`, for the tests that measure what sled does: each such
//! test is alone in its file, so the whole process's counts are its own.

#![allow(dead_code)] // each test file uses what it needs

/// Bytes this process has passed to `write` and its kin (`wchar` in `/proc/self/io`).
pub fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io (Linux)");
    io.lines()
        .find_map(|line| line.strip_prefix("wchar: "))
        .and_then(|value| value.parse().ok())
        .expect("a wchar line in /proc/self/io")
}

/// Minor page faults of this process so far (field 10 of `/proc/self/stat`).
pub fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux)");
    // The command name, in parentheses, may hold spaces: count fields after it.
    let after_name = &stat[stat.rfind(')').expect("a command name in /proc/self/stat") + 2..];
    after_name.split(' ').nth(7).and_then(|field| field.parse().ok()).expect("minflt in /proc/self/stat")
}

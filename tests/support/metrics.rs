//! Scraping the metrics listener in tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};

/// A port for the metrics listener, which the server binds itself. Taken below the kernel's
/// ephemeral range (32768 and up on Linux), so no server's `127.0.0.1:0` listener can take it
/// between this check and the server's bind; each test of this binary gets its own.
pub async fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + u16::try_from(std::process::id() % 1000).expect("below 1000") * 10;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed);
        if tokio::net::TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return port;
        }
    }
}

/// Every sample of the exposition, `name{labels}` -> value.
pub fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

pub async fn scrape(port: u16) -> (HashMap<String, f64>, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.expect("scrape");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    (samples(&text), text)
}

//! Registry throughput and watch latency over real HTTP on loopback.
//!
//! `cargo bench -p mlmesh-registry --bench registry [-- SECONDS CONNECTIONS]`
//!
//! - heartbeats/s: CONNECTIONS keep-alive clients renew leases of their own instances as fast as
//!   the registry answers, for SECONDS;
//! - watch latency: a client long-polls the registry; another registers an instance; the time
//!   from sending the registration to the watcher holding the new snapshot, 500 times.
//!
//! Server and clients share this machine's cores, as they do on one machine in production.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mlmesh_kit::ServerConfig;
use mlmesh_kit::discovery::RegistryClient;
use mlmesh_protocol::registry::Registration;
use mlmesh_registry::{AppState, Config, router};
use mlmesh_testkit::TestServer;

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let connections: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(seconds, connections));
}

fn registration(i: usize) -> Registration {
    Registration {
        url: format!("http://127.0.0.1:{}", 10_000 + i),
        version: "bench".into(),
        metadata: BTreeMap::new(),
    }
}

async fn run(seconds: u64, connections: usize) {
    let server = TestServer::start(router(
        AppState::new(Config::default()),
        &ServerConfig::default(),
    ))
    .await;

    // Heartbeats per second.
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..connections {
        let client = RegistryClient::new(&server.url);
        let (count, stop) = (Arc::clone(&count), Arc::clone(&stop));
        client
            .register("bench", &format!("b{i}"), &registration(i))
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client.heartbeat("bench", &format!("b{i}")).await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("heartbeats: {rate:.0}/s with {connections} connections for {seconds} s");

    // Change-to-watcher latency.
    let watcher = RegistryClient::new(&server.url);
    let writer = RegistryClient::new(&server.url);
    let mut snapshot = watcher.instances(Some("watched")).await.unwrap();
    let mut latencies = Vec::new();
    let mut round_trips = Vec::new();
    for i in 0..500 {
        let (epoch, after) = (snapshot.epoch.clone(), snapshot.index);
        let watch = {
            let watcher = watcher.clone();
            tokio::spawn(async move {
                let s = watcher
                    .watch(Some("watched"), &epoch, after, Duration::from_secs(10))
                    .await
                    .unwrap();
                (s, Instant::now())
            })
        };
        // Let the watch reach the registry and park before the change.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let sent = Instant::now();
        writer
            .register("watched", &format!("w{i}"), &registration(i))
            .await
            .unwrap();
        round_trips.push(sent.elapsed());
        let (next, seen) = watch.await.unwrap();
        assert!(next.index > after);
        latencies.push(seen.duration_since(sent));
        snapshot = next;
    }
    for (name, mut samples) in [
        (
            "watch latency (register sent → watcher holds the new snapshot)",
            latencies,
        ),
        (
            "for comparison, the register call's own round trip",
            round_trips,
        ),
    ] {
        samples.sort();
        let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
        println!(
            "{name}, 500 changes: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
    }
}

//! `storm`: K clients on one channel while a publisher keeps publishing; all drop their sockets at
//! once, stay away for a moment, then all reconnect together and resume with `since` = the last id
//! each one saw (Reprise's replay extension). Measures the time until every client has caught up
//! with what was published before they came back.
//!
//! Check: every client received every event from 1 to the publisher's last, in order, exactly
//! once across the two connections, and every resume was `recovered`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::SUBSCRIBE_ALL_TIMEOUT;
use crate::Env;
use crate::publisher::{self, Until};
use crate::pusher::BEFORE_FIRST_ID;
use crate::report::{Check, Report};
use crate::stats::{self, Usage};
use crate::subscriber::{self, CatchUp, Ended, Outcome, Shared, Tracker};

#[derive(Args, Debug)]
pub struct StormArgs {
    #[arg(long, default_value_t = 5000)]
    clients: usize,
    /// Publishes per second on the channel, throughout.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Publishing before the drop.
    #[arg(long, default_value_t = 2.0)]
    warm_secs: f64,
    /// How long every client stays away (rate x this must stay under the server's replay cap).
    #[arg(long, default_value_t = 1000)]
    down_ms: u64,
    /// Publishing after everyone caught up, before the final check.
    #[arg(long, default_value_t = 1.0)]
    tail_secs: f64,
    #[arg(long, default_value_t = 120.0)]
    catch_up_timeout_secs: f64,
    /// Resumes in flight at once (default: every client at once, as after a network blip).
    #[arg(long)]
    resume_concurrency: Option<usize>,
}

pub async fn run(env: &Env, args: StormArgs) -> anyhow::Result<bool> {
    let mut check = Check::default();
    let clients = args.clients.max(1);
    let channel: Arc<str> = Arc::from(format!("storm-{}", env.run_id));
    let first = Arc::new(Shared::new(env.connect_concurrency));
    let again = Arc::new(Shared::new(args.resume_concurrency.unwrap_or(clients)));
    let dropped = Arc::new(AtomicUsize::new(0));
    let catch_up = Arc::new(CatchUp::new());
    let (drop_now, reconnect_now, stop) =
        (CancellationToken::new(), CancellationToken::new(), CancellationToken::new());

    eprintln!("storm: connecting {clients} clients");
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (first, again, dropped, catch_up) =
            (Arc::clone(&first), Arc::clone(&again), Arc::clone(&dropped), Arc::clone(&catch_up));
        let (drop_now, reconnect_now, stop) = (drop_now.clone(), reconnect_now.clone(), stop.clone());
        let (target, channel) = (env.target.clone(), Arc::clone(&channel));
        tasks.push(tokio::spawn(async move {
            let mut outcome =
                Outcome { channel: 0, tracker: Tracker::default(), replay: None, ended: None, error: None };
            let mut conn = match subscriber::open(&first, &target, &channel, None).await {
                Ok((conn, _)) => conn,
                Err(error) => {
                    first.failed.fetch_add(1, Ordering::AcqRel);
                    outcome.error = Some(format!("connect/subscribe failed: {error}"));
                    return outcome;
                }
            };
            first.subscribed.fetch_add(1, Ordering::AcqRel);
            match subscriber::pump(&mut conn, &mut outcome.tracker, false, &drop_now, None).await {
                Ended::Stopped => {}
                other => {
                    outcome.error = Some(format!("disconnected before the storm: {other}"));
                    dropped.fetch_add(1, Ordering::AcqRel);
                    return outcome;
                }
            }
            drop(conn); // the "network failure": no close handshake
            dropped.fetch_add(1, Ordering::AcqRel);
            reconnect_now.cancelled().await;
            let since = outcome.tracker.last_id_str().unwrap_or_else(|| BEFORE_FIRST_ID.to_owned());
            match subscriber::open(&again, &target, &channel, Some(&since)).await {
                Ok((mut conn, replay)) => {
                    again.subscribed.fetch_add(1, Ordering::AcqRel);
                    if replay.recovered != Some(true) {
                        outcome.error = Some(format!("resume after {since} not recovered: {replay:?}"));
                    }
                    outcome.replay = Some(replay);
                    outcome.ended =
                        Some(subscriber::pump(&mut conn, &mut outcome.tracker, false, &stop, Some(&catch_up)).await);
                }
                Err(error) => {
                    again.failed.fetch_add(1, Ordering::AcqRel);
                    outcome.error = Some(format!("resume failed: {error}"));
                }
            }
            outcome
        }));
    }
    let (subscribed, failed) = first.wait_subscribed(clients, SUBSCRIBE_ALL_TIMEOUT).await;
    let connect_time = connect_started.elapsed();
    check.expect(subscribed == clients, || format!("only {subscribed} of {clients} subscribed ({failed} failed)"));

    let published: Arc<[AtomicU64]> = Arc::from(vec![AtomicU64::new(0)]);
    let publishing = CancellationToken::new();
    let until = Until { duration: None, events: None, stop: publishing.clone() };
    let publisher_task = tokio::spawn(publisher::run(
        env.target.clone(),
        vec![(0, Arc::clone(&channel))],
        args.rate,
        until,
        env.payload_bytes,
        Arc::clone(&published),
    ));
    let mut storm = None;
    if check.passed() {
        eprintln!("storm: publishing at {}/s; all clients drop after {}s", args.rate, args.warm_secs);
        tokio::time::sleep(Duration::from_secs_f64(args.warm_secs)).await;
        let last_before_drop = published[0].load(Ordering::Acquire);
        drop_now.cancel();
        while dropped.load(Ordering::Acquire) < subscribed {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(args.down_ms)).await;

        // Everyone back at once; caught up = has every event acknowledged before this instant.
        let before = Usage::now(env.server_pid)?;
        let target = published[0].load(Ordering::Acquire);
        catch_up.target.store(target, Ordering::Release);
        let t0 = Instant::now();
        catch_up.started.set(t0).expect("set once");
        reconnect_now.cancel();
        eprintln!("storm: {clients} clients resuming; target sequence {target}");
        let deadline = t0 + Duration::from_secs_f64(args.catch_up_timeout_secs);
        let mut resubscribed_at = None;
        loop {
            let (back, lost) = (again.subscribed.load(Ordering::Acquire), again.failed.load(Ordering::Acquire));
            if resubscribed_at.is_none() && back + lost >= clients {
                resubscribed_at = Some(t0.elapsed());
            }
            if catch_up.caught_up.load(Ordering::Acquire) + lost >= clients || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let after = Usage::now(env.server_pid)?;
        let caught_up = catch_up.caught_up.load(Ordering::Acquire);
        check.expect(caught_up == clients, || format!("only {caught_up} of {clients} clients caught up"));
        let slowest = Duration::from_nanos(catch_up.slowest_ns.load(Ordering::Acquire));
        storm = Some((last_before_drop, target, resubscribed_at, slowest, before, after));
        tokio::time::sleep(Duration::from_secs_f64(args.tail_secs)).await;
    }
    publishing.cancel();
    let publisher_report = publisher_task.await?;
    for error in &publisher_report.errors {
        check.fail(error.clone());
    }
    let last = published[0].load(Ordering::Acquire);
    let expected = last * u64::try_from(clients)?;
    if check.passed() {
        let arrived = stats::wait_for_frames(expected, Duration::from_secs(30)).await;
        check.expect(arrived, || {
            format!("only {} of {expected} frames arrived after the last publish", stats::frames())
        });
    }
    stop.cancel();
    drop_now.cancel();
    reconnect_now.cancel();
    let mut replayed = 0;
    for task in tasks {
        let outcome = task.await?;
        replayed += outcome.replay.as_ref().and_then(|r| r.count).unwrap_or(0);
        outcome.check_complete(last, &mut check);
    }

    let mut report = Report::new("storm", env.label.as_deref());
    report.figure("clients", "clients", clients);
    report.figure("connect + subscribe all (s)", "connect_secs", stats::round2(connect_time.as_secs_f64()));
    report.figure("publish rate (/s)", "rate", args.rate);
    report.figure("down time (ms)", "down_ms", args.down_ms);
    report.figure("resumes in flight at once", "resume_concurrency", args.resume_concurrency.unwrap_or(clients));
    report.figure("events published", "publishes", last);
    if let Some((before_drop, target, resubscribed, slowest, before, after)) = storm {
        let server_cpu = before.cpu_since(&after).0;
        report.figure("events missed while down (approx.)", "missed", target.saturating_sub(before_drop));
        report.figure("events replayed (all clients)", "replayed", replayed);
        let secs = |d: Option<Duration>| d.map_or(serde_json::Value::Null, |d| stats::round2(d.as_secs_f64()).into());
        report.add(
            "all resubscribed after (s)",
            resubscribed.map_or("never".into(), |d| stats::round2(d.as_secs_f64()).to_string()),
            "resubscribed_secs",
            secs(resubscribed),
        );
        report.figure("all caught up after (s)", "caught_up_secs", stats::round2(slowest.as_secs_f64()));
        report.maybe(
            "server CPU during the storm (ms)",
            "server_cpu_ms",
            server_cpu.map(|us| stats::round2(stats::as_f64(us) / 1000.0)),
        );
        report.maybe(
            "server CPU us per resuming client",
            "server_cpu_us_per_client",
            server_cpu.and_then(|us| stats::per(us, u64::try_from(clients).ok()?)),
        );
        super::add_others(&mut report, &before, &after);
    }
    Ok(report.print(&check))
}

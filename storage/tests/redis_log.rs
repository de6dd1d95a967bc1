//! What `RedisLog` promises beyond the `EventLog` contract, against a private `redis-server`:
//! every append is announced on the bus in log order, nodes appending concurrently share one
//! contiguous sequence, and Redis losing its data, expiring an idle channel, stopping or having
//! too few replicas never leads to a reused id, a silent gap, or a hang.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};
use reprise_storage::conformance::ManualClock;
use reprise_storage::private_redis::PrivateRedis;
use reprise_storage::{
    BusEvent, Cursor, EventId, EventLog, LogKey, NewEvent, RedisLog, StorageError, parse_bus_message,
};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const START_MS: u64 = 1_700_000_000_000;

/// How long a test waits for a bus message before it fails.
const BUS_WAIT: Duration = Duration::from_secs(5);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn node(redis: &PrivateRedis, runtime: &Runtime, prefix: &str) -> RedisLog {
    RedisLog::connect(&redis.url(), prefix, runtime.handle().clone()).unwrap()
}

fn event<'a>(key: &LogKey, data: &'a str) -> NewEvent<'a> {
    NewEvent { key: key.clone(), event: "message".into(), data: data.into(), user_id: None }
}

/// A subscriber to a log's bus, as a cluster node would run one: RESP3 pushes on a connection
/// manager.
struct Bus {
    /// Kept so the subscription lives as long as the test needs it.
    _connection: ConnectionManager,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

impl Bus {
    fn subscribe(redis: &PrivateRedis, runtime: &Runtime, log: &RedisLog) -> Bus {
        let url = format!("{}?protocol=resp3", redis.url());
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let channel = log.bus_channel();
        let connection = runtime.block_on(async move {
            let client = redis::Client::open(url).unwrap();
            let config = ConnectionManagerConfig::new().set_push_sender(push_tx);
            let mut connection = ConnectionManager::new_with_config(client, config).await.unwrap();
            connection.subscribe(channel).await.unwrap();
            connection
        });
        Bus { _connection: connection, pushes }
    }

    /// The next `n` events published on the bus, in order.
    fn next_events(&mut self, runtime: &Runtime, n: usize) -> Vec<BusEvent> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let push = runtime
                .block_on(async { tokio::time::timeout(BUS_WAIT, self.pushes.recv()).await })
                .expect("a bus message within the wait")
                .expect("the subscription is open");
            if push.kind != PushKind::Message {
                continue; // the subscription's confirmation
            }
            let Some(Value::BulkString(payload)) = push.data.get(1) else { panic!("a message without payload") };
            events.push(parse_bus_message(payload).expect("an event message"));
        }
        events
    }
}

/// The cluster side fans out what the bus carries: each append must be on it, in order, with the
/// ids the append returned, the sender's user id and the socket to skip.
#[test]
fn every_append_is_announced_on_the_bus() {
    let redis = PrivateRedis::start().unwrap();
    let runtime = runtime();
    let log = node(&redis, &runtime, "bus");
    let mut bus = Bus::subscribe(&redis, &runtime, &log);
    let (a, b) = (LogKey::new("app", "presence-room"), LogKey::new("app", "orders"));
    let typing = NewEvent { user_id: Some("42".into()), ..event(&a, r#"{"on":true,"note":"é \"quoted\" /"}"#) };
    let events = [typing, event(&b, "b1"), event(&a, "a2")];
    let ids = log.append_announced(&events, &[Some("1.2".into())]).unwrap();

    let announced = bus.next_events(&runtime, 3);
    let got: Vec<_> = announced.iter().map(|e| (e.key(), e.id(), e.data.as_str(), e.user_id.as_deref())).collect();
    let want: Vec<_> =
        events.iter().zip(&ids).map(|(e, id)| (e.key.clone(), *id, &*e.data, e.user_id.as_deref())).collect();
    assert_eq!(got, want);
    let skipped: Vec<_> = announced.iter().map(|e| e.except_socket.as_deref()).collect();
    assert_eq!(skipped, vec![Some("1.2"), None, None]);
    assert!(announced.iter().all(|e| e.event == "message"));
}

/// Several nodes (each its own connection and its own clock, seconds apart) append to one
/// channel at once: sequences stay 1..=n with no gap or duplicate, ids rise in log order though
/// the clocks disagree, and the bus carries the events in exactly the log's order.
#[test]
fn nodes_appending_concurrently_share_one_sequence() {
    const NODES: u64 = 4;
    const PER_NODE: usize = 40;
    let redis = PrivateRedis::start().unwrap();
    let runtime = runtime();
    let key = LogKey::new("app", "shared");
    let nodes: Vec<RedisLog> = (0..NODES)
        .map(|n| node(&redis, &runtime, "nodes").with_clock(ManualClock::new(START_MS + n * 3_000).clock()))
        .collect();
    let mut bus = Bus::subscribe(&redis, &runtime, &nodes[0]);
    let per_node: Vec<Vec<EventId>> = std::thread::scope(|scope| {
        let workers: Vec<_> = nodes
            .iter()
            .map(|log| {
                let key = &key;
                scope.spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..PER_NODE {
                        // Single events and small batches, as the committer's groups are.
                        let batch: Vec<NewEvent> = (0..1 + i % 3).map(|_| event(key, "x")).collect();
                        ids.extend(log.append(&batch).unwrap());
                    }
                    ids
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().unwrap()).collect()
    });
    let total: usize = per_node.iter().map(Vec::len).sum();
    for ids in &per_node {
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "each node sees its own ids rise");
    }
    let mut seqs: Vec<u64> = per_node.iter().flatten().map(|id| id.seq()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=u64::try_from(total).unwrap()).collect::<Vec<_>>());

    let logged: Vec<EventId> =
        nodes[1].read(&key, Cursor::Oldest, usize::MAX).unwrap().events.iter().map(|e| e.id).collect();
    assert!(logged.windows(2).all(|pair| pair[0] < pair[1]), "ids rise in log order despite the skewed clocks");
    let announced: Vec<EventId> = bus.next_events(&runtime, total).iter().map(BusEvent::id).collect();
    assert_eq!(announced, logged, "the bus carries the log's order");
}

/// Redis restarted empty (here: FLUSHALL) under a node that had seen its epoch: the node notices,
/// new sequences are seeded above every one handed out before, and cursors from before the loss
/// (the zero cursor and `Oldest` included) read `recovered: false`, on the channels appended to
/// since and on those not touched yet. A node that joins after the loss seeds its channels too.
#[test]
fn redis_losing_its_data_never_reuses_ids() {
    let redis = PrivateRedis::start().unwrap();
    let runtime = runtime();
    let log = node(&redis, &runtime, "loss");
    let (key, untouched) = (LogKey::new("app", "ch"), LogKey::new("app", "untouched"));
    let before = log.append(&[event(&key, "1"), event(&key, "2"), event(&key, "3"), event(&untouched, "u")]).unwrap();
    assert_eq!(before.iter().map(|id| id.seq()).collect::<Vec<_>>(), vec![1, 2, 3, 1], "a new deployment starts at 1");

    let mut connection = log.connection();
    runtime.block_on(redis::cmd("FLUSHALL").query_async::<()>(&mut connection)).unwrap();

    let zero = Cursor::After(EventId::new(0, 0));
    for cursor in [Cursor::Oldest, zero, Cursor::After(before[3])] {
        assert!(!log.read(&untouched, cursor, 10).unwrap().recovered, "{cursor:?} on a channel not appended to since");
    }
    let after = log.append(&[event(&key, "4"), event(&key, "5")]).unwrap();
    assert!(after[0].seq() > 1_000_000_000_000_000, "seeded from Redis's clock in µs: {}", after[0]);
    assert_eq!(after[1].seq(), after[0].seq() + 1);
    assert!(after[0] > before[2]);
    for cursor in [Cursor::Oldest, zero, Cursor::After(before[0]), Cursor::After(before[2])] {
        let outcome = log.read(&key, cursor, 10).unwrap();
        assert!(!outcome.recovered, "{cursor:?} is from before the loss");
        assert_eq!(outcome.events.iter().map(|e| e.id).collect::<Vec<_>>(), after);
    }
    assert!(log.read(&key, Cursor::After(after[0]), 10).unwrap().recovered, "a cursor from after the loss is whole");

    let newcomer = node(&redis, &runtime, "loss");
    let fresh = newcomer.append(&[event(&LogKey::new("app", "fresh"), "f")]).unwrap();
    assert!(fresh[0].seq() > 1_000_000_000_000_000, "seeded by a node that never saw the old epoch: {}", fresh[0]);
}

/// A channel idle longer than the TTL leaves Redis; the next append seeds it (no id comes back)
/// and old cursors read `recovered: false`.
#[test]
fn an_expired_channel_never_reuses_ids() {
    let redis = PrivateRedis::start().unwrap();
    let runtime = runtime();
    let log = node(&redis, &runtime, "idle").with_idle_ttl(Duration::from_millis(200));
    let key = LogKey::new("app", "ch");
    let before = log.append(&[event(&key, "1"), event(&key, "2")]).unwrap();
    std::thread::sleep(Duration::from_millis(400));

    let gone = log.read(&key, Cursor::After(before[1]), 10).unwrap();
    assert_eq!((gone.events.len(), gone.head, gone.recovered), (0, None, false));
    assert_eq!(log.channels("app").unwrap(), vec![key.clone()], "its name is kept");
    let after = log.append(&[event(&key, "3")]).unwrap();
    assert!(after[0].seq() > 1_000_000_000_000_000, "seeded: {}", after[0]);
    assert!(!log.read(&key, Cursor::After(before[1]), 10).unwrap().recovered);
    assert!(!log.read(&key, Cursor::Oldest, 10).unwrap().recovered);
}

/// A stopped Redis fails appends with `Backend` within the timeout (the publish answers "not
/// stored" instead of hanging), and appends work again once it is back; it came back empty, so
/// they are seeded.
#[test]
fn a_stopped_redis_fails_appends_promptly_and_recovers() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let mut redis = PrivateRedis::start().unwrap();
    let runtime = runtime();
    let log = RedisLog::connect_with_timeout(&redis.url(), "outage", runtime.handle().clone(), TIMEOUT).unwrap();
    let key = LogKey::new("app", "ch");
    let before = log.append(&[event(&key, "1")]).unwrap();

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let result = log.append(&[event(&key, "lost")]);
        assert!(matches!(result, Err(StorageError::Backend(_))), "{result:?}");
        // Generous: the promise is "bounded by the timeout", not a latency figure.
        assert!(started.elapsed() < TIMEOUT * 3, "failed after {:?}", started.elapsed());
    }

    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        match log.append(&[event(&key, "2")]) {
            Ok(ids) => break ids,
            Err(error) if Instant::now() < deadline => {
                assert!(matches!(error, StorageError::Backend(_)), "{error:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("appends never recovered: {error}"),
        }
    };
    assert!(after[0].seq() > before[0].seq() + 1_000_000, "Redis came back empty: seeded, {}", after[0]);
    assert!(!log.read(&key, Cursor::After(before[0]), 10).unwrap().recovered);
}

/// A script that fails appends nothing, also when it fails on the second event of a batch: here
/// another program's value sits at one channel's key.
#[test]
fn a_failed_append_writes_nothing() {
    let redis = PrivateRedis::start().unwrap();
    let runtime = runtime();
    let log = node(&redis, &runtime, "fail");
    let mut bus = Bus::subscribe(&redis, &runtime, &log);
    let (good, bad) = (LogKey::new("app", "good"), LogKey::new("app", "bad"));
    log.append(&[event(&good, "before")]).unwrap();
    let mut connection = log.connection();
    runtime
        .block_on(redis::cmd("SET").arg("fail:log:app:bad").arg("not a stream").query_async::<()>(&mut connection))
        .unwrap();

    let result = log.append(&[event(&good, "lost"), event(&bad, "x")]);
    assert!(matches!(&result, Err(StorageError::Backend(message)) if message.contains("not a stream")), "{result:?}");
    assert_eq!(log.read(&good, Cursor::Oldest, 10).unwrap().events.len(), 1);
    assert_eq!(log.append(&[event(&good, "after")]).unwrap()[0].seq(), 2, "no sequence was burnt");
    let announced: Vec<String> = bus.next_events(&runtime, 2).into_iter().map(|e| e.data).collect();
    assert_eq!(announced, vec!["before", "after"], "nothing of the failed append reached the bus");
}

/// With replicas required, a flush that reaches fewer of them fails: the publish is not
/// acknowledged as durable.
#[test]
fn a_flush_short_of_replicas_fails() {
    let redis = PrivateRedis::start().unwrap();
    let runtime = runtime();
    let log = Arc::new(node(&redis, &runtime, "wait").with_wait_replicas(1, Duration::from_millis(50)));
    log.append(&[event(&LogKey::new("app", "ch"), "x")]).unwrap();
    let result = log.flush();
    assert!(matches!(&result, Err(StorageError::Backend(message)) if message.contains("0 of 1")), "{result:?}");
    assert!(node(&redis, &runtime, "wait").flush().is_ok(), "without replicas required, flush has nothing to wait for");
}

//! `RedisLog` honours the `EventLog` contract, against a private `redis-server`.

use std::sync::atomic::{AtomicU64, Ordering};

use reprise_storage::private_redis::PrivateRedis;
use reprise_storage::{EventLog, RedisLog, conformance};

#[test]
fn redis_log_conforms() {
    let redis = PrivateRedis::start().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Each log gets its own prefix: a fresh, empty log in the same Redis.
    let logs = AtomicU64::new(0);
    conformance::run_all(&|clock| -> Box<dyn EventLog> {
        let prefix = format!("conformance-{}", logs.fetch_add(1, Ordering::Relaxed));
        Box::new(RedisLog::connect(&redis.url(), &prefix, runtime.handle().clone()).unwrap().with_clock(clock))
    });
}

//! What only the Redis backend has, on a real `redis-server` (started by
//! each test on a free loopback port). What every shared engine does (two
//! instances, resume, outages, lost data, crashed instances) is tested
//! once for all in `tests/cluster.rs`.
#![cfg(all(feature = "testing", feature = "redis"))]

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use htmx_sse::Error;
use htmx_sse::backend::RedisConfig;
use htmx_sse::broadcast::BroadcastManager;

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error_at_start() {
    let redis = RedisServer::start(false);
    let url = redis.url();
    drop(redis);
    let err = BroadcastManager::builder()
        .build_redis(RedisConfig::new(url).timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    let err = BroadcastManager::builder()
        .build_redis(RedisConfig::new("http://not-redis"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad Redis URL"), "{err}");
}

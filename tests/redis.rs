//! What only the Redis backend has, on a real `redis-server` (started by
//! each test on a free loopback port). What every shared engine does (two
//! instances, resume, outages, lost data, crashed instances) is tested
//! once for all in `tests/cluster.rs`. Here: a timeout of
//! `Duration::MAX`, the renewal of liveness never waiting on burials, and
//! what the registry keeps staying bounded.
#![cfg(all(feature = "testing", feature = "redis"))]

mod common;

use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::redis::RedisServer;
use common::{Instance, cut_off, reaches};
use htmx_sse::Error;
use htmx_sse::backend::RedisConfig;
use htmx_sse::broadcast::BroadcastManager;
use htmx_sse::streaming::StreamConfig;
use redis::AsyncCommands as _;

const WAIT: Duration = Duration::from_secs(10);

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

/// An instance on `url` under `prefix`, with a 500 ms timeout and this
/// liveness, serving its routes.
async fn instance(url: String, prefix: &str, liveness: Duration) -> Instance {
    let manager = BroadcastManager::builder()
        .stream(StreamConfig::new().heartbeat(Duration::from_millis(200)))
        .build_redis(
            RedisConfig::new(url)
                .prefix(prefix)
                .timeout(Duration::from_millis(500))
                .liveness(liveness),
        )
        .await
        .expect("connects to the test redis-server");
    Instance::serve(manager).await
}

/// A timeout meaning "never" (`Duration::MAX`) is a setting, not a panic:
/// the backend connects and works with it.
#[tokio::test]
async fn a_timeout_of_duration_max_does_not_panic() {
    let redis = RedisServer::start(false);
    let manager = BroadcastManager::builder()
        .build_redis(RedisConfig::new(redis.url()).timeout(Duration::MAX))
        .await
        .unwrap();
    manager.broadcast("n", 1, None, &[]).await.unwrap();
    assert_eq!(manager.cluster_connection_count().await.unwrap(), 0);
}

/// Burying dead instances never delays the renewal of a live one's
/// liveness key: with 20 000 crashed instances to bury (a burial that
/// takes a while), an instance with a short liveness (600 ms) stays alive
/// throughout, over several liveness periods: its page is found from
/// another instance and counted every time, never taken for dead (and
/// buried). And the dead are buried in the end.
#[tokio::test]
async fn a_healthy_instance_is_never_taken_for_dead_while_others_are_buried() {
    let redis = RedisServer::start(false);
    let mut con = redis.connection().await;
    for chunk in 0..20 {
        let mut pipe = redis::pipe();
        for n in chunk * 1000..(chunk + 1) * 1000 {
            let (dead, id) = (format!("dead{n}"), format!("c{n}"));
            pipe.sadd("alive:instances", &dead)
                .ignore()
                .hset(format!("alive:conns:{dead}"), &id, "")
                .ignore()
                .hset("alive:where", &id, &dead)
                .ignore();
        }
        let () = pipe.query_async(&mut con).await.unwrap();
    }
    let liveness = Duration::from_millis(600);
    let a = instance(redis.url(), "alive", liveness).await;
    let b = instance(redis.url(), "alive", liveness).await;
    let (_page, page_id) = a.open(None).await;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if let Err(e) = b.manager.send_to(&page_id, "dm", "ping", None).await {
            panic!("a healthy instance's connection is unknown: {e}");
        }
        assert_eq!(b.manager.cluster_connection_count().await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let (instances, places): (usize, usize) = redis::pipe()
            .scard("alive:instances")
            .hlen("alive:where")
            .query_async(&mut con)
            .await
            .unwrap();
        if (instances, places) == (2, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{instances} instances and {places} connections recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the registry keeps stays bounded: 200 pages come and go on an
/// instance (half of them leave while it is cut off from Redis, for less
/// than its liveness), another instance crashes with pages open; once it
/// is buried, Redis holds the one page that stayed and the two live
/// instances, nothing more.
#[tokio::test]
async fn the_registry_stays_bounded_under_churn_outages_and_crashes() {
    let redis = RedisServer::start(false);
    let proxy = Proxy::start(
        redis
            .url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned(),
    )
    .await;
    let through = format!("redis://127.0.0.1:{}/", proxy.port());
    // A long liveness for A (never taken for dead while cut off), a short
    // one for B, which buries the crashed instance.
    let a = instance(through, "churn", Duration::from_secs(60)).await;
    let b = instance(redis.url(), "churn", Duration::from_millis(600)).await;
    let (mut stays, stays_id) = a.open(None).await;
    for _ in 0..100 {
        let (page, _) = a.open(None).await;
        page.close();
    }
    let mut open = Vec::new();
    for _ in 0..100 {
        open.push(a.open(None).await.0);
    }
    cut_off(&proxy, &a.manager).await;
    for page in open {
        page.close();
    }
    let deadline = Instant::now() + WAIT;
    while a.manager.connection_count() != 1 {
        assert!(Instant::now() < deadline, "the pages did not leave");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.restore();

    // C lives on its own runtime, to crash.
    let c_runtime = common::Crashable::start();
    let url = redis.url();
    let base_c = c_runtime
        .run(async move {
            instance(url, "churn", Duration::from_millis(600))
                .await
                .base
        })
        .await;
    let mut on_c = Vec::new();
    for _ in 0..5 {
        on_c.push(common::open_connection(&format!("{base_c}/sse"), None).await);
    }
    c_runtime.crash();
    drop(on_c);

    let mut con = redis.connection().await;
    let deadline = Instant::now() + WAIT;
    loop {
        // Per instance: A's connections, A's and B's liveness keys.
        let mut keys: Vec<String> = con.keys("churn:conns:*").await.unwrap();
        keys.extend(con.keys::<_, Vec<String>>("churn:alive:*").await.unwrap());
        let (instances, places): (usize, usize) = redis::pipe()
            .scard("churn:instances")
            .hlen("churn:where")
            .query_async(&mut con)
            .await
            .unwrap();
        if a.manager.connection_count() == 1 && (instances, places, keys.len()) == (2, 1, 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{instances} instances, {places} connections recorded; keys: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reaches(&b, &stays_id, &mut stays, "still here").await;
}

//! The hub with `redis:` against a real `redis-server` (Debian's, installed by hack/deps.sh):
//! not ready until Redis was reached once.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// A `redis-server` on `port`, killed when dropped.
struct Redis(Child);

impl Redis {
    fn start(port: u16, dir: &std::path::Path) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server (run hack/deps.sh to install it): {e}"));
        Redis(child)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_replica_is_not_ready_until_it_has_reached_redis_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = TestConfig::new(dir.path())
        .set("redis", "{ url: { env: TEST_REDIS_URL } }")
        .env("TEST_REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .build();
    let hub = TestHub::start(config).await;

    // Nothing listens on the port yet: the load balancer must not send this replica anything.
    let (status, body) = hub.request("GET", "/readyz", &[], Vec::new()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("waiting for Redis"), "{body}");
    let (status, _) = hub.request("GET", "/healthz", &[], Vec::new()).await;
    assert_eq!(status, 200, "alive all the same");

    let _redis = Redis::start(port, dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = hub.request("GET", "/readyz", &[], Vec::new()).await;
        if status == 200 {
            assert_eq!(body.trim(), "ok");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} {body:?} 20 s after Redis started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = hub.metrics().await;
    assert!(metrics.contains("tether_hub_redis_up 1"), "{metrics}");
    hub.stop().await;
}

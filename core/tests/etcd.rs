//! The etcd store against real etcd (Debian's `etcd-server`), started by the test on loopback
//! ports: the same conformance suite as the embedded store, namespaces that do not see each
//! other, and a 3-member cluster that keeps working when a member dies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use trainfleet_core::etcd_process::EtcdCluster;
use trainfleet_core::kv::etcd::{EtcdOptions, EtcdStore};
use trainfleet_core::kv::{KvStore, conformance};

fn options(endpoints: Vec<String>, prefix: &str) -> EtcdOptions {
    EtcdOptions {
        endpoints,
        prefix: prefix.into(),
        call_timeout: Duration::from_secs(2),
        ..EtcdOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_store_passes_the_conformance_suite_in_its_own_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1).unwrap();
    let store = EtcdStore::connect(options(cluster.endpoints(), "/conformance"))
        .await
        .unwrap();
    conformance::run_all(&store).await;
    conformance::run_concurrent(Arc::new(store)).await;

    // Another cluster's namespace sees none of it, and the keys really live under the prefix.
    let other = EtcdStore::connect(options(cluster.endpoints(), "/other"))
        .await
        .unwrap();
    assert!(other.prefix(b"").await.unwrap().is_empty());
    other.put(b"k", b"v").await.unwrap();
    let raw = EtcdStore::connect(options(cluster.endpoints(), "/"))
        .await
        .unwrap();
    assert_eq!(raw.get(b"other/k").await.unwrap().unwrap().value, b"v");

    let err = EtcdStore::connect(options(vec!["http://127.0.0.1:1".into()], "/x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no member answered"), "{err}");
    let err = EtcdStore::connect(options(cluster.endpoints(), "relative"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("etcd.prefix"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_keeps_serving_when_a_member_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = EtcdCluster::start(dir.path(), 3).unwrap();
    let store = EtcdStore::connect(options(cluster.endpoints(), "/ha"))
        .await
        .unwrap();
    store.put(b"before", b"1").await.unwrap();
    // Kill the member the store talks to first.
    cluster.members[0].kill();
    let started = Instant::now();
    let mut failures = 0;
    for i in 0..50 {
        let key = format!("after/{i}");
        if let Err(e) = store.put(key.as_bytes(), b"x").await {
            eprintln!("put {i}: {e}");
            failures += 1;
        }
    }
    assert_eq!(failures, 0, "no call fails with one member of three down");
    assert_eq!(store.prefix(b"after/").await.unwrap().len(), 50);
    assert_eq!(store.get(b"before").await.unwrap().unwrap().value, b"1");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the dead member was skipped, not waited on for every call"
    );
    // It comes back and catches up.
    cluster.restart(0).unwrap();
    let only_first =
        EtcdStore::connect(options(vec![cluster.members[0].client_url.clone()], "/ha"))
            .await
            .unwrap();
    assert_eq!(only_first.prefix(b"after/").await.unwrap().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_apply_only_while_the_fence_key_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = EtcdCluster::start(dir.path(), 1).unwrap();
    let store = EtcdStore::connect(options(cluster.endpoints(), "/fence"))
        .await
        .unwrap();
    let leader_rev = store.put(b"leader", b"me").await.unwrap();
    let fenced = store.fenced(store.full_key(b"leader"), leader_rev);
    fenced.put(b"state", b"1").await.unwrap();
    assert!(
        fenced
            .compare_and_put(b"state", 0, b"x")
            .await
            .is_ok_and(|won| !won),
        "an inner compare that fails is reported as such, not as a lost fence"
    );
    fenced
        .apply_batch(vec![vec![trainfleet_core::kv::TxnOp::Put(
            b"state".to_vec(),
            b"2".to_vec(),
        )]])
        .await
        .unwrap();

    // Another replica takes the leader key: the old leader's writes are refused, whole.
    store.put(b"leader", b"someone else").await.unwrap();
    let err = fenced.put(b"state", b"stale").await.unwrap_err();
    assert!(matches!(err, trainfleet_core::Error::Fenced(_)), "{err}");
    let err = fenced
        .apply_batch(vec![vec![trainfleet_core::kv::TxnOp::Put(
            b"other".to_vec(),
            b"x".to_vec(),
        )]])
        .await
        .unwrap_err();
    assert!(matches!(err, trainfleet_core::Error::Fenced(_)), "{err}");
    assert_eq!(store.get(b"state").await.unwrap().unwrap().value, b"2");
    assert_eq!(store.get(b"other").await.unwrap(), None);
    // Reads are not fenced.
    assert_eq!(fenced.get(b"state").await.unwrap().unwrap().value, b"2");
}

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

    // A range larger than one gRPC answer may carry (4 MiB) is read whole, in key order: a
    // coordinator's state outgrows one message long before it outgrows etcd.
    let big = EtcdStore::connect(options(cluster.endpoints(), "/big"))
        .await
        .unwrap();
    let value = vec![b'x'; 20 << 10];
    for chunk in (0..600).collect::<Vec<u32>>().chunks(50) {
        let ops = chunk
            .iter()
            .map(|i| {
                trainfleet_core::kv::TxnOp::Put(format!("k/{i:04}").into_bytes(), value.clone())
            })
            .collect();
        big.apply_batch(vec![ops]).await.unwrap();
    }
    let all = big.prefix(b"k/").await.unwrap();
    assert_eq!(all.len(), 600, "12 MiB under one prefix");
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(all[599].key, b"k/0599");
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

/// Connects, retrying while a fresh cluster elects its leader.
async fn connect_patiently(options: EtcdOptions) -> trainfleet_core::Result<EtcdStore> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match EtcdStore::connect(options.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_password_authentication() {
    use trainfleet_core::etcd_process::TestCerts;
    use trainfleet_core::kv::etcd::EtcdTls;
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::generate(&dir.path().join("certs")).unwrap();
    let cluster = EtcdCluster::start_with(dir.path(), 1, Some(certs.clone())).unwrap();
    assert!(cluster.endpoints()[0].starts_with("https://"));
    let tls = EtcdTls {
        ca_file: certs.ca.clone(),
        cert_file: Some(certs.client_cert.clone()),
        key_file: Some(certs.client_key.clone()),
        server_name: None,
    };
    let secure = |user: Option<(&str, &str)>| EtcdOptions {
        tls: Some(tls.clone()),
        user: user.map(|(u, p)| (u.to_owned(), p.to_owned())),
        ..options(cluster.endpoints(), "/tls")
    };
    let store = connect_patiently(secure(None)).await.unwrap();
    conformance::run_all(&store).await;

    // Without a client certificate the member refuses the connection.
    let no_identity = EtcdOptions {
        tls: Some(EtcdTls {
            cert_file: None,
            key_file: None,
            ..tls.clone()
        }),
        ..options(cluster.endpoints(), "/tls")
    };
    assert!(EtcdStore::connect(no_identity).await.is_err());
    // A missing CA file is named.
    let err = EtcdStore::connect(EtcdOptions {
        tls: Some(EtcdTls {
            ca_file: dir.path().join("nope.pem"),
            ..tls.clone()
        }),
        ..options(cluster.endpoints(), "/tls")
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("etcd.tls.ca_file") && err.contains("nope.pem"),
        "{err}"
    );

    // Turn authentication on (root user, as etcd requires), then only the password works.
    let mut admin = store.session_client().await.unwrap();
    admin.user_add("root", "s3cret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let authed = connect_patiently(secure(Some(("root", "s3cret"))))
        .await
        .unwrap();
    authed.put(b"auth/k", b"v").await.unwrap();
    assert_eq!(authed.get(b"auth/k").await.unwrap().unwrap().value, b"v");
    let wrong = EtcdStore::connect(secure(Some(("root", "wrong")))).await;
    assert!(wrong.is_err(), "a wrong password is refused");
    let anonymous = EtcdStore::connect(secure(None)).await;
    assert!(anonymous.is_err(), "no credentials, no access");
}

//! The behaviour every [`KvStore`] must have, as a suite any implementation's tests call with a
//! fresh, empty store: `conformance::run_all(&store).await`. It panics on the first deviation.
//! The embedded store runs it in `core`; the etcd store runs it against a real etcd.

use std::sync::Arc;

use super::{Compare, KeyRange, KvStore, Txn, TxnOp};

/// Runs every check, each under its own key prefix so they do not interfere.
pub async fn run_all(store: &dyn KvStore) {
    put_get_and_revisions(store).await;
    ranges_and_prefixes(store).await;
    delete(store).await;
    transactions(store).await;
    compare_and_put(store).await;
    batches(store).await;
    applied_batches(store).await;
}

/// Runs the concurrency check; needs an `Arc` so that tasks can share the store.
pub async fn run_concurrent(store: Arc<dyn KvStore>) {
    concurrent_increments_are_not_lost(store).await;
}

async fn put_get_and_revisions(store: &dyn KvStore) {
    assert_eq!(store.get(b"pg/a").await.unwrap(), None);
    let r1 = store.put(b"pg/a", b"1").await.unwrap();
    let r2 = store.put(b"pg/a", b"2").await.unwrap();
    assert!(r2 > r1, "revisions increase: {r1} then {r2}");
    let kv = store.get(b"pg/a").await.unwrap().expect("present");
    assert_eq!(kv.value, b"2");
    assert_eq!(kv.create_revision, r1);
    assert_eq!(kv.mod_revision, r2);
    assert_eq!(kv.version, 2);
    // Binary keys and values, empty value.
    store.put(b"pg/\x00\xff", b"").await.unwrap();
    assert_eq!(
        store
            .get(b"pg/\x00\xff")
            .await
            .unwrap()
            .expect("binary key")
            .value,
        b""
    );
}

async fn ranges_and_prefixes(store: &dyn KvStore) {
    for key in ["rp/b", "rp/a", "rp/c", "rpx", "rp0"] {
        store.put(key.as_bytes(), key.as_bytes()).await.unwrap();
    }
    let keys = |kvs: Vec<super::KeyValue>| {
        kvs.into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(store.prefix(b"rp/").await.unwrap()),
        ["rp/a", "rp/b", "rp/c"],
        "prefix, in byte order"
    );
    let range = KeyRange {
        start: b"rp/a".to_vec(),
        end: Some(b"rp/c".to_vec()),
    };
    assert_eq!(
        keys(store.range(range).await.unwrap()),
        ["rp/a", "rp/b"],
        "end is exclusive"
    );
    assert!(store.prefix(b"nothing-here/").await.unwrap().is_empty());
    assert_eq!(KeyRange::prefix(vec![b'a', 0xff]).end, Some(vec![b'b']));
    let everything = store.range(KeyRange::prefix(Vec::new())).await.unwrap();
    assert!(
        keys(everything).iter().any(|k| k == "rpx"),
        "the empty prefix covers every key"
    );
}

async fn delete(store: &dyn KvStore) {
    store.put(b"del/a", b"x").await.unwrap();
    assert!(store.delete(b"del/a").await.unwrap(), "existed");
    assert!(!store.delete(b"del/a").await.unwrap(), "already gone");
    assert_eq!(store.get(b"del/a").await.unwrap(), None);
    // Re-creating starts a new life: version 1, new create revision.
    let r = store.put(b"del/a", b"y").await.unwrap();
    let kv = store.get(b"del/a").await.unwrap().unwrap();
    assert_eq!((kv.version, kv.create_revision), (1, r));
}

async fn transactions(store: &dyn KvStore) {
    let r = store.put(b"tx/lock", b"owner-1").await.unwrap();
    // All compares hold: success applies, atomically, at one revision.
    let ok = store
        .txn(Txn {
            compares: vec![
                Compare::ModRevision(b"tx/lock".to_vec(), r),
                Compare::Value(b"tx/lock".to_vec(), b"owner-1".to_vec()),
                Compare::ModRevision(b"tx/absent".to_vec(), 0),
            ],
            success: vec![
                TxnOp::Put(b"tx/a".to_vec(), b"1".to_vec()),
                TxnOp::Put(b"tx/b".to_vec(), b"1".to_vec()),
            ],
            failure: vec![TxnOp::Put(b"tx/failed".to_vec(), b"1".to_vec())],
        })
        .await
        .unwrap();
    assert!(ok.succeeded);
    let (a, b) = (
        store.get(b"tx/a").await.unwrap().unwrap(),
        store.get(b"tx/b").await.unwrap().unwrap(),
    );
    assert_eq!(
        a.mod_revision, b.mod_revision,
        "one transaction, one revision"
    );
    assert_eq!(a.mod_revision, ok.revision);
    assert_eq!(store.get(b"tx/failed").await.unwrap(), None);

    // One compare fails: only the failure branch applies.
    let failed = store
        .txn(Txn {
            compares: vec![
                Compare::ModRevision(b"tx/lock".to_vec(), r),
                Compare::Value(b"tx/lock".to_vec(), b"owner-2".to_vec()),
            ],
            success: vec![TxnOp::Delete(b"tx/a".to_vec())],
            failure: vec![TxnOp::Put(b"tx/failed".to_vec(), b"1".to_vec())],
        })
        .await
        .unwrap();
    assert!(!failed.succeeded);
    assert!(
        store.get(b"tx/a").await.unwrap().is_some(),
        "success branch did not run"
    );
    assert!(
        store.get(b"tx/failed").await.unwrap().is_some(),
        "failure branch ran"
    );

    // A value compare on an absent key fails.
    let absent = Txn {
        compares: vec![Compare::Value(b"tx/none".to_vec(), Vec::new())],
        ..Txn::default()
    };
    assert!(!store.txn(absent).await.unwrap().succeeded);

    // A transaction that changes nothing does not advance the revision.
    let before = store.put(b"tx/mark", b"m").await.unwrap();
    let noop = store
        .txn(Txn::unconditional(vec![TxnOp::Delete(
            b"tx/never-existed".to_vec(),
        )]))
        .await
        .unwrap();
    assert_eq!(noop.revision, before);
}

async fn compare_and_put(store: &dyn KvStore) {
    assert!(
        store.compare_and_put(b"cas/k", 0, b"first").await.unwrap(),
        "create if absent"
    );
    assert!(
        !store.compare_and_put(b"cas/k", 0, b"second").await.unwrap(),
        "not absent any more"
    );
    let rev = store.get(b"cas/k").await.unwrap().unwrap().mod_revision;
    assert!(
        store
            .compare_and_put(b"cas/k", rev, b"third")
            .await
            .unwrap()
    );
    assert!(
        !store
            .compare_and_put(b"cas/k", rev, b"stale")
            .await
            .unwrap(),
        "a stale revision loses"
    );
    assert_eq!(store.get(b"cas/k").await.unwrap().unwrap().value, b"third");
}

async fn concurrent_increments_are_not_lost(store: Arc<dyn KvStore>) {
    const WRITERS: usize = 8;
    const EACH: usize = 10;
    store.put(b"cc/counter", b"0").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < EACH {
                let kv = store.get(b"cc/counter").await.unwrap().unwrap();
                let n: u64 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                if store
                    .compare_and_put(
                        b"cc/counter",
                        kv.mod_revision,
                        (n + 1).to_string().as_bytes(),
                    )
                    .await
                    .unwrap()
                {
                    done += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kv = store.get(b"cc/counter").await.unwrap().unwrap();
    assert_eq!(
        kv.value,
        (WRITERS * EACH).to_string().as_bytes(),
        "compare-and-put lost no update"
    );
    assert_eq!(kv.version, (WRITERS * EACH + 1) as i64);
}

async fn batches(store: &dyn KvStore) {
    let before = store.put(b"batch/seed", b"0").await.unwrap();
    let txns = vec![
        Txn::unconditional(vec![TxnOp::Put(b"batch/a".to_vec(), b"1".to_vec())]),
        // Sees the first: `batch/a` exists now, so this compare on "absent" fails.
        Txn {
            compares: vec![Compare::ModRevision(b"batch/a".to_vec(), 0)],
            success: vec![TxnOp::Put(b"batch/b".to_vec(), b"wrong".to_vec())],
            failure: vec![TxnOp::Put(b"batch/b".to_vec(), b"2".to_vec())],
        },
        // Changes nothing: the revision does not move.
        Txn::unconditional(vec![TxnOp::Delete(b"batch/never".to_vec())]),
    ];
    let responses = store.txn_batch(txns).await.unwrap();
    assert_eq!(responses.len(), 3);
    assert!(responses[0].succeeded && !responses[1].succeeded && responses[2].succeeded);
    assert_eq!(responses[0].revision, before + 1);
    assert_eq!(responses[1].revision, before + 2);
    assert_eq!(responses[2].revision, before + 2);
    let b = store.get(b"batch/b").await.unwrap().unwrap();
    assert_eq!(
        (b.value.as_slice(), b.mod_revision),
        (&b"2"[..], before + 2)
    );
    assert!(store.txn_batch(Vec::new()).await.unwrap().is_empty());
}

async fn applied_batches(store: &dyn KvStore) {
    store.put(b"apply/gone", b"x").await.unwrap();
    let batches = vec![
        vec![
            TxnOp::Put(b"apply/a".to_vec(), b"1".to_vec()),
            TxnOp::Put(b"apply/b".to_vec(), b"1".to_vec()),
        ],
        vec![TxnOp::Put(b"apply/a".to_vec(), b"2".to_vec())],
        vec![TxnOp::Delete(b"apply/gone".to_vec())],
        // Many keys: more than one etcd transaction holds.
        (0..250)
            .map(|i| TxnOp::Put(format!("apply/many/{i:03}").into_bytes(), b"m".to_vec()))
            .collect(),
    ];
    store.apply_batch(batches).await.unwrap();
    assert_eq!(
        store.get(b"apply/a").await.unwrap().unwrap().value,
        b"2",
        "the last write wins"
    );
    assert_eq!(store.get(b"apply/b").await.unwrap().unwrap().value, b"1");
    assert_eq!(store.get(b"apply/gone").await.unwrap(), None);
    assert_eq!(store.prefix(b"apply/many/").await.unwrap().len(), 250);
    store.apply_batch(Vec::new()).await.unwrap();
}

//! A leader's writes are fenced: the coordinator's state machine over an etcd store fenced by a
//! leader key keeps working while the key is unchanged, and once another replica's key replaces
//! it, the next change is refused, nothing of it reaches etcd, and the term's stop token fires
//! (the replica steps down).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trainfleet_coordinator::control::{Control, Submission};
use trainfleet_coordinator::registry::WorkerRegistry;
use trainfleet_core::artifacts::ArtifactStore;
use trainfleet_core::etcd_process::EtcdCluster;
use trainfleet_core::kv::KvStore;
use trainfleet_core::kv::etcd::{EtcdOptions, EtcdStore};

fn sleep_job() -> Submission {
    Submission::Sleep {
        name: "nap".into(),
        duration: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_changes_are_refused_and_it_steps_down() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::start(dir.path(), 1).unwrap();
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: etcd.endpoints(),
        prefix: "/fencing".into(),
        ..EtcdOptions::default()
    })
    .await
    .unwrap();
    let leader_rev = store.put(b"election/me", b"127.0.0.1:1").await.unwrap();
    let fenced: Arc<dyn KvStore> =
        Arc::new(store.fenced(store.full_key(b"election/me"), leader_rev));
    let artifacts = ArtifactStore::open(dir.path().join("artifacts").to_str().unwrap()).unwrap();
    let registry = Arc::new(WorkerRegistry::new(
        Duration::from_secs(10),
        Duration::from_secs(3600),
    ));
    let term = CancellationToken::new();
    let (control, _journal) = Control::load(
        fenced,
        registry,
        artifacts,
        Duration::from_secs(10),
        term.clone(),
    )
    .await
    .unwrap();

    let first = control
        .submit(sleep_job(), String::new())
        .await
        .unwrap()
        .to_wire();
    assert!(!term.is_cancelled());

    // Another replica wins an election: its key replaces ours.
    store.put(b"election/me", b"someone else").await.unwrap();
    let err = control
        .submit(sleep_job(), String::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no longer leads"), "{err}");
    tokio::time::timeout(Duration::from_secs(5), term.cancelled())
        .await
        .expect("the refused write ends the term");

    let jobs = store.prefix(b"/trainfleet/jobs/").await.unwrap();
    assert_eq!(
        jobs.len(),
        1,
        "only the job written while leading is in etcd"
    );
    assert!(String::from_utf8_lossy(&jobs[0].key).ends_with(&first.id));
}

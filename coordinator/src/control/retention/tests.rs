//! Retention's unit tests: archived jobs found again, a crash mid-pass, a job changed meanwhile.

use super::*;
use crate::control::Submission;
use crate::control::tests::{Fixture, close, open};
use trainfleet_proto::v1;

fn keep(finished_jobs: usize) -> RetentionConfig {
    RetentionConfig {
        finished_jobs,
        ..RetentionConfig::default()
    }
}

/// Three cancelled jobs, oldest first (ids are a millisecond apart, so they sort).
async fn three_finished(f: &Fixture) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..3 {
        let job = f
            .submit(
                Submission::Sleep {
                    name: format!("nap {i}"),
                    duration: Duration::ZERO,
                },
                format!("key-{i}"),
            )
            .await
            .unwrap();
        f.cancel(&job.id, "done with it").await.unwrap();
        ids.push(job.id);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    ids
}

fn sources(jobs: &[v1::Job]) -> Vec<(String, i32)> {
    jobs.iter().map(|j| (j.id.clone(), j.source)).collect()
}

#[tokio::test]
async fn archived_jobs_leave_the_store_and_are_found_by_get_list_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    let ids = three_finished(&f).await;
    let before: Vec<v1::Job> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(f.get(id).await.unwrap());
        }
        v
    };
    assert_eq!(f.control.archive_finished(&keep(1)).await.unwrap(), 2);
    assert_eq!(f.control.archive_finished(&keep(1)).await.unwrap(), 0);

    let (store, archive) = (v1::JobSource::Store as i32, v1::JobSource::Archive as i32);
    for (id, was) in ids.iter().zip(&before) {
        let got = f.get(id).await.unwrap();
        let expected = if *id == ids[2] { store } else { archive };
        assert_eq!(got.source, expected, "{id}");
        assert_eq!(got.archived_at.is_some(), expected == archive);
        // Apart from where it was read from, the job is as it was.
        let mut same = got.clone();
        same.source = was.source;
        same.archived_at = None;
        assert_eq!(&same, was);
    }
    let (all, next) = f.list(&[], 10, "").await;
    assert_eq!(
        sources(&all),
        [
            (ids[2].clone(), store),
            (ids[1].clone(), archive),
            (ids[0].clone(), archive)
        ]
    );
    assert_eq!(next, "");
    // Pages cross from the store into the archive.
    let (first, token) = f.list(&[], 2, "").await;
    assert_eq!(sources(&first), sources(&all[..2]));
    let (rest, last) = f.list(&[], 2, &token).await;
    assert_eq!(sources(&rest), sources(&all[2..]));
    assert_eq!(last, "");
    let (none, _) = f.list(&[crate::records::JobState::Succeeded], 10, "").await;
    assert!(none.is_empty(), "the state filter reaches the archive too");
    let (job, events) = f.control.watch(&ids[0]).await.unwrap();
    assert!(events.is_none(), "an archived job is over");
    assert_eq!(job.record.id, ids[0]);
    let err = f.cancel(&ids[0], "").await.unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("archived")),
        "{err}"
    );
    assert!(matches!(
        f.get("j-00000000000-000000").await.unwrap_err(),
        Error::NotFound(_)
    ));
    close(f).await;

    // The store let go of them: a restart loads one job and still finds all three.
    let f = open(dir.path()).await;
    assert_eq!(f.control.lock().jobs.len(), 1);
    assert_eq!(f.list(&[], 10, "").await.0.len(), 3);
    close(f).await;
}

#[tokio::test]
async fn a_crash_between_archive_and_store_loses_nothing_and_the_next_pass_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    let ids = three_finished(&f).await;
    // Steps 1 and 2 of a pass, then the coordinator "dies" before step 3.
    let due = f
        .control
        .lock()
        .due_for_archive(&keep(1), SystemTime::now(), BATCH);
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].job.id, ids[0], "oldest finish first");
    for written in f.control.archive.put_all(&due).await {
        written.unwrap();
    }
    close(f).await;

    let f = open(dir.path()).await;
    assert_eq!(f.control.lock().jobs.len(), 3, "the store still has them");
    let (all, _) = f.list(&[], 10, "").await;
    assert_eq!(all.len(), 3, "a job in both places is listed once");
    assert!(
        all.iter().all(|j| j.source == v1::JobSource::Store as i32),
        "the store's copy wins"
    );
    assert_eq!(f.control.archive_finished(&keep(1)).await.unwrap(), 2);
    assert_eq!(f.control.lock().jobs.len(), 1);
    for id in &ids {
        f.get(id).await.unwrap();
    }
    close(f).await;
}

#[tokio::test]
async fn jobs_changed_after_their_copy_stay_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    let ids = three_finished(&f).await;
    let due = f
        .control
        .lock()
        .due_for_archive(&keep(2), SystemTime::now(), BATCH);
    assert_eq!(due.len(), 1);
    f.control.lock().jobs.get_mut(&ids[0]).unwrap().error = "changed".into();
    let mut ops = Vec::new();
    assert!(!f.control.lock().release_archived(&due[0], &mut ops));
    assert!(ops.is_empty());
    close(f).await;
}

/// Records model `m-…` for finished job `job_id`, with a run whose weights verify.
async fn model_for(f: &Fixture, job_id: &str) -> String {
    let id = format!("m-{}", job_id.trim_start_matches("j-"));
    crate::control::tests::verified_model(f, &id, job_id).await;
    id
}

#[tokio::test]
async fn a_models_record_moves_with_its_job_unless_it_is_the_champion_and_comes_back_when_promoted()
{
    let dir = tempfile::tempdir().unwrap();
    let f = open(dir.path()).await;
    let ids = three_finished(&f).await;
    let mut models = Vec::new();
    for id in &ids {
        models.push(model_for(&f, id).await);
    }
    // The oldest is the champion: it and its job stay; the other two go.
    f.control
        .promote(&models[0], "first", Some(None))
        .await
        .unwrap();
    assert_eq!(f.control.archive_finished(&keep(0)).await.unwrap(), 2);
    assert_eq!(
        f.get(&ids[0]).await.unwrap().source,
        v1::JobSource::Store as i32
    );
    {
        let inner = f.control.lock();
        assert_eq!(inner.models.len(), 1);
        assert!(inner.models.contains_key(&models[0]));
    }
    close(f).await;

    // After a restart the store holds the champion alone; the registry still lists all three.
    let f = open(dir.path()).await;
    assert_eq!(f.control.lock().models.len(), 1);
    let archived = f.control.model(&models[2]).await.unwrap();
    assert_eq!(archived.record.job_id, ids[2]);
    assert!(!archived.champion);
    let (listed, next) = f.control.models("digits", 10, "").await.unwrap();
    let listed: Vec<(&str, bool)> = listed
        .iter()
        .map(|m| (m.record.id.as_str(), m.champion))
        .collect();
    assert_eq!(
        listed,
        [
            (models[2].as_str(), false),
            (models[1].as_str(), false),
            (models[0].as_str(), true)
        ]
    );
    assert_eq!(next, "");
    let (first, token) = f.control.models("", 1, "").await.unwrap();
    assert_eq!(first[0].record.id, models[2]);
    let (second, _) = f.control.models("", 1, &token).await.unwrap();
    assert_eq!(second[0].record.id, models[1]);
    assert!(
        f.control
            .models("other", 10, "")
            .await
            .unwrap()
            .0
            .is_empty()
    );
    assert!(matches!(
        f.control.model("m-00000000000-000000").await.unwrap_err(),
        Error::NotFound(_)
    ));

    // Promoting an archived model brings its record back into the store.
    let promoted = f
        .control
        .promote(&models[2], "by hand", Some(Some(&models[0])))
        .await
        .unwrap();
    assert!(promoted.champion);
    close(f).await;
    let f = open(dir.path()).await;
    assert_eq!(f.control.champion("digits").unwrap().record.id, models[2]);
    assert_eq!(f.control.lock().models.len(), 2);
    close(f).await;
}

//! The model registry and champions: listing, promotion and rollback (compare-and-swap on the
//! champion pointer).

use std::collections::HashMap;
use std::time::SystemTime;

use trainfleet_core::kv::TxnOp;

use crate::error::{Error, Result};
use crate::records;
use crate::records::{ChampionRecord, ModelRecord, ModelView};

use super::{Control, Inner};

impl Inner {
    fn view(&self, m: &ModelRecord) -> ModelView {
        ModelView {
            record: m.clone(),
            champion: self.is_champion(m),
        }
    }

    fn champion_view(&self, id: &str) -> ModelView {
        ModelView {
            record: self.models[id].clone(),
            champion: true,
        }
    }
}

/// Earlier champions kept per dataset for rollback (their jobs stay out of the archive).
pub(super) const ROLLBACK_DEPTH: usize = 100;

impl Control {
    /// Models newest first, optionally of one dataset: those in the store and archived ones,
    /// merged by id (an archived model is never a champion).
    pub async fn models(
        &self,
        dataset: &str,
        page_size: usize,
        page_token: &str,
    ) -> Result<(Vec<ModelView>, String)> {
        let live: Vec<ModelView> = {
            let inner = self.lock();
            let mut all: Vec<&ModelRecord> = inner
                .models
                .values()
                .filter(|m| dataset.is_empty() || m.dataset == dataset)
                .filter(|m| page_token.is_empty() || m.id.as_str() < page_token)
                .collect();
            all.sort_by(|a, b| b.id.cmp(&a.id));
            all.into_iter()
                .take(page_size + 1)
                .map(|m| inner.view(m))
                .collect()
        };
        let archived = self
            .archive
            .model_ids(dataset, page_token, page_size + 1)
            .await?;
        let mut ids: Vec<(String, bool)> =
            live.iter().map(|m| (m.record.id.clone(), true)).collect();
        for id in archived {
            if !ids.iter().any(|(m, _)| *m == id) {
                ids.push((id, false));
            }
        }
        ids.sort_by(|a, b| b.0.cmp(&a.0));
        let more = ids.len() > page_size;
        ids.truncate(page_size);
        let wanted: Vec<String> = ids
            .iter()
            .filter(|(_, live)| !live)
            .map(|(id, _)| id.clone())
            .collect();
        let mut from_archive: HashMap<String, ModelRecord> = self
            .archive
            .get_models(&wanted)
            .await?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let mut live: HashMap<String, ModelView> =
            live.into_iter().map(|m| (m.record.id.clone(), m)).collect();
        let page: Vec<ModelView> = ids
            .into_iter()
            .filter_map(|(id, is_live)| {
                if is_live {
                    live.remove(&id)
                } else {
                    from_archive.remove(&id).map(|record| ModelView {
                        record,
                        champion: false,
                    })
                }
            })
            .collect();
        let next = match (more, page.last()) {
            (true, Some(last)) => last.record.id.clone(),
            _ => String::new(),
        };
        Ok((page, next))
    }

    /// One model, from the store or else from the archive.
    pub async fn model(&self, id: &str) -> Result<ModelView> {
        {
            let inner = self.lock();
            if let Some(m) = inner.models.get(id) {
                return Ok(inner.view(m));
            }
        }
        let record = self
            .archive
            .get_model(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("model `{id}` does not exist")))?;
        Ok(ModelView {
            record,
            champion: false,
        })
    }

    /// A dataset's champion.
    pub fn champion(&self, dataset: &str) -> Result<ModelView> {
        let inner = self.lock();
        let id = inner
            .champions
            .get(dataset)
            .map(|c| c.model_id.clone())
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "dataset `{dataset}` has no champion yet (no model has passed its gate)"
                ))
            })?;
        Ok(inner.champion_view(&id))
    }

    /// Makes a model its dataset's champion by hand, after re-verifying its artifacts. With
    /// `expected` the pointer moves only if it still points there (`Some(None)`: no champion
    /// yet): checked and moved under one lock, so of two promotions expecting the same
    /// champion exactly one wins and the other is [`Error::Aborted`].
    pub async fn promote(
        &self,
        id: &str,
        reason: &str,
        expected: Option<Option<&str>>,
    ) -> Result<ModelView> {
        // An archived model comes back into the registry when it is promoted.
        let model = self.model(id).await?.record;
        let run = model.run_uri.clone();
        self.check_run(&run, true).await.map_err(|e| {
            Error::FailedPrecondition(format!(
                "model `{id}` cannot be promoted: its artifacts did not verify: {e}"
            ))
        })?;
        let (model, ack) = {
            let mut inner = self.lock();
            let dataset = model.dataset.clone();
            inner.check_champion(&dataset, expected)?;
            let mut ops = Vec::new();
            if !inner.models.contains_key(id) {
                ops.push(TxnOp::Put(records::model_key(id), records::encode(&model)));
                inner.models.insert(id.to_owned(), model);
            }
            inner.set_champion(
                &dataset,
                id,
                &format!("promoted by hand: {reason}"),
                &mut ops,
            );
            (inner.champion_view(id), self.journal.record(ops))
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(model)
    }

    /// Moves a dataset's champion pointer back to the previous champion (with `expected`, only
    /// if it still points there, as in [`Control::promote`]).
    pub async fn rollback(
        &self,
        dataset: &str,
        reason: &str,
        expected: Option<Option<&str>>,
    ) -> Result<ModelView> {
        let (model, ack) = {
            let mut inner = self.lock();
            inner.check_champion(dataset, expected)?;
            let champion = inner.champions.get_mut(dataset).ok_or_else(|| {
                Error::NotFound(format!("dataset `{dataset}` has no champion to roll back"))
            })?;
            let Some(previous) = champion.previous.pop() else {
                return Err(Error::FailedPrecondition(format!(
                    "dataset `{dataset}` has had only one champion ({}); there is nothing to \
                     roll back to",
                    champion.model_id
                )));
            };
            champion.model_id = previous.clone();
            champion.reason = format!("rolled back: {reason}");
            champion.updated_at = SystemTime::now();
            let ops = vec![TxnOp::Put(
                records::champion_key(dataset),
                records::encode(&*champion),
            )];
            (inner.champion_view(&previous), self.journal.record(ops))
        };
        ack.durable().await.map_err(Error::Store)?;
        Ok(model)
    }
}

impl Inner {
    /// The compare half of a compare-and-swap on the champion pointer.
    pub(super) fn check_champion(
        &self,
        dataset: &str,
        expected: Option<Option<&str>>,
    ) -> Result<()> {
        let Some(expected) = expected else {
            return Ok(());
        };
        let current = self.champions.get(dataset).map(|c| c.model_id.as_str());
        if current == expected {
            return Ok(());
        }
        Err(Error::Aborted(format!(
            "the champion of `{dataset}` is {} now, not {} as expected: another promotion \
             moved it first; read it again and decide again",
            current.unwrap_or("none"),
            expected.unwrap_or("none")
        )))
    }

    pub(super) fn is_champion(&self, m: &ModelRecord) -> bool {
        self.champions
            .get(&m.dataset)
            .is_some_and(|c| c.model_id == m.id)
    }

    pub(super) fn set_champion(
        &mut self,
        dataset: &str,
        model_id: &str,
        reason: &str,
        ops: &mut Vec<TxnOp>,
    ) {
        let now = SystemTime::now();
        let record = match self.champions.remove(dataset) {
            Some(mut c) if c.model_id != model_id => {
                c.previous.push(std::mem::take(&mut c.model_id));
                // The lineage rollback walks is bounded, as is what it keeps in the store.
                let over = c.previous.len().saturating_sub(ROLLBACK_DEPTH);
                c.previous.drain(..over);
                c.model_id = model_id.to_owned();
                c.reason = reason.to_owned();
                c.updated_at = now;
                c
            }
            Some(c) => c,
            None => ChampionRecord {
                dataset: dataset.to_owned(),
                model_id: model_id.to_owned(),
                previous: Vec::new(),
                reason: reason.to_owned(),
                updated_at: now,
            },
        };
        ops.push(TxnOp::Put(
            records::champion_key(dataset),
            records::encode(&record),
        ));
        tracing::info!(%dataset, %model_id, %reason, "champion moved");
        self.champions.insert(dataset.to_owned(), record);
    }
}

#[cfg(test)]
mod tests {
    //! The champion pointer's compare-and-swap, with runs written to a real artifact store.

    use super::super::tests::{close, open};
    use super::*;

    /// Writes a run whose weights verify and records its model.
    async fn model(f: &super::super::tests::Fixture, id: &str) {
        super::super::tests::verified_model(f, id, &format!("j-{id}")).await;
    }

    #[test]
    fn the_rollback_lineage_keeps_the_newest_earlier_champions() {
        let mut inner = Inner::default();
        let mut ops = Vec::new();
        for i in 0..=ROLLBACK_DEPTH + 5 {
            inner.set_champion("digits", &format!("m-{i:03}"), "won", &mut ops);
        }
        let champion = &inner.champions["digits"];
        assert_eq!(champion.model_id, format!("m-{:03}", ROLLBACK_DEPTH + 5));
        assert_eq!(champion.previous.len(), ROLLBACK_DEPTH);
        assert_eq!(champion.previous[0], "m-005", "the oldest go first");
        assert_eq!(
            champion.previous.last().unwrap(),
            &format!("m-{:03}", ROLLBACK_DEPTH + 4)
        );
    }

    #[tokio::test]
    async fn two_concurrent_promotions_one_wins_and_rollback_restores_the_previous_champion() {
        let dir = tempfile::tempdir().unwrap();
        let f = open(dir.path()).await;
        for id in ["m-a", "m-b", "m-c"] {
            model(&f, id).await;
        }
        f.control
            .promote("m-a", "first", Some(None))
            .await
            .expect("no champion yet, as expected");
        let err = f
            .control
            .promote("m-b", "late", Some(None))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Aborted(_)), "{err}");

        // Two promotions race, both expecting m-a: exactly one moves the pointer.
        for round in 0..20 {
            let (b, c) = tokio::join!(
                f.control.promote("m-b", "race", Some(Some("m-a"))),
                f.control.promote("m-c", "race", Some(Some("m-a"))),
            );
            let winner = match (&b, &c) {
                (Ok(_), Err(Error::Aborted(m))) => {
                    assert!(m.contains("is m-b now, not m-a"), "{m}");
                    "m-b"
                }
                (Err(Error::Aborted(m)), Ok(_)) => {
                    assert!(m.contains("is m-c now, not m-a"), "{m}");
                    "m-c"
                }
                other => panic!("round {round}: exactly one must win: {other:?}"),
            };
            assert_eq!(f.control.champion("digits").unwrap().record.id, winner);
            // Rollback (expecting the winner) restores m-a for the next round.
            let back = f
                .control
                .rollback("digits", "next round", Some(Some(winner)))
                .await
                .unwrap();
            assert_eq!(back.record.id, "m-a");
            assert_eq!(f.control.champion("digits").unwrap().record.id, "m-a");
        }
        // A rollback expecting a champion that is no longer there changes nothing.
        let err = f
            .control
            .rollback("digits", "stale", Some(Some("m-b")))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Aborted(_)), "{err}");
        assert_eq!(f.control.champion("digits").unwrap().record.id, "m-a");
        let err = f
            .control
            .rollback("digits", "nothing left", None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");

        // Weights changed after training: promotion refused, the pointer stays.
        let store = f.control.artifacts().clone();
        store
            .put_bytes(
                "runs/j-m-c/attempt-1/model.safetensors",
                b"tampered".to_vec(),
            )
            .await
            .unwrap();
        let err = f
            .control
            .promote("m-c", "tampered", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::FailedPrecondition(ref m) if m.contains("did not verify")),
            "{err}"
        );
        assert_eq!(f.control.champion("digits").unwrap().record.id, "m-a");

        // The pointer and its history survive a restart.
        close(f).await;
        let f = open(dir.path()).await;
        assert_eq!(f.control.champion("digits").unwrap().record.id, "m-a");
        close(f).await;
    }
}

//! Leader election among coordinator replicas, through etcd's election API.
//!
//! A replica grants itself a lease, keeps it alive in the background, and campaigns with its
//! advertise address as the value. Campaign returns once this replica's key is the oldest under
//! the election name; the replica leads only after the first keep-alive that succeeds *after*
//! that (so a lease that expired while the campaign was answered is not mistaken for a live
//! one). The leader key and its revision become the fence of every write it makes.
//!
//! Keeping the lease: one keep-alive every `ttl / 4`; a failed one is retried through another
//! member at once. If no renewal *sent* in the last `2/3 ttl` has succeeded, leadership is given
//! up at once (`lost` fires). etcd renewed the lease no earlier than that request was sent, so it
//! stays valid for at least another third of the TTL: the old leader stops before any other
//! replica can be elected, and a leader that was frozen (SIGSTOP, a long pause) notices on its
//! first wake-up. Whatever it still tries to write is refused by the fence.

use std::time::Duration;

use etcd_client::{Client, LeaderKey, ResignOptions};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trainfleet_core::kv::etcd::EtcdStore;
use trainfleet_core::kv::{KeyRange, KvStore};

use crate::error::{Error, Result};

/// Key (under the cluster prefix) of the election.
pub const ELECTION: &str = "election";

/// One replica's candidacy.
#[derive(Debug, Clone)]
pub struct Election {
    store: EtcdStore,
    value: String,
    ttl: Duration,
}

/// Leadership won; dropping it does not resign (call [`Leadership::resign`]).
pub struct Leadership {
    /// The leader key (a full etcd key) and its revision: the fence of every write.
    pub key: Vec<u8>,
    /// See `key`.
    pub revision: i64,
    /// Fires when the lease could not be renewed in time.
    pub lost: CancellationToken,
    leader: LeaderKey,
    lease: i64,
    client: Client,
    keeper: tokio::task::JoinHandle<()>,
    store: EtcdStore,
}

fn etcd_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("etcd election: {what}: {e}"))
}

impl Election {
    /// A candidacy announcing `value` (this replica's advertise address).
    pub fn new(store: EtcdStore, value: String, ttl: Duration) -> Self {
        Self { store, value, ttl }
    }

    /// The election's full etcd key.
    pub fn name(&self) -> Vec<u8> {
        self.store.full_key(ELECTION.as_bytes())
    }

    /// The current leader's address, if any replica leads (read from the election's keys: the
    /// oldest one wins).
    pub async fn leader(&self) -> Result<Option<String>> {
        let mut prefix = ELECTION.as_bytes().to_vec();
        prefix.push(b'/');
        let keys = self
            .store
            .range(KeyRange::prefix(prefix))
            .await
            .map_err(|e| etcd_error("reading the leader", e))?;
        Ok(keys
            .into_iter()
            .min_by_key(|kv| kv.create_revision)
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Campaigns until this replica leads (retrying through other members when one fails), or
    /// until `shutdown`.
    pub async fn campaign(&self, shutdown: &CancellationToken) -> Result<Leadership> {
        loop {
            let attempt = tokio::select! {
                r = self.try_campaign() => r,
                _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
            };
            match attempt {
                Ok(leadership) => return Ok(leadership),
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; campaigning again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                        _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
                    }
                }
            }
        }
    }

    async fn try_campaign(&self) -> Result<Leadership> {
        let mut client = self
            .store
            .session_client()
            .await
            .map_err(|e| etcd_error("connecting", e))?;
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        // The session client has no request deadline (a campaign blocks); a grant must not.
        let lease = tokio::time::timeout(self.ttl, client.lease_grant(ttl_secs, None))
            .await
            .map_err(|_| etcd_error("granting a lease", "no answer within the TTL"))?
            .map_err(|e| etcd_error("granting a lease", e))?
            .id();
        let lost = CancellationToken::new();
        let (renewed_tx, mut renewed) = watch::channel(Instant::now());
        let renew_now = std::sync::Arc::new(tokio::sync::Notify::new());
        let keeper = tokio::spawn(keep_alive(
            self.store.clone(),
            client.clone(),
            lease,
            self.ttl,
            lost.clone(),
            renewed_tx,
            renew_now.clone(),
        ));
        let campaign = async {
            let response = client
                .campaign(self.name(), self.value.clone(), lease)
                .await
                .map_err(|e| etcd_error("campaigning", e))?;
            let leader = response
                .leader()
                .cloned()
                .ok_or_else(|| etcd_error("campaigning", "the answer has no leader key"))?;
            // Lead only after a renewal that happened after winning (asked for at once).
            let won = Instant::now();
            renew_now.notify_one();
            tokio::time::timeout(self.ttl, renewed.wait_for(|t| *t > won))
                .await
                .map_err(|_| etcd_error("first keep-alive", "no renewal within the TTL"))?
                .map_err(|_| etcd_error("first keep-alive", "the keeper stopped"))?;
            Ok::<_, Error>(leader)
        };
        let outcome = tokio::select! {
            r = campaign => r,
            _ = lost.cancelled() => Err(etcd_error("campaigning", "the lease was lost")),
        };
        match outcome {
            Ok(leader) => Ok(Leadership {
                key: leader.key().to_vec(),
                revision: leader.rev(),
                lost,
                leader,
                lease,
                client,
                keeper,
                store: self.store.clone(),
            }),
            Err(e) => {
                keeper.abort();
                let _ = client.lease_revoke(lease).await;
                Err(e)
            }
        }
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("revision", &self.revision)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// Gives leadership up now (SIGTERM): resigns and revokes the lease, so that another
    /// replica is elected without waiting for the TTL.
    pub async fn resign(self) {
        self.keeper.abort();
        // The campaign's member may have died since; then resign through another one.
        let mut clients = vec![self.client.clone()];
        if let Ok(other) = self.store.session_client().await {
            clients.push(other);
        }
        let mut failures = Vec::new();
        for mut client in clients {
            let resign = async {
                client
                    .resign(Some(ResignOptions::new().with_leader(self.leader.clone())))
                    .await?;
                client.lease_revoke(self.lease).await
            };
            match tokio::time::timeout(Duration::from_secs(2), resign).await {
                Ok(Ok(_)) => {
                    tracing::info!("resigned leadership");
                    return;
                }
                Ok(Err(e)) => failures.push(e.to_string()),
                Err(_) => failures.push("timed out".to_owned()),
            }
        }
        tracing::warn!(?failures, "resigning failed; the lease will expire");
    }

    /// Stops renewing (after the lease was lost); the lease expires by itself.
    pub fn abandon(self) {
        self.keeper.abort();
    }
}

/// Renews `lease` every `ttl / 4`; fires `lost` when no renewal sent in the last `2/3 ttl`
/// succeeded.
async fn keep_alive(
    store: EtcdStore,
    mut client: Client,
    lease: i64,
    ttl: Duration,
    lost: CancellationToken,
    renewed: watch::Sender<Instant>,
    renew_now: std::sync::Arc<tokio::sync::Notify>,
) {
    let every = ttl / 4;
    let give_up = ttl * 2 / 3;
    // When the last successful renewal was sent (the lease was granted just before this).
    let mut last_ok = Instant::now();
    let mut channel = None;
    loop {
        if last_ok.elapsed() >= give_up {
            tracing::warn!(elapsed = ?last_ok.elapsed(), "leader lease not renewed in time; stepping down");
            lost.cancel();
            return;
        }
        if channel.is_none() {
            match client.lease_keep_alive(lease).await {
                Ok(c) => channel = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "lease keep-alive stream failed; trying another member");
                    if let Ok(c) = store.session_client().await {
                        client = c;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let (keeper, stream) = channel.as_mut().expect("just set");
        let sent = Instant::now();
        let renewal = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let deadline = give_up.saturating_sub(last_ok.elapsed());
        match tokio::time::timeout(deadline, renewal).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                last_ok = sent;
                let _ = renewed.send(Instant::now());
            }
            Ok(Ok(Some(_))) => {
                tracing::warn!("the leader lease expired; stepping down");
                lost.cancel();
                return;
            }
            other => {
                tracing::warn!(outcome = ?other.map(|r| r.map(|_| ())), "lease renewal failed; retrying through another member");
                channel = None;
                if let Ok(c) = store.session_client().await {
                    client = c;
                }
                continue;
            }
        }
        // Sleep until the next renewal (or an early one is asked for); a frozen process wakes up
        // late and gives up at the top.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = renew_now.notified() => {}
        }
    }
}

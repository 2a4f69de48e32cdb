//! The trainfleet coordinator: the control plane. It never links libtorch, so it builds in
//! seconds and runs anywhere.
//!
//! - [`server`]: binds the listener and serves every service, health and reflection; runs the
//!   replica's role (standalone, or leader/follower over etcd through [`election`]).
//! - [`forward`]: any replica answers: a follower forwards public calls to the leader and
//!   relays the answer (unary and server streams), with a bounded wait while none is known.
//! - [`auth`]: who may call what: bearer tokens with roles, the one method → roles table, and
//!   the layer that checks every call.
//! - [`tls`]: the TLS listener: certificates reloaded from files, workers' client certificates,
//!   and a clear refusal for plaintext clients on the TLS port.
//! - [`limits`]: message sizes per service, header list size and streams per connection.
//! - [`metrics`]: Prometheus metrics (leadership, queue, tasks, workers, calls, auth failures,
//!   promotions, store commits), served on a plain-HTTP port of their own.
//! - [`health`]: the health service's names: per replica, and leader only.
//! - [`probe`]: the `health` command's one health check.
//! - [`services`]: one module per gRPC service, thin adapters over the domain layer.
//! - [`registry`]: workers, their sessions and liveness (heartbeat deadlines, the reaper).
//! - [`scheduler`]: the task queue, leases, attempts (the fencing token), requeue on worker
//!   loss, cancellation. Pure; [`control`] drives it.
//! - [`control`]: jobs, tasks, models, champions and datasets over the scheduler, and the
//!   retrain loop; every change journaled to the KV store ([`journal`]: write-behind with group
//!   commit, compare-and-swap on champion pointers), rebuilt from it when a term starts. One
//!   room per part, all under one lock: `control/jobs.rs` (submit, list, cancel, watch),
//!   `leasing.rs` (queue, polls, heartbeats, lost workers), `completion.rs` (task reports,
//!   progress, finishing), `evals.rs` (evals and the gate), `models.rs` (registry, champions),
//!   `datasets.rs` (registration, scans), `retrain/` (the retrain loop: the policy's book, the job
//!   a retrain runs, the ticker).
//!   `retention/` moves finished jobs past retention (with their tasks and models) to the
//!   [`archive`].
//! - [`archive`]: finished jobs out of the store, in the artifact store: one object per job and
//!   an index that lists newest first.
//! - [`records`]: what is stored under which key.
//! - [`requests`]: what the control plane is asked to act on (a submission, a task report, a
//!   heartbeat's progress).
//! - [`dispatch`]: what it hands workers and operators (a leased task, directives, the queue).
//! - [`events`]: what a job's watchers are told.
//! - [`convert`]: where wire types become domain types (and back), with validation; the wire
//!   form of every record (`convert/records.rs`).
//! - [`state`]: what the services of one replica share, and the current term (none on a
//!   follower).
//! - [`error`]: the error enum and its mapping to gRPC status codes.
#![warn(missing_docs)]

pub mod archive;
pub mod auth;
pub mod control;
pub mod convert;
pub mod deadline;
pub mod dispatch;
pub mod election;
pub mod error;
pub mod events;
pub mod forward;
pub mod health;
pub mod journal;
pub mod limits;
pub mod metrics;
pub mod probe;
pub mod records;
pub mod registry;
pub mod requests;
pub mod scheduler;
pub mod server;
pub mod services;
pub mod state;
pub mod tls;

pub use error::{Error, Result};
pub use server::Coordinator;

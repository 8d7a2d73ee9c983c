//! Test harnesses and the end-to-end scenarios, shared by the three test tiers:
//! - `data_plane`: real redis-server, N realtime-server processes and nginx on loopback;
//! - `redis_ha`: a Redis Sentinel group (primary, replicas, Sentinels) on loopback;
//! - `redis_cluster`: a Redis Cluster (masters and replicas, `redis-cli --cluster create`) on
//!   loopback; `failover`: the gap and the losses a failover costs, as receivers see them;
//! - `control_plane`: real etcd, kube-apiserver and kube-controller-manager on loopback;
//! - `scenarios`: the user-visible stories, written once, run against any endpoint
//!   (the local parts here, or a kind cluster's ingress);
//! - `helm`: the pinned helm, rendering the chart; `checkov`: the manifest scanner and the
//!   explained exceptions it is judged against.
//!
//! Every harness finds its parts through [`require`], which fails the test when `CI=true`
//! and a part is missing, and skips it loudly otherwise.

pub mod checkov;
pub mod control_plane;
pub mod data_plane;
pub mod failover;
pub mod helm;
pub mod kind;
pub mod node;
pub mod redis_cluster;
pub mod redis_ha;
pub mod require;
pub mod scenarios;
pub mod sio;

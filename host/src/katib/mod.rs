//! knas as a Kubeflow Katib suggestion service (`knas katib`): coarse selection (scoring
//! candidates at initialisation) stays in knas, fine selection (training the best few)
//! runs as Katib trials anywhere on the cluster.
//!
//! - `proto.rs`: Katib's `api.v1.beta1` messages, generated from `host/proto/`;
//! - `mapping.rs`: an Experiment's parameters and settings and its trials in knas's terms;
//! - `suggest.rs`: the suggestion logic over the search loop and the run store;
//! - `server.rs`: the gRPC service (with `grpc.health.v1`).

pub mod mapping;
pub mod proto;
pub mod server;
pub mod suggest;

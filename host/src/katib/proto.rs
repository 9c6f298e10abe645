//! Katib's `api.v1.beta1` messages and the `Suggestion` service stubs, generated at build
//! time from `host/proto/katib_suggestion.proto`.
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("api.v1.beta1");

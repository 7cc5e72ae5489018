//! The Kubernetes runtime, as far as it is built: [`render`] turns a plan into the typed
//! objects (k8s-openapi) that run its fleet on a cluster, as a pure function, and
//! [`Cluster`] applies them (server-side apply, field manager `chaosnet`) and deletes a
//! run by its label (kube-rs). `chaosnet kube render|apply|down` are the commands.
//!
//! What it does not do yet: wait for readiness with a watcher, map pods to agents in
//! `status`, reach agents' APIs through the API server, or inject faults through exec. So
//! it is not a [`super::Runtime`], and `up --runtime kube` refuses to run (see the README's
//! Kubernetes section).

mod cluster;
mod render;

pub use cluster::{Cluster, ClusterError, FIELD_MANAGER, RUN_LABEL};
pub use render::{KubeOptions, Object, RenderError, render, to_yaml};

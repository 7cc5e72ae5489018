//! The chaosnet controller: scenario -> plan -> apply.
//!
//! Module map:
//! - [`scenario`]: the YAML scenario file, parsed and validated with line:col errors.
//! - [`plan`]: the plan data types (pure); [`planner`] turns a scenario into a plan;
//!   [`nat`] renders the nftables templates of `netns-scripts/`.
//! - [`apply`]: carries a plan out as root (namespaces, links, sysctls, nft) and tears runs
//!   down, idempotently, from a state file or by name prefix.
//!
//! Nothing outside `apply` touches the system.

pub mod apply;
pub mod nat;
pub mod plan;
pub mod planner;
pub mod scenario;

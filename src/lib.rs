//! vivgate: an edge API gateway for the Vivreal content API, on pingora.
//!
//! It answers by itself every request the backends should never see (missing or revoked keys,
//! frozen or deactivated groups, unknown routes, missing parameters, malformed ids, invalid JSON,
//! used-up monthly quotas, failing backends), always in Vivreal's error envelope, and forwards
//! the rest. See `README.md` and `../shared/DESIGN.md`.

pub(crate) mod abuse;
pub(crate) mod access;
pub mod admin;
pub mod backend;
pub mod clock;
pub mod config;
pub mod demo;
pub(crate) mod error;
pub(crate) mod exchange;
pub mod fleet;
pub(crate) mod forward;
pub mod front;
pub mod gateway;
pub mod health;
pub mod healthz;
pub mod keys;
pub(crate) mod memory;
pub mod metrics;
pub mod overrides;
pub(crate) mod pace;
pub mod pipeline;
pub(crate) mod proxy;
pub(crate) mod respond;
pub mod server;
pub mod tenants;
pub(crate) mod tls;
pub mod usage;

pub use gateway::Gateway;
pub use server::{run, start, Addresses, Options, Running, Shutdown};

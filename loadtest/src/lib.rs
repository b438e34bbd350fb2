//! hush-loadtest: a load generator that drives real Hush clients over the
//! real protocol and measures honestly (open loop, latency from the
//! intended send time into HDR histograms, correctness checked every run).
//!
//! Modules, top-down (each uses only modules below it):
//! - [`coordinator`]: runs a scenario: starts the system under test, the
//!   workers and the /proc sampler, runs the phases, writes the report;
//! - [`report`] and [`repeat`]: what a run measured and how it reads;
//!   [`failover`]: the failover figures from the workers' raw records;
//! - [`worker`]: runs a worker's plan, in process or as a child process;
//! - [`fanout`], [`connect`], [`redis`]: the workloads a worker runs, on
//!   what they share ([`workload`], [`endpoints`]);
//! - [`conn`], [`account`], [`mls`]: the client side of the protocol;
//! - [`protocol`] (coordinator <-> worker), [`stats`], [`payload`],
//!   [`procmon`], [`scenario`], [`node`], [`clock`], [`sync`].

pub mod account;
pub mod chaos;
pub mod checker;
pub mod clock;
pub mod conn;
pub mod connect;
pub mod coordinator;
pub mod endpoints;
pub mod failover;
pub mod fanout;
pub mod history;
pub mod mls;
pub mod node;
pub mod payload;
pub mod procmon;
pub mod protocol;
pub mod redis;
pub mod repeat;
pub mod report;
pub mod resources;
pub mod scenario;
pub mod stats;
pub mod sync;
pub mod worker;
pub mod workload;

pub use coordinator::{run, run_repeat, Options, Outcome};

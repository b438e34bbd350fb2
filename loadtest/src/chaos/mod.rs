//! The chaos harness's parts below the coordinator: the seeded fault
//! [`schedule`], the network namespaces and partitions ([`net`]), the
//! nodes and what faults do to them ([`nodes`]), carrying out a schedule
//! ([`faults`]), and reading the store after the run ([`store`]). The
//! coordinator (`coordinator/chaos.rs`) runs them around the fan-out
//! workload, and the [`crate::checker`] judges the history they leave.

pub mod faults;
pub mod net;
pub mod nodes;
pub mod schedule;
pub mod store;

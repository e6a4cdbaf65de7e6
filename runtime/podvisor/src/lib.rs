//! Podvisor's runtime: the CRI daemon and the pieces it drives, one module
//! per concern (see DESIGN.md).

pub mod agent_client;
pub mod config;
pub mod container;
pub mod cri;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod hypervisor;
pub mod ids;
pub mod image;
pub mod logs;
pub mod network;
pub mod persist;
pub mod policy;
pub mod sandbox;
pub mod streaming;
pub mod tools;
pub mod volume;

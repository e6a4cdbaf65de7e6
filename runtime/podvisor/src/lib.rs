//! Podvisor's runtime: the CRI daemon and the pieces it drives, one module
//! per concern (see DESIGN.md).

pub mod agent_client;
pub mod hypervisor;
pub mod volume;

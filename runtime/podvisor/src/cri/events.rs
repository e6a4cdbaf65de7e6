//! How a lifecycle event becomes GetContainerEvents' message: the pod's
//! status and its containers' statuses as PodSandboxStatus reports them,
//! taken when the change happens.

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_cri::v1 as cri;

use super::runtime::{container_status, pod_status};
use crate::container::{ContainerManager, ContainerRecord};
use crate::events::{Event, EventBus};
use crate::sandbox::{SandboxManager, SandboxRecord};

/// Lets `bus` describe events with what the managers know. Holds them
/// weakly: they hold the bus.
pub fn install(
    bus: &EventBus,
    sandboxes: &Arc<SandboxManager>,
    containers: &Arc<ContainerManager>,
) {
    let (sandboxes, containers) = (Arc::downgrade(sandboxes), Arc::downgrade(containers));
    bus.set_describe(Box::new(move |event| {
        let (sandboxes, containers) = (sandboxes.upgrade()?, containers.upgrade()?);
        let pod = sandboxes.get(&event.sandbox_id).ok()?.record();
        let ip = sandboxes.ip(&pod.id);
        Some(message(event, &pod, ip, &containers.records_of(&pod.id)))
    }));
}

pub fn message(
    event: &Event,
    pod: &SandboxRecord,
    ip: Option<Ipv4Addr>,
    containers: &[ContainerRecord],
) -> cri::ContainerEventResponse {
    cri::ContainerEventResponse {
        container_id: event.container_id.clone(),
        container_event_type: event.kind.cri() as i32,
        created_at: event.at_ns,
        pod_sandbox_status: Some(pod_status(pod, ip)),
        containers_statuses: containers.iter().map(container_status).collect(),
    }
}

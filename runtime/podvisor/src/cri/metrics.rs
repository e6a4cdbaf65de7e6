//! ListMetricDescriptors and ListPodSandboxMetrics: the pod and container
//! metrics kubelet's CRI stats path serves on /metrics/cadvisor, under
//! cAdvisor's names and labels. CPU and memory come from the guest's
//! cgroups through the agent; network from the pod's tap on the host;
//! filesystem from the agent's walk of the container's writable layer in
//! the guest (`container_fs_usage_bytes`) and the size of the guest
//! filesystem it is on (`container_fs_limit_bytes`). cAdvisor adds a
//! `device` label to these; a pod VM's layer has no host device, so they
//! carry the container labels only.

use k8s_cri::v1 as cri;
use podvisor_proto::ContainerStatsResponse;

use crate::container::ContainerRecord;
use crate::network::stats::PodTraffic;
use crate::sandbox::SandboxRecord;

/// Labels of container metrics, in the order their values are sent.
const CONTAINER_LABELS: &[&str] = &["id", "name", "image", "container", "pod", "namespace"];
/// Labels of the pod's network metrics.
const NETWORK_LABELS: &[&str] = &[
    "id",
    "name",
    "image",
    "container",
    "pod",
    "namespace",
    "interface",
];
/// The pod's interface as the pod sees it.
const INTERFACE: &str = "eth0";

#[derive(Clone, Copy)]
enum Scope {
    Container,
    Network,
}

struct Def {
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    scope: Scope,
}

const fn def(name: &'static str, help: &'static str, kind: cri::MetricType, scope: Scope) -> Def {
    Def {
        name,
        help,
        kind,
        scope,
    }
}

use cri::MetricType::{Counter, Gauge};
use Scope::{Container, Network};

const DEFS: &[Def] = &[
    def(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in seconds",
        Counter,
        Container,
    ),
    def(
        "container_memory_usage_bytes",
        "Current memory usage, including all memory regardless of when it was accessed, in bytes",
        Gauge,
        Container,
    ),
    def(
        "container_memory_working_set_bytes",
        "Current working set, in bytes",
        Gauge,
        Container,
    ),
    def(
        "container_memory_rss",
        "Size of RSS, in bytes",
        Gauge,
        Container,
    ),
    def(
        "container_processes",
        "Number of processes running inside the container",
        Gauge,
        Container,
    ),
    def(
        "container_oom_events_total",
        "Count of out-of-memory events observed for the container",
        Counter,
        Container,
    ),
    def(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container's writable layer",
        Gauge,
        Container,
    ),
    def(
        "container_fs_limit_bytes",
        "Number of bytes the filesystem of the container's writable layer can hold",
        Gauge,
        Container,
    ),
    def(
        "container_start_time_seconds",
        "Start time of the container since the Unix epoch, in seconds",
        Gauge,
        Container,
    ),
    def(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        Counter,
        Network,
    ),
    def(
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        Counter,
        Network,
    ),
    def(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        Counter,
        Network,
    ),
    def(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        Counter,
        Network,
    ),
    def(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        Counter,
        Network,
    ),
    def(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        Counter,
        Network,
    ),
    def(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        Counter,
        Network,
    ),
    def(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        Counter,
        Network,
    ),
];

pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DEFS.iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.into(),
            help: d.help.into(),
            label_keys: match d.scope {
                Container => CONTAINER_LABELS,
                Network => NETWORK_LABELS,
            }
            .iter()
            .map(|k| k.to_string())
            .collect(),
        })
        .collect()
}

fn metric(name: &str, at: i64, labels: &[String], value: u64) -> cri::Metric {
    let kind = DEFS
        .iter()
        .find(|d| d.name == name)
        .map_or(Gauge, |d| d.kind);
    cri::Metric {
        name: name.into(),
        timestamp: at,
        metric_type: kind as i32,
        label_values: labels.to_vec(),
        value: Some(cri::UInt64Value { value }),
    }
}

/// One pod's metrics: its network from `traffic`, and each container
/// with usage (running ones; the rest have none to report).
pub fn pod_metrics(
    pod: &SandboxRecord,
    traffic: Option<PodTraffic>,
    containers: &[(ContainerRecord, Option<ContainerStatsResponse>)],
) -> cri::PodSandboxMetrics {
    let now = crate::ids::now_ns();
    let (name, namespace) = (&pod.metadata.name, &pod.metadata.namespace);
    let mut metrics = Vec::new();
    if let Some(t) = traffic {
        // Pod-level, as cAdvisor reports a pod's network: no container.
        let labels: Vec<String> = [&pod.id, &pod.id, "", "", name, namespace, INTERFACE]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (metric_name, value) in [
            ("container_network_receive_bytes_total", t.rx_bytes),
            ("container_network_receive_packets_total", t.rx_packets),
            ("container_network_receive_errors_total", t.rx_errors),
            (
                "container_network_receive_packets_dropped_total",
                t.rx_dropped,
            ),
            ("container_network_transmit_bytes_total", t.tx_bytes),
            ("container_network_transmit_packets_total", t.tx_packets),
            ("container_network_transmit_errors_total", t.tx_errors),
            (
                "container_network_transmit_packets_dropped_total",
                t.tx_dropped,
            ),
        ] {
            metrics.push(metric(metric_name, now, &labels, value));
        }
    }
    let container_metrics = containers
        .iter()
        .filter_map(|(c, usage)| {
            let s = usage.as_ref()?;
            let at = s
                .timestamp
                .as_ref()
                .map_or(now, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
            let labels: Vec<String> = [&c.id, &c.id, &c.image, &c.name, name, namespace]
                .iter()
                .map(|s| s.to_string())
                .collect();
            // CRI values are integers: seconds are whole seconds.
            let values = [
                (
                    "container_cpu_usage_seconds_total",
                    s.cpu_usage_ns / 1_000_000_000,
                ),
                ("container_memory_usage_bytes", s.memory_usage_bytes),
                (
                    "container_memory_working_set_bytes",
                    s.memory_working_set_bytes,
                ),
                ("container_memory_rss", s.memory_rss_bytes),
                ("container_processes", s.pids),
                ("container_oom_events_total", s.oom_kills),
                ("container_fs_usage_bytes", s.writable_layer_bytes),
                ("container_fs_limit_bytes", s.writable_layer_capacity_bytes),
                (
                    "container_start_time_seconds",
                    u64::try_from(c.started_at_ns / 1_000_000_000).unwrap_or(0),
                ),
            ];
            Some(cri::ContainerMetrics {
                container_id: c.id.clone(),
                metrics: values
                    .iter()
                    .map(|(n, v)| metric(n, at, &labels, *v))
                    .collect(),
            })
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: pod.id.clone(),
        metrics,
        container_metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_use_cadvisor_names_and_unique_labels() {
        let d = descriptors();
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        for wanted in [
            "container_cpu_usage_seconds_total",
            "container_memory_usage_bytes",
            "container_memory_working_set_bytes",
            "container_memory_rss",
            "container_network_receive_bytes_total",
            "container_network_transmit_bytes_total",
            "container_network_receive_packets_total",
            "container_network_transmit_packets_total",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a name twice");
        for d in &d {
            assert!(!d.help.is_empty(), "{}", d.name);
            assert!(d.label_keys.iter().any(|k| k == "pod"), "{}", d.name);
            let counter = DEFS.iter().find(|x| x.name == d.name).unwrap().kind == Counter;
            assert_eq!(
                counter,
                d.name.ends_with("_total"),
                "{}: counters end in _total",
                d.name
            );
        }
    }

    fn pod() -> SandboxRecord {
        serde_json::from_value(serde_json::json!({
            "id": "pod1", "metadata": {"name": "web", "uid": "u", "namespace": "ns", "attempt": 0},
            "labels": {}, "annotations": {}, "created_at_ns": 1, "state": "Ready",
            "reason": null, "backend": "qemu", "vcpus": 1, "memory_mib": 512,
            "vm_pid": null, "virtiofsd_pid": null, "dialer": null, "dir": "/x", "run_dir": "/y",
            "log_directory": "", "hostname": "web"
        }))
        .unwrap()
    }

    #[test]
    fn values_follow_their_descriptors() {
        let traffic = PodTraffic {
            rx_bytes: 100,
            tx_bytes: 200,
            rx_packets: 3,
            tx_packets: 4,
            ..Default::default()
        };
        let container: ContainerRecord = serde_json::from_value(serde_json::json!({
            "id": "c1", "sandbox_id": "pod1", "name": "app", "attempt": 0, "image": "busybox",
            "image_id": "sha256:x", "image_ref": "sha256:x", "labels": {}, "annotations": {},
            "mounts": [], "log_path": "", "tty": false, "stdin": false, "stdin_once": false,
            "process": null, "stop_signal": 15, "state": "Running", "created_at_ns": 1,
            "started_at_ns": 5_000_000_000i64, "exit": null, "log_offset": 0, "file": "/z"
        }))
        .unwrap();
        let usage = ContainerStatsResponse {
            cpu_usage_ns: 2_500_000_000,
            memory_usage_bytes: 4096,
            memory_working_set_bytes: 2048,
            memory_rss_bytes: 1024,
            ..Default::default()
        };
        let exited = ContainerRecord {
            id: "c2".into(),
            ..container.clone()
        };
        let m = pod_metrics(
            &pod(),
            Some(traffic),
            &[(container, Some(usage)), (exited, None)],
        );
        assert_eq!(m.pod_sandbox_id, "pod1");
        let descriptors = descriptors();
        let check = |metric: &cri::Metric| {
            let d = descriptors.iter().find(|d| d.name == metric.name).unwrap();
            assert_eq!(
                metric.label_values.len(),
                d.label_keys.len(),
                "{}",
                metric.name
            );
        };
        let value = |ms: &[cri::Metric], name: &str| {
            ms.iter()
                .find(|m| m.name == name)
                .unwrap()
                .value
                .unwrap()
                .value
        };
        m.metrics.iter().for_each(check);
        assert_eq!(
            value(&m.metrics, "container_network_receive_bytes_total"),
            100
        );
        assert_eq!(
            value(&m.metrics, "container_network_transmit_packets_total"),
            4
        );
        let net = &m.metrics[0];
        assert_eq!(net.metric_type, Counter as i32);
        assert_eq!(net.label_values[4..], ["web", "ns", "eth0"]);

        assert_eq!(m.container_metrics.len(), 1, "no usage, no metrics");
        let c = &m.container_metrics[0];
        c.metrics.iter().for_each(check);
        assert_eq!(c.container_id, "c1");
        assert_eq!(value(&c.metrics, "container_cpu_usage_seconds_total"), 2);
        assert_eq!(
            value(&c.metrics, "container_memory_working_set_bytes"),
            2048
        );
        assert_eq!(value(&c.metrics, "container_start_time_seconds"), 5);
        let ws = c
            .metrics
            .iter()
            .find(|m| m.name == "container_memory_rss")
            .unwrap();
        assert_eq!(ws.metric_type, Gauge as i32);
        assert_eq!(ws.label_values, ["c1", "c1", "busybox", "app", "web", "ns"]);

        let none = pod_metrics(&pod(), None, &[]);
        assert!(none.metrics.is_empty() && none.container_metrics.is_empty());
    }
}

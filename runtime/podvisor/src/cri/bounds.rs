//! Size bounds on the metadata a CRI client sends (names, labels,
//! annotations). Every record and event carries these strings, so an
//! unbounded client could make every later call slow or fill the disk.
//! Each bound is at least as generous as Kubernetes' own validation, so no
//! pod the API server accepts is refused here.

use std::collections::HashMap;

/// A metadata name (pod name, namespace, uid, container name): a DNS
/// subdomain, Kubernetes' longest object name.
pub const MAX_NAME: usize = 253;
/// A label or annotation key: a DNS-subdomain prefix (253), `/`, and a
/// name (63).
pub const MAX_KEY: usize = 253 + 1 + 63;
/// A label value. Kubernetes' own is 63, but kubelet puts the pod's name
/// (up to 253) in the label `io.kubernetes.pod.name`.
pub const MAX_LABEL_VALUE: usize = 253;
/// All annotations of one pod or container, keys and values: Kubernetes'
/// 256 KiB, plus room for what kubelet adds to the pod's own
/// (`kubernetes.io/config.*`, a container's hash, ports and hooks).
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024 + 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("{field} is {len} bytes long; the limit is {limit} ({why})")]
    TooLong {
        field: String,
        len: usize,
        limit: usize,
        why: &'static str,
    },
}

fn check(
    field: impl FnOnce() -> String,
    value: &str,
    limit: usize,
    why: &'static str,
) -> Result<(), BoundsError> {
    if value.len() > limit {
        return Err(BoundsError::TooLong {
            field: field(),
            len: value.len(),
            limit,
            why,
        });
    }
    Ok(())
}

/// A metadata name field, e.g. `config.metadata.name`.
pub fn name(field: &str, value: &str) -> Result<(), BoundsError> {
    check(
        || field.to_string(),
        value,
        MAX_NAME,
        "a Kubernetes object name",
    )
}

/// Every key and value of `labels` (the field is e.g. `config.labels`).
pub fn labels(field: &str, labels: &HashMap<String, String>) -> Result<(), BoundsError> {
    for (key, value) in labels {
        check(
            || format!("a key of {field}"),
            key,
            MAX_KEY,
            "a Kubernetes label key",
        )?;
        check(
            || format!("{field}[{key:?}]"),
            value,
            MAX_LABEL_VALUE,
            "a label value, which kubelet may set to a pod name",
        )?;
    }
    Ok(())
}

/// Every key of `annotations`, and their total size.
pub fn annotations(field: &str, annotations: &HashMap<String, String>) -> Result<(), BoundsError> {
    let mut total = 0;
    for (key, value) in annotations {
        check(
            || format!("a key of {field}"),
            key,
            MAX_KEY,
            "a Kubernetes annotation key",
        )?;
        total += key.len() + value.len();
    }
    if total > MAX_ANNOTATIONS_BYTES {
        return Err(BoundsError::TooLong {
            field: format!("{field} (keys and values together)"),
            len: total,
            limit: MAX_ANNOTATIONS_BYTES,
            why: "Kubernetes' 256 KiB for a pod's annotations plus room for kubelet's own",
        });
    }
    Ok(())
}

/// RunPodSandbox's metadata, labels and annotations.
pub fn pod(config: &k8s_cri::v1::PodSandboxConfig) -> Result<(), BoundsError> {
    if let Some(m) = &config.metadata {
        name("config.metadata.name", &m.name)?;
        name("config.metadata.namespace", &m.namespace)?;
        name("config.metadata.uid", &m.uid)?;
    }
    labels("config.labels", &config.labels)?;
    annotations("config.annotations", &config.annotations)
}

/// CreateContainer's metadata, labels and annotations.
pub fn container(config: &k8s_cri::v1::ContainerConfig) -> Result<(), BoundsError> {
    if let Some(m) = &config.metadata {
        name("config.metadata.name", &m.name)?;
    }
    labels("config.labels", &config.labels)?;
    annotations("config.annotations", &config.annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubernetes_sized_metadata_passes() {
        let long_key = format!("{}/{}", "a".repeat(253), "b".repeat(63));
        let pod_name = "p".repeat(253);
        assert_eq!(name("config.metadata.name", &pod_name), Ok(()));
        assert_eq!(
            labels("config.labels", &map(&[(&long_key, &pod_name)])),
            Ok(())
        );
        let big = "v".repeat(256 * 1024 - long_key.len());
        assert_eq!(
            annotations(
                "config.annotations",
                &map(&[
                    (&long_key, &big),
                    ("kubernetes.io/config.seen", "2026-01-01")
                ])
            ),
            Ok(())
        );
    }

    #[test]
    fn oversized_metadata_is_refused_naming_field_and_limit() {
        let err = name("config.metadata.name", &"n".repeat(254)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.metadata.name is 254 bytes long; the limit is 253 (a Kubernetes object name)"
        );
        let key = "k".repeat(MAX_KEY + 1);
        let err = labels("config.labels", &map(&[(&key, "v")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("a key of config.labels is 318 bytes long; the limit is 317"),
            "{err}"
        );
        let err = labels("config.labels", &map(&[("app", &"v".repeat(254))])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config.labels[\"app\"] is 254 bytes"),
            "{err}"
        );
        // Two annotations each under the limit, together over it.
        let half = "x".repeat(MAX_ANNOTATIONS_BYTES / 2);
        let err =
            annotations("config.annotations", &map(&[("a", &half), ("b", &half)])).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "config.annotations (keys and values together) is {} bytes long; the limit is {MAX_ANNOTATIONS_BYTES}",
                MAX_ANNOTATIONS_BYTES + 2
            )),
            "{err}"
        );
    }
}

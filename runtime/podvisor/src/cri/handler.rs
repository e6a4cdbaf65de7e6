//! RuntimeClass handlers: the names a RuntimeClass's `handler` may give to
//! run a pod with podvisor. Every handler runs the pod the same way, in its
//! own VM; `podvisor` exists so a cluster can name it explicitly.

use k8s_cri::v1 as cri;
use tonic::Status;

/// The default handler (a pod without a RuntimeClass) and `podvisor`.
pub const HANDLERS: [&str; 2] = ["", super::runtime::RUNTIME_NAME];

/// The handlers for StatusResponse, with what each supports.
pub fn runtime_handlers() -> Vec<cri::RuntimeHandler> {
    HANDLERS
        .iter()
        .map(|name| cri::RuntimeHandler {
            name: name.to_string(),
            features: Some(cri::RuntimeHandlerFeatures {
                // Recursive read-only mounts are set on the host side of
                // the pod's share (docs/volumes.md); pods get no user
                // namespace of their own.
                recursive_read_only_mounts: true,
                user_namespaces: false,
            }),
        })
        .collect()
}

/// RunPodSandbox's `runtime_handler`, if podvisor has it.
pub fn check(handler: &str) -> Result<(), Status> {
    if HANDLERS.contains(&handler) {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "RunPodSandbox: runtime handler {handler:?} is not known to podvisor; its handlers are \"\" (the default) and {:?}",
        HANDLERS[1]
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_and_podvisor_are_known_and_nothing_else() {
        let names: Vec<String> = runtime_handlers().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["", "podvisor"]);
        check("").unwrap();
        check("podvisor").unwrap();
        let err = check("kata").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("\"kata\""), "{}", err.message());
        assert!(err.message().contains("\"podvisor\""), "{}", err.message());
    }
}

//! The gRPC API between the Podvisor runtime and `podvisor-agent`, the PID 1
//! of every pod VM. See `agent.proto` for the contract and its versioning.

/// Generated types and services of `podvisor.agent.v1`.
pub mod v1 {
    tonic::include_proto!("podvisor.agent.v1");

    /// Bumped whenever methods or fields are added within v1.
    pub const PROTOCOL_VERSION: u32 = 3;

    /// The vsock port the agent listens on inside the guest.
    pub const AGENT_VSOCK_PORT: u32 = 1024;

    /// Name of the virtio-serial port the agent opens on the qemu backend.
    pub const AGENT_SERIAL_PORT_NAME: &str = "podvisor.agent";

    /// A virtio-serial port has no connections, only bytes: each time the
    /// runtime connects it sends `SERIAL_HELLO <nonce>\n` and discards what
    /// it reads until the agent's `SERIAL_READY <nonce>\n`; gRPC follows.
    /// The nonce marks off what an earlier connection left in the port.
    pub const SERIAL_HELLO: &str = "PODVISOR-HELLO";
    pub const SERIAL_READY: &str = "PODVISOR-READY";
    /// Longest handshake line, newline included; a nonce is 1 to 32
    /// characters of `[0-9a-f]`.
    pub const SERIAL_LINE_MAX: usize = 64;

    /// OCI spec annotation (value "true") by which the runtime asks for a
    /// privileged container: the agent gives it the guest's devices. The
    /// rest of what privileged means is in the spec itself.
    pub const PRIVILEGED_ANNOTATION: &str = "io.podvisor.privileged";
}

pub use v1::*;

impl From<std::time::SystemTime> for v1::Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        v1::Timestamp {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    }
}

//! `[streaming]`: where the Exec/Attach/PortForward server listens.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// `host:port`; port 0 picks a free one. URLs handed to clients name
    /// this address (127.0.0.1 when it is an unspecified address).
    pub address: String,
    /// Seconds a URL from Exec, Attach or PortForward stays usable.
    pub token_ttl_secs: u64,
    /// Serve HTTPS with this PEM certificate chain and key (both or none).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".into(),
            token_ttl_secs: 60,
            tls_cert: None,
            tls_key: None,
        }
    }
}

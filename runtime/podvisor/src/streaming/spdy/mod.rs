//! SPDY/3.1, as far as the Kubernetes streaming protocols use it: framing,
//! compressed header blocks, and a server session that accepts streams.

pub mod frame;
pub mod headers;
pub mod session;

pub use headers::Headers;
pub use session::{serve, Session, SessionError, Stream, StreamWriter};

//! Exec and Attach, whatever the wire: a protocol adapter (SPDY or
//! WebSocket) turns the client's streams into a [`ClientIo`], and this
//! module drives the process in the pod's VM through the agent.

use bytes::Bytes;
use podvisor_proto::{
    CloseStdinRequest, ExecProcessRequest, OutputStream, ReadOutputRequest, ReleaseProcessRequest,
    ResizeTtyRequest, SignalProcessRequest, WaitProcessRequest, WriteStdinRequest,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::agent_client::Agent;
use crate::container::ContainerRecord;

/// Which streams the client asked for; a TTY has no separate stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamOptions {
    pub fn new(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Self {
        StreamOptions {
            stdin,
            stdout,
            stderr: stderr && !tty,
            tty,
        }
    }
}

/// A terminal size as the resize stream carries it (JSON, Go field names).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The most a partial size object may hold: `{"Width":65535,"Height":65535}`
/// is 32 bytes, so anything this long is not a size and is dropped rather
/// than kept growing at the client's will.
const SIZE_PENDING_MAX: usize = 1024;

/// Splits a byte stream of concatenated JSON sizes into sizes; a partial
/// object waits for more bytes (up to [`SIZE_PENDING_MAX`]), garbage is
/// dropped.
#[derive(Default)]
pub struct SizeDecoder {
    pending: Vec<u8>,
}

impl SizeDecoder {
    pub fn push(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.pending.extend_from_slice(data);
        if self.pending.len() > SIZE_PENDING_MAX {
            // Keep what may start the next object; the rest cannot be one.
            let keep_from = self.pending.len() - SIZE_PENDING_MAX;
            self.pending.drain(..keep_from);
        }
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.pending).into_iter::<TermSize>();
        let consumed = loop {
            match it.next() {
                Some(Ok(size)) => sizes.push(size),
                Some(Err(e)) if e.is_eof() => break it.byte_offset(),
                Some(Err(_)) => break self.pending.len(),
                None => break it.byte_offset(),
            }
        };
        self.pending.drain(..consumed);
        sizes
    }
}

pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// How the command ended, for the error stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The client's side, as the protocol adapter presents it.
pub struct ClientIo {
    /// Ends when the client closes stdin.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Closed by the adapter when the client is gone.
    pub output: mpsc::Sender<Output>,
}

/// Why output stopped flowing.
enum Ended {
    /// The process closed its output.
    Eof,
    /// The client went away.
    ClientGone,
    Agent(String),
}

fn new_exec_id() -> String {
    let mut raw = [0u8; 8];
    if getrandom::getrandom(&mut raw).is_err() {
        raw = crate::ids::now_ns().to_le_bytes();
    }
    format!("stream-{}", hex::encode(raw))
}

/// Runs `cmd` in the container as its own process runs (user, env, cwd,
/// limits), with the client's streams; the agent forgets it afterwards.
/// A client that goes away before the command ends gets it killed, as a
/// terminal hang-up would.
pub async fn exec(
    mut agent: Agent,
    record: &ContainerRecord,
    cmd: Vec<String>,
    opts: StreamOptions,
    io: ClientIo,
) -> Outcome {
    let exec_id = new_exec_id();
    let mut process = record.process.clone();
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(opts.tty);
    let json = match serde_json::to_vec(&process) {
        Ok(json) => json,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let started = agent
        .exec_process(ExecProcessRequest {
            container_id: record.id.clone(),
            exec_id: exec_id.clone(),
            oci_process_json: json,
            stdin: opts.stdin,
            tty: opts.tty,
        })
        .await;
    if let Err(s) = started {
        return Outcome::Failed(format!(
            "starting {cmd:?} in container {}: {}",
            record.id,
            s.message()
        ));
    }
    let ended = drive(&agent, &record.id, &exec_id, false, opts, io, false).await;
    let outcome = match ended {
        Ended::Eof => match agent.wait_process(wait(&record.id, &exec_id)).await {
            Ok(exit) => Outcome::Exited(exit.into_inner().exit_code),
            Err(s) => Outcome::Failed(format!("waiting for {cmd:?}: {}", s.message())),
        },
        Ended::ClientGone | Ended::Agent(_) => {
            let kill = SignalProcessRequest {
                container_id: record.id.clone(),
                exec_id: exec_id.clone(),
                signal: libc::SIGKILL,
                all: false,
            };
            let _ = agent.signal_process(kill).await;
            let _ = agent.wait_process(wait(&record.id, &exec_id)).await;
            match ended {
                Ended::Agent(e) => Outcome::Failed(e),
                _ => Outcome::Failed("the client went away".into()),
            }
        }
    };
    let release = ReleaseProcessRequest {
        container_id: record.id.clone(),
        exec_id,
    };
    if let Err(s) = agent.release_process(release).await {
        tracing::debug!(id = %record.id, error = %s.message(), "releasing a streamed exec");
    }
    outcome
}

/// Attaches to the container's main process: output from now on (no
/// replay, and the CRI log keeps everything), stdin and resizes to it.
/// Several clients may attach at once. The session ends when the
/// container exits or, for a client with stdin, when it closes stdin:
/// unless the container is `stdin_once`, which closes the container's
/// stdin instead and keeps the output coming until it exits.
pub async fn attach(
    agent: Agent,
    record: &ContainerRecord,
    mut opts: StreamOptions,
    io: ClientIo,
) -> Outcome {
    if opts.stdin && !record.stdin {
        tracing::debug!(id = %record.id, "attach asked for stdin; the container has none");
        opts.stdin = false;
    }
    opts.tty = opts.tty && record.tty;
    let stdin_once = record.stdin_once && !opts.tty;
    match drive(&agent, &record.id, "", true, opts, io, !stdin_once).await {
        Ended::Eof | Ended::ClientGone => Outcome::Exited(0),
        Ended::Agent(e) => Outcome::Failed(e),
    }
}

fn wait(container_id: &str, exec_id: &str) -> WaitProcessRequest {
    WaitProcessRequest {
        container_id: container_id.into(),
        exec_id: exec_id.into(),
    }
}

/// Moves stdin and resizes in, output out, until the output ends, the
/// client goes away, or (`stdin_ends_session`) the client closes stdin.
async fn drive(
    agent: &Agent,
    container_id: &str,
    exec_id: &str,
    live: bool,
    opts: StreamOptions,
    mut io: ClientIo,
    stdin_ends_session: bool,
) -> Ended {
    let (stdin_done_tx, mut stdin_done) = mpsc::channel::<()>(1);
    let mut helpers = Vec::new();
    if let Some(rx) = io.stdin.take() {
        let (agent, cid, eid) = (agent.clone(), container_id.to_string(), exec_id.to_string());
        let close = !live || !stdin_ends_session;
        helpers.push(tokio::spawn(async move {
            pump_stdin(agent, cid, eid, rx, opts.stdin && close, opts.stdin).await;
            let _ = stdin_done_tx.send(()).await;
        }));
    } else {
        drop(stdin_done_tx);
    }
    if let Some(rx) = io.resize.take() {
        let (agent, cid, eid) = (agent.clone(), container_id.to_string(), exec_id.to_string());
        helpers.push(tokio::spawn(pump_resize(agent, cid, eid, rx)));
    }
    let output = pump_output(agent.clone(), container_id, exec_id, live, opts, &io.output);
    let ended = tokio::select! {
        ended = output => ended,
        _ = io.output.closed() => Ended::ClientGone,
        Some(()) = stdin_done.recv(), if stdin_ends_session && live => Ended::ClientGone,
    };
    for h in helpers {
        h.abort();
    }
    ended
}

async fn pump_output(
    mut agent: Agent,
    container_id: &str,
    exec_id: &str,
    live: bool,
    opts: StreamOptions,
    out: &mpsc::Sender<Output>,
) -> Ended {
    let request = ReadOutputRequest {
        container_id: container_id.into(),
        exec_id: exec_id.into(),
        from_offset: 0,
        live,
    };
    let mut stream = match agent.read_output(request).await {
        Ok(s) => s.into_inner(),
        Err(s) => return Ended::Agent(format!("reading output: {}", s.message())),
    };
    loop {
        let chunk = match stream.message().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ended::Agent("the output stream ended early".into()),
            Err(s) => return Ended::Agent(format!("reading output: {}", s.message())),
        };
        if chunk.eof {
            return Ended::Eof;
        }
        let data = Bytes::from(chunk.data);
        // Unrequested streams are read anyway: the process must not block.
        let message = if chunk.stream == OutputStream::Stderr as i32 {
            opts.stderr.then_some(Output::Stderr(data))
        } else {
            opts.stdout.then_some(Output::Stdout(data))
        };
        if let Some(m) = message {
            if out.send(m).await.is_err() {
                return Ended::ClientGone;
            }
        }
    }
}

/// Client stdin to the process; at the client's EOF the process's stdin
/// closes when `close_at_eof`. Without `forward`, input is drained only.
async fn pump_stdin(
    mut agent: Agent,
    container_id: String,
    exec_id: String,
    mut rx: mpsc::Receiver<Bytes>,
    close_at_eof: bool,
    forward: bool,
) {
    while let Some(data) = rx.recv().await {
        if !forward || data.is_empty() {
            continue;
        }
        let write = WriteStdinRequest {
            container_id: container_id.clone(),
            exec_id: exec_id.clone(),
            data: data.to_vec(),
        };
        if let Err(s) = agent.write_stdin(write).await {
            tracing::debug!(error = %s.message(), "writing stdin");
            return;
        }
    }
    if close_at_eof {
        let close = CloseStdinRequest {
            container_id,
            exec_id,
        };
        if let Err(s) = agent.close_stdin(close).await {
            tracing::debug!(error = %s.message(), "closing stdin");
        }
    }
}

async fn pump_resize(
    mut agent: Agent,
    container_id: String,
    exec_id: String,
    mut rx: mpsc::Receiver<TermSize>,
) {
    while let Some(size) = rx.recv().await {
        let resize = ResizeTtyRequest {
            container_id: container_id.clone(),
            exec_id: exec_id.clone(),
            rows: size.height.into(),
            columns: size.width.into(),
        };
        if let Err(s) = agent.resize_tty(resize).await {
            tracing::debug!(error = %s.message(), "resizing the terminal");
        }
    }
}

/// The Kubernetes `Status` object that v4 and later put on the error
/// stream: clients turn `NonZeroExitCode` into "command terminated with
/// exit code N".
pub fn status_json(outcome: &Outcome) -> Vec<u8> {
    let status = match outcome {
        Outcome::Exited(0) => serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        }),
        Outcome::Exited(code) => serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": { "causes": [ { "reason": "ExitCode", "message": code.to_string() } ] },
        }),
        Outcome::Failed(message) => serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "InternalError", "code": 500,
        }),
    };
    serde_json::to_vec(&status).unwrap_or_default()
}

/// What the protocols before v4 put on the error stream: nothing on
/// success, else a line of text.
pub fn status_text(outcome: &Outcome) -> Vec<u8> {
    match outcome {
        Outcome::Exited(0) => Vec::new(),
        Outcome::Exited(code) => {
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes()
        }
        Outcome::Failed(message) => message.clone().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_partial_size_does_not_grow_the_buffer() {
        let mut d = SizeDecoder::default();
        assert!(d.push(b"{\"Width\":").is_empty());
        for _ in 0..1000 {
            assert!(d.push(&[b' '; 4096]).is_empty());
            assert!(d.pending.len() <= SIZE_PENDING_MAX);
        }
        // The garbage goes, and a well-formed size comes through after it.
        assert!(d.push(b"}").is_empty());
        let sizes = d.push(b"{\"Width\":80,\"Height\":24}");
        assert_eq!(
            sizes,
            [TermSize {
                width: 80,
                height: 24
            }]
        );
    }

    #[test]
    fn sizes_decode_across_pieces() {
        let mut d = SizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":80,"Hei"#), vec![]);
        let got = d.push(br#"ght":24}{"Width":100,"Height":50}"#);
        assert_eq!(
            got,
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 50
                }
            ]
        );
        assert_eq!(d.push(b"garbage"), vec![]);
        assert_eq!(
            d.push(br#"{"Width":1,"Height":2}"#),
            vec![TermSize {
                width: 1,
                height: 2
            }]
        );
    }

    #[test]
    fn exit_codes_become_the_status_clients_parse() {
        let v: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::Exited(7))).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
        let v: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::Exited(0))).unwrap();
        assert_eq!(v["status"], "Success");
        assert!(status_text(&Outcome::Exited(0)).is_empty());
        // v1-v3 carry the Status's message.
        let v: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::Exited(137))).unwrap();
        assert_eq!(v["details"]["causes"][0]["message"], "137");
        assert_eq!(
            status_text(&Outcome::Exited(137)),
            v["message"].as_str().unwrap().as_bytes()
        );
    }

    #[test]
    fn a_tty_has_no_stderr() {
        assert!(!StreamOptions::new(true, true, true, true).stderr);
        assert!(StreamOptions::new(true, true, true, false).stderr);
    }
}

//! Container lifecycle events for CRI GetContainerEvents (kubelet's
//! Evented PLEG). Sandboxes and containers publish what happened to them;
//! the CRI layer installs how an event becomes its CRI message (with the
//! pod's status), so this module knows neither.
//!
//! Every subscriber has a bounded queue of its own. One that falls a whole
//! queue behind is dropped and its stream ends with an error (kubelet then
//! relists), so a stalled client costs bounded memory and slows no one.
//! [`EventBus::close`] ends every stream cleanly, as daemon shutdown needs:
//! an open server stream would otherwise hold the server's graceful
//! shutdown forever.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use k8s_cri::v1 as cri;
use tokio::sync::mpsc;

/// Events a subscriber may have queued before it counts as lagging.
pub const QUEUE: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

impl EventKind {
    pub fn cri(self) -> cri::ContainerEventType {
        match self {
            EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
            EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
            EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
            EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
        }
    }
}

/// A state change of a container, or of a sandbox (then `container_id` is
/// the sandbox's id, as kubelet expects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub container_id: String,
    pub sandbox_id: String,
    pub kind: EventKind,
    /// Nanoseconds since the epoch.
    pub at_ns: i64,
}

impl Event {
    pub fn now(container_id: &str, sandbox_id: &str, kind: EventKind) -> Event {
        Event {
            container_id: container_id.into(),
            sandbox_id: sandbox_id.into(),
            kind,
            at_ns: crate::ids::now_ns(),
        }
    }
}

type Message = Arc<cri::ContainerEventResponse>;
/// Builds the CRI message of an event; None drops the event (its pod is
/// unknown).
pub type Describe = dyn Fn(&Event) -> Option<cri::ContainerEventResponse> + Send + Sync;

struct Subscriber {
    tx: mpsc::Sender<Message>,
    lagged: Arc<AtomicBool>,
}

pub struct EventBus {
    describe: OnceLock<Box<Describe>>,
    /// None once closed.
    subscribers: Mutex<Option<Vec<Subscriber>>>,
    queue: usize,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::with_queue(QUEUE)
    }
}

impl EventBus {
    pub fn with_queue(queue: usize) -> EventBus {
        EventBus {
            describe: OnceLock::new(),
            subscribers: Mutex::new(Some(Vec::new())),
            queue,
        }
    }

    /// Installs the message builder; later calls are ignored.
    pub fn set_describe(&self, describe: Box<Describe>) {
        let _ = self.describe.set(describe);
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Option<Vec<Subscriber>>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells every subscriber. Cheap when there is none: the message is
    /// built only for someone.
    pub fn publish(&self, event: Event) {
        let wanted = self.subscribers().as_mut().is_some_and(|subs| {
            subs.retain(|s| !s.tx.is_closed());
            !subs.is_empty()
        });
        if !wanted {
            return;
        }
        tracing::debug!(?event, "container event");
        // Built without the lock held: describing reads the managers, which
        // may publish themselves.
        let Some(message) = self.describe.get().and_then(|d| d(&event)) else {
            return;
        };
        let message = Arc::new(message);
        if let Some(subs) = self.subscribers().as_mut() {
            subs.retain(|s| match s.tx.try_send(message.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.lagged.store(true, Ordering::SeqCst);
                    tracing::warn!(
                        queue = self.queue,
                        "a GetContainerEvents subscriber fell behind; dropping it"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        }
    }

    /// A stream of the events from now on. After [`EventBus::close`] it
    /// ends at once.
    pub fn subscribe(&self) -> EventStream {
        let (tx, rx) = mpsc::channel(self.queue);
        let lagged = Arc::new(AtomicBool::new(false));
        if let Some(subs) = self.subscribers().as_mut() {
            subs.push(Subscriber {
                tx,
                lagged: lagged.clone(),
            });
        }
        EventStream {
            rx,
            lagged,
            queue: self.queue,
            ended: false,
        }
    }

    /// Ends every stream once it has delivered what is queued, and refuses
    /// new subscribers (daemon shutdown).
    pub fn close(&self) {
        let closed = self.subscribers().take();
        if let Some(subs) = closed {
            tracing::info!(subscribers = subs.len(), "ending container event streams");
        }
    }
}

/// One subscriber's events, as GetContainerEvents streams them.
pub struct EventStream {
    rx: mpsc::Receiver<Message>,
    lagged: Arc<AtomicBool>,
    queue: usize,
    ended: bool,
}

impl tokio_stream::Stream for EventStream {
    type Item = Result<cri::ContainerEventResponse, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(Ok((*message).clone()))),
            Poll::Ready(None) => {
                self.ended = true;
                if self.lagged.load(Ordering::SeqCst) {
                    Poll::Ready(Some(Err(tonic::Status::resource_exhausted(format!(
                        "GetContainerEvents: this client fell more than {} events behind and was dropped; list the pods again and resubscribe",
                        self.queue
                    )))))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn bus(queue: usize) -> EventBus {
        let bus = EventBus::with_queue(queue);
        bus.set_describe(Box::new(|e: &Event| {
            Some(cri::ContainerEventResponse {
                container_id: e.container_id.clone(),
                container_event_type: e.kind.cri() as i32,
                created_at: e.at_ns,
                ..Default::default()
            })
        }));
        bus
    }

    #[tokio::test]
    async fn subscribers_get_events_in_order_and_end_cleanly_on_close() {
        let bus = bus(8);
        bus.publish(Event::now("before", "pod", EventKind::Created));
        let (mut a, mut b) = (bus.subscribe(), bus.subscribe());
        for kind in [
            EventKind::Created,
            EventKind::Started,
            EventKind::Stopped,
            EventKind::Deleted,
        ] {
            bus.publish(Event::now("c1", "pod", kind));
        }
        bus.close();
        for stream in [&mut a, &mut b] {
            let mut kinds = Vec::new();
            while let Some(item) = stream.next().await {
                let e = item.expect("no error");
                assert_eq!(e.container_id, "c1", "nothing from before subscribing");
                kinds.push(e.container_event_type);
            }
            assert_eq!(kinds, [0, 1, 2, 3]);
        }
        let mut late = bus.subscribe();
        assert!(late.next().await.is_none(), "closed: ends at once");
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_dropped_with_an_error_and_others_go_on() {
        let bus = bus(2);
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        for i in 0..5 {
            bus.publish(Event::now(&format!("c{i}"), "pod", EventKind::Created));
            assert_eq!(
                fast.next().await.unwrap().unwrap().container_id,
                format!("c{i}")
            );
        }
        let mut got = Vec::new();
        let err = loop {
            match slow.next().await.expect("an error ends the stream") {
                Ok(e) => got.push(e.container_id),
                Err(status) => break status,
            }
        };
        assert_eq!(got, ["c0", "c1"], "what was queued is delivered first");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("fell more than 2 events behind"),
            "{err}"
        );
        assert!(slow.next().await.is_none());
        assert_eq!(bus.subscribers().as_ref().unwrap().len(), 1, "slow is gone");
    }

    #[tokio::test]
    async fn a_dropped_stream_unsubscribes() {
        let bus = bus(2);
        drop(bus.subscribe());
        bus.publish(Event::now("c", "pod", EventKind::Created));
        assert!(bus.subscribers().as_ref().unwrap().is_empty());
    }
}

//! Traffic counters of a pod's tap, turned to the pod's point of view.
//!
//! Read from `/proc/thread-self/net/dev`, which shows the calling thread's
//! network namespace like every other call of this module; the same
//! counters under `/sys/class/net/<tap>/statistics` show the namespace
//! sysfs was mounted in, which need not be the daemon's.

use std::path::PathBuf;

const DEV_FILE: &str = "/proc/thread-self/net/dev";

/// What the pod sent and received through its interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {0} is not in {DEV_FILE}")]
    NoInterface(String),
    #[error("{DEV_FILE}: cannot read the line of {0}")]
    Format(String),
}

/// The pod's traffic through `tap`.
pub fn pod_traffic(tap: &str) -> Result<PodTraffic, StatsError> {
    let text = std::fs::read_to_string(DEV_FILE).map_err(|source| StatsError::Io {
        path: DEV_FILE.into(),
        source,
    })?;
    parse(&text, tap)
}

/// Parses `/proc/net/dev`. What the host's end of a tap receives, the pod
/// transmitted, and the other way round.
fn parse(text: &str, tap: &str) -> Result<PodTraffic, StatsError> {
    let line = text
        .lines()
        .skip(2)
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == tap).then_some(rest)
        })
        .ok_or_else(|| StatsError::NoInterface(tap.into()))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| StatsError::Format(tap.into()))?;
    // Receive: bytes packets errs drop fifo frame compressed multicast;
    // transmit: bytes packets errs drop fifo colls carrier compressed.
    if fields.len() < 16 {
        return Err(StatsError::Format(tap.into()));
    }
    let (host_rx, host_tx) = fields.split_at(8);
    Ok(PodTraffic {
        rx_bytes: host_tx[0],
        rx_packets: host_tx[1],
        rx_errors: host_tx[2],
        rx_dropped: host_tx[3],
        tx_bytes: host_rx[0],
        tx_packets: host_rx[1],
        tx_errors: host_rx[2],
        tx_dropped: host_rx[3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
pvtapabc123:   5000      40    1    2    0     0          0         0    7000      60    3    4    0     0       0          0
";

    #[test]
    fn the_host_side_is_swapped_to_the_pods_view() {
        let t = parse(SAMPLE, "pvtapabc123").unwrap();
        assert_eq!(
            t,
            PodTraffic {
                rx_bytes: 7000,
                rx_packets: 60,
                rx_errors: 3,
                rx_dropped: 4,
                tx_bytes: 5000,
                tx_packets: 40,
                tx_errors: 1,
                tx_dropped: 2,
            }
        );
    }

    #[test]
    fn a_missing_or_garbled_interface_is_an_error() {
        assert!(matches!(
            parse(SAMPLE, "pvtapnone"),
            Err(StatsError::NoInterface(_))
        ));
        assert!(matches!(
            parse("a\nb\nx: 1 2 3\n", "x"),
            Err(StatsError::Format(_))
        ));
    }

    #[test]
    fn reads_loopback_of_this_namespace() {
        // Every network namespace has lo.
        pod_traffic("lo").unwrap();
    }
}

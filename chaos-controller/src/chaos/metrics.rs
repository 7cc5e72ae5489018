//! The controller's own `/metrics` during `chaosnet run`: fault windows for Prometheus.
//!
//! - `chaosnet_fault_active{kind, fault, run}`: 1 while an occurrence of that fault is active,
//!   0 otherwise (so dashboards can shade fault windows);
//! - `chaosnet_fault_injections_total{kind, fault, run}` and
//!   `chaosnet_fault_heals_total{kind, fault, run}`.
//!
//! Served by a small std HTTP listener on 127.0.0.1 (any path answers the metrics text; one
//! request per connection, bounded read). `run --monitor` adds it to the Prometheus file_sd
//! targets of the run. What it does not do: know about agents.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of every fault metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// Fault kind, e.g. `partition`.
    pub kind: String,
    /// Fault name from the scenario.
    pub fault: String,
    /// Run id.
    pub run: String,
}

/// The fault metrics.
#[derive(Clone)]
pub struct ChaosMetrics {
    registry: Arc<Registry>,
    active: Family<FaultLabels, Gauge>,
    injects: Family<FaultLabels, Counter>,
    heals: Family<FaultLabels, Counter>,
}

impl Default for ChaosMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ChaosMetrics {
    /// A fresh registry with the three families.
    pub fn new() -> ChaosMetrics {
        let mut registry = Registry::default();
        let active = Family::<FaultLabels, Gauge>::default();
        let injects = Family::<FaultLabels, Counter>::default();
        let heals = Family::<FaultLabels, Counter>::default();
        registry.register(
            "chaosnet_fault_active",
            "Active occurrences of a fault (1 while injected)",
            active.clone(),
        );
        registry.register(
            "chaosnet_fault_injections",
            "Fault occurrences injected",
            injects.clone(),
        );
        registry.register(
            "chaosnet_fault_heals",
            "Fault occurrences healed",
            heals.clone(),
        );
        ChaosMetrics {
            registry: Arc::new(registry),
            active,
            injects,
            heals,
        }
    }

    /// Records an inject.
    pub fn injected(&self, l: &FaultLabels) {
        self.active.get_or_create(l).inc();
        self.injects.get_or_create(l).inc();
    }

    /// Records a heal.
    pub fn healed(&self, l: &FaultLabels) {
        self.active.get_or_create(l).dec();
        self.heals.get_or_create(l).inc();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Serves the metrics on `127.0.0.1:<port>` (0 picks a free port) until `stop` is set.
    /// Returns the bound address.
    pub fn serve(&self, port: u16, stop: Arc<AtomicBool>) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let me = self.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 2048];
                        let _ = s.read(&mut buf);
                        let body = me.encode();
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_gauge_follows_inject_and_heal() {
        let m = ChaosMetrics::new();
        let l = FaultLabels {
            kind: "partition".into(),
            fault: "cut".into(),
            run: "abc123".into(),
        };
        m.injected(&l);
        assert!(
            m.encode().contains(
                "chaosnet_fault_active{kind=\"partition\",fault=\"cut\",run=\"abc123\"} 1"
            )
        );
        m.healed(&l);
        let t = m.encode();
        assert!(
            t.contains("chaosnet_fault_active{kind=\"partition\",fault=\"cut\",run=\"abc123\"} 0"),
            "{t}"
        );
        assert!(
            t.contains(
                "chaosnet_fault_heals_total{kind=\"partition\",fault=\"cut\",run=\"abc123\"} 1"
            ),
            "{t}"
        );
    }
}

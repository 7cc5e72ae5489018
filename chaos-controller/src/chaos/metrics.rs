//! The controller's own `/metrics` during `chaosnet run`: fault windows for Prometheus.
//!
//! - `chaosnet_fault_active{kind, fault, run}`: 1 while an occurrence of that fault is active,
//!   0 otherwise (so dashboards can shade fault windows);
//! - `chaosnet_fault_injections_total{kind, fault, run}` and
//!   `chaosnet_fault_heals_total{kind, fault, run}`;
//! - `chaosnet_fault_recovery_seconds{kind, fault, run}`: seconds from the latest heal of that
//!   fault to the first probe round at the recovery threshold, set by `chaosnet run` when it
//!   measures that recovery (the same [`super::run::judge::recovery_after`] the report uses). A heal
//!   that never recovers leaves the previous value (or no series).
//!
//! Every series of a fault can be declared at zero before its first injection
//! ([`ChaosMetrics::declare`]), so `increase()` over the counters sees the first injection
//! (a counter that springs into existence at 1 shows no increase).
//!
//! Served by a small std listener on 127.0.0.1 with [`crate::http`]'s server halves (any
//! path answers the metrics text; one request per connection, bounded read), which counts the scrapes it answered so a caller
//! can wait until Prometheus has seen a state ([`ChaosMetrics::wait_scrape_after`]).
//! `chaosnet run --monitor` and `chaosnet fault --duration` on a monitored lab add it to the
//! run's Prometheus targets. What it does not do: know about agents, or probe anything.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::http;

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
    recovery: Family<FaultLabels, Gauge<f64, AtomicU64>>,
    /// Scrapes [`ChaosMetrics::serve`] began (counted before encoding) and answered. It
    /// answers one connection at a time, so they complete in the order they began.
    begun: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
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
        let recovery = Family::<FaultLabels, Gauge<f64, AtomicU64>>::default();
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
        registry.register_with_unit(
            "chaosnet_fault_recovery",
            "Time from the latest heal of a fault to the first probe round at the recovery threshold",
            prometheus_client::registry::Unit::Seconds,
            recovery.clone(),
        );
        ChaosMetrics {
            registry: Arc::new(registry),
            active,
            injects,
            heals,
            recovery,
            begun: Arc::new(AtomicU64::new(0)),
            answered: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Declares a fault's active gauge and counters at 0 (before its first injection).
    pub fn declare(&self, l: &FaultLabels) {
        drop(self.active.get_or_create(l));
        drop(self.injects.get_or_create(l));
        drop(self.heals.get_or_create(l));
    }

    /// Records the recovery measured after the latest heal of a fault.
    pub fn recovered(&self, l: &FaultLabels, seconds: f64) {
        self.recovery.get_or_create(l).set(seconds);
    }

    /// Scrapes begun so far. Read it after changing a metric: any later scrape encodes the
    /// change.
    pub fn scrapes(&self) -> u64 {
        self.begun.load(Ordering::Acquire)
    }

    /// Waits until the scrape after the `seen`-th one has been answered (so a change made
    /// before reading `seen` from [`ChaosMetrics::scrapes`] reached the scraper), at most
    /// `timeout`. True when it was.
    pub fn wait_scrape_after(&self, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.answered.load(Ordering::Acquire) <= seen {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
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
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        // Any path answers the metrics; a request that is not HTTP still
                        // gets them (the scraper sees what it sees).
                        if let Ok(reader) = s.try_clone() {
                            let _ = http::read_request(&mut std::io::BufReader::new(reader));
                        }
                        me.begun.fetch_add(1, Ordering::AcqRel);
                        let body = me.encode();
                        // A failed write still counts: the scraper got what it got, and the
                        // next scrape must not wait for this one.
                        let mut w = s;
                        let _ =
                            http::write_response(&mut w, 200, "text/plain; version=0.0.4", &body);
                        me.answered.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(addr)
    }
}

/// The controller's metrics served for one run and, when the run is monitored, scraped by
/// its Prometheus. Dropping it stops serving and removes the target.
pub struct Exporter {
    /// The metrics.
    pub metrics: ChaosMetrics,
    /// Where they are served.
    pub addr: SocketAddr,
    run_dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
}

impl Exporter {
    /// How long to wait for a scrape: the targets file is re-read every 5 s, then scraped
    /// every 5 s, so a new target is scraped within about 10 s.
    pub const SCRAPE_WAIT: Duration =
        Duration::from_secs(3 * crate::monitor::prometheus::SCRAPE_INTERVAL_S);

    /// Serves fresh metrics and adds them to the run's Prometheus targets. `None` (with a
    /// warning on stderr when something failed) when the run has no Prometheus running:
    /// nothing would scrape them.
    pub fn start(run_dir: &std::path::Path, run_id: &str) -> Option<Exporter> {
        // Without a running Prometheus (not installed, or not `--monitor`) nobody scrapes.
        crate::monitor::MonitorState::load(run_dir)
            .prometheus_url
            .as_ref()?;
        let metrics = ChaosMetrics::new();
        let stop = Arc::new(AtomicBool::new(false));
        let addr = match metrics.serve(0, stop.clone()) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("chaosnet: warning: controller /metrics not served: {e}");
                return None;
            }
        };
        match crate::monitor::prometheus::add_controller_target(run_dir, run_id, addr) {
            Ok(true) => Some(Exporter {
                metrics,
                addr,
                run_dir: run_dir.to_path_buf(),
                stop,
            }),
            Ok(false) => {
                stop.store(true, Ordering::Relaxed);
                None
            }
            Err(e) => {
                eprintln!("chaosnet: warning: Prometheus will not scrape the controller: {e}");
                stop.store(true, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(e) =
            crate::monitor::prometheus::remove_controller_target(&self.run_dir, self.addr)
        {
            eprintln!("chaosnet: warning: {e}");
        }
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

    #[test]
    fn declared_series_start_at_zero_and_recovery_is_a_gauge_in_seconds() {
        let m = ChaosMetrics::new();
        let l = FaultLabels {
            kind: "partition".into(),
            fault: "cut".into(),
            run: "r1".into(),
        };
        m.declare(&l);
        let t = m.encode();
        let labels = "{kind=\"partition\",fault=\"cut\",run=\"r1\"}";
        for line in [
            format!("chaosnet_fault_active{labels} 0"),
            format!("chaosnet_fault_injections_total{labels} 0"),
            format!("chaosnet_fault_heals_total{labels} 0"),
        ] {
            assert!(t.contains(&line), "{line} in {t}");
        }
        assert!(!t.contains("chaosnet_fault_recovery_seconds{"), "{t}");
        m.recovered(&l, 2.5);
        m.recovered(&l, 4.0);
        let t = m.encode();
        assert!(
            t.contains("# TYPE chaosnet_fault_recovery_seconds gauge"),
            "{t}"
        );
        assert!(
            t.contains("# UNIT chaosnet_fault_recovery_seconds seconds"),
            "{t}"
        );
        assert!(
            t.contains(&format!("chaosnet_fault_recovery_seconds{labels} 4.0")),
            "the latest heal's recovery: {t}"
        );
    }

    #[test]
    fn serve_answers_the_metrics_and_counts_scrapes() {
        use std::io::{Read, Write};
        let m = ChaosMetrics::new();
        m.declare(&FaultLabels {
            kind: "loss".into(),
            fault: "lossy".into(),
            run: "r1".into(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let addr = m.serve(0, stop.clone()).expect("bind 127.0.0.1:0");
        assert_eq!(m.scrapes(), 0);
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .expect("write");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(
            body.contains("# TYPE chaosnet_fault_active gauge"),
            "{body}"
        );
        assert!(m.wait_scrape_after(0, Duration::from_secs(10)));
        assert!(m.scrapes() >= 1);
        stop.store(true, Ordering::Relaxed);
    }
}

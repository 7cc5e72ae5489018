//! GC of the node graph (pinging the oldest contacts of buckets with pending ones) and the
//! refresh of idle buckets.

use std::time::Duration;

use rand::{Rng, RngExt};

use crate::graph::BUCKETS;
use crate::id::NodeId;
use crate::time::Time;
use crate::wire::Request;

use super::lookup::LookupPurpose;
use super::{Node, Purpose, Timer};

/// Refresh lookups started per refresh check, so a cold table does not burst.
const REFRESH_PER_CHECK: usize = 2;

impl Node {
    pub(super) fn run_gc(&mut self, now: Time) {
        self.set_timer(
            now + Duration::from_millis(self.cfg.gc_interval_ms.max(1)),
            Timer::Gc,
        );
        for b in self.table.buckets_with_pending() {
            for peer in self.table.oldest(b, self.cfg.gc_parallelism) {
                if self.gc_probing.len() >= self.cfg.gc_parallelism {
                    return;
                }
                if !self.gc_probing.insert(peer) {
                    continue;
                }
                let addrs = self.addrs_of(&peer);
                let nonce = self.rng.next_u64();
                self.send_request(now, peer, addrs, Request::Ping { nonce }, Purpose::Gc);
            }
        }
    }

    pub(super) fn gc_answer(&mut self, now: Time, peer: NodeId, ok: bool) {
        self.gc_probing.remove(&peer);
        if !ok {
            self.evict(now, peer);
        }
    }

    pub(super) fn run_refresh(&mut self, now: Time) {
        self.set_timer(now + self.refresh_check_interval(), Timer::Refresh);
        if !self.joined {
            return;
        }
        let Some(low) = self.table.lowest_nonempty() else {
            return;
        };
        let mut started = 0;
        for b in low..BUCKETS {
            if started >= REFRESH_PER_CHECK || self.lookups.len() >= self.cfg.max_lookups {
                break;
            }
            // A bucket is refreshed when its jittered deadline has passed and it has been
            // idle for at least half the refresh period.
            let min_idle = Duration::from_millis(self.cfg.bucket_refresh_ms / 2);
            if now < self.next_refresh[b] || now.since(self.table.last_activity(b)) < min_idle {
                continue;
            }
            self.next_refresh[b] = now + self.refresh_delay();
            self.table.touch(b, now);
            let target = self.cfg.id.random_in_bucket(b, &mut self.rng);
            self.start_lookup(now, target, LookupPurpose::Refresh);
            started += 1;
        }
    }

    pub(super) fn refresh_delay(&mut self) -> Duration {
        let base = self.cfg.bucket_refresh_ms.max(1) as f64;
        Duration::from_millis((base * self.rng.random_range(0.5..1.5)) as u64)
    }

    pub(super) fn refresh_check_interval(&self) -> Duration {
        Duration::from_millis((self.cfg.bucket_refresh_ms / 10).clamp(100, 60_000))
    }
}

//! Any bytes as the connection hello that carries the membership proofs: the decoder never
//! panics, what it accepts round-trips and respects the proof and address limits.
#![no_main]

use chaosnet_proto::{Hello, MAX_ADDRS_PER_PEER};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some(h) = chaosnet_fuzz::roundtrip::<Hello>(data) {
        assert!(h.proofs.len() <= 4 && h.listen_addrs.len() <= MAX_ADDRS_PER_PEER);
    }
});

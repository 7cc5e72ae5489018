//! Any bytes as a signal request, verified as each node on its path (and the target) would:
//! nothing panics, and a chain is accepted only from the node that signed it last.
#![no_main]

use chaosnet_proto::{Request, check_chain};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some(Request::Signal { signal, hops, .. }) = chaosnet_fuzz::roundtrip::<Request>(data)
    else {
        return;
    };
    let last = hops.last().map_or(signal.from, |h| h.by);
    let candidates = hops.iter().map(|h| h.by).chain([signal.from, signal.to]);
    for from in candidates {
        if check_chain(&signal, &hops, &from).is_ok() {
            assert_eq!(from, last, "a chain accepted from a node that did not sign it last");
            assert!(signal.verify(), "a chain accepted without the requester's signature");
        }
    }
});

//! Any bytes as a request or a response frame: the decoder never panics, and what it accepts
//! round-trips.
#![no_main]

use chaosnet_proto::{Request, Response};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    chaosnet_fuzz::roundtrip::<Request>(data);
    chaosnet_fuzz::roundtrip::<Response>(data);
});

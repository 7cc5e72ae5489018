//! Any bytes as a relay circuit's stream, cut into pieces of sizes the first bytes choose:
//! the decoder never panics, and the datagrams it gives back, framed again, followed by what
//! it still holds, are exactly the stream.
#![no_main]

use chaosnet_proto::{CircuitDecoder, frame_datagram};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(cut).max(1);
    let mut dec = CircuitDecoder::new();
    let mut again = Vec::new();
    for chunk in stream.chunks(piece) {
        dec.push(chunk);
        while let Some(d) = dec.next_datagram() {
            again.extend(frame_datagram(&d).expect("a decoded datagram fits a frame"));
        }
    }
    assert_eq!(dec.inside_datagram(), !dec.pending().is_empty());
    again.extend_from_slice(dec.pending());
    assert_eq!(again, stream);
});

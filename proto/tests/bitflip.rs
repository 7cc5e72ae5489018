//! Valid frames with bits flipped, bytes cut off or appended: the decoders never panic, and
//! whatever they still accept round-trips through the encoder. The frames are the fuzz seed
//! corpus (fuzz/seeds/, written by `make fuzz-seeds`), so this runs on every `make test`
//! what `make fuzz` runs for hours.

use std::fmt::Debug;
use std::path::Path;

use chaosnet_proto::{
    CircuitDecoder, Hello, Request, Response, Validate, check_chain, decode, encode, frame_datagram,
};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("a seed file").path())
        .collect();
    files.sort();
    let out: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read a seed"))
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

fn all_frames() -> Vec<Vec<u8>> {
    let mut all = seeds("wire_frame");
    all.extend(seeds("signal_verify"));
    all.extend(seeds("hello"));
    all
}

/// Decodes as `T`; if that works, the message must survive encoding and decoding again.
fn roundtrips<T>(bytes: &[u8]) -> Result<Option<T>, TestCaseError>
where
    T: Serialize + DeserializeOwned + Validate + PartialEq + Debug,
{
    let Ok(msg) = decode::<T>(bytes) else {
        return Ok(None);
    };
    let again = encode(&msg).map_err(|e| TestCaseError::fail(format!("re-encode: {e}")))?;
    let back = decode::<T>(&again).ok();
    prop_assert_eq!(back.as_ref(), Some(&msg));
    Ok(Some(msg))
}

fn check_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(Request::Signal { signal, hops, .. }) = roundtrips::<Request>(bytes)? {
        let last = hops.last().map_or(signal.from, |h| h.by);
        for from in hops.iter().map(|h| h.by).chain([signal.from, signal.to]) {
            if check_chain(&signal, &hops, &from).is_ok() {
                prop_assert_eq!(from, last);
            }
        }
    }
    roundtrips::<Response>(bytes)?;
    roundtrips::<Hello>(bytes)?;
    Ok(())
}

#[test]
fn every_seed_is_a_valid_frame() {
    let decodes = |f: &[u8]| {
        decode::<Request>(f).is_ok() || decode::<Response>(f).is_ok() || decode::<Hello>(f).is_ok()
    };
    for (i, f) in all_frames().iter().enumerate() {
        assert!(
            decodes(f),
            "seed {i} does not decode: regenerate with `make fuzz-seeds`"
        );
    }
    for s in seeds("signal_verify") {
        let Ok(Request::Signal { signal, hops, .. }) = decode::<Request>(&s) else {
            panic!("a signal seed is not a signal");
        };
        let last = hops.last().map_or(signal.from, |h| h.by);
        assert_eq!(
            check_chain(&signal, &hops, &last),
            Ok(()),
            "signal seeds verify"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn flipped_bits_never_panic_and_what_decodes_roundtrips(
        pick in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8),
    ) {
        let frames = all_frames();
        let mut f = pick.get(&frames).clone();
        for (at, bit) in flips {
            let i = at.index(f.len());
            f[i] ^= 1 << bit;
        }
        check_all(&f)?;
    }

    #[test]
    fn cut_or_extended_frames_never_panic(
        pick in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let frames = all_frames();
        let f = pick.get(&frames);
        let at = cut.index(f.len() + 1);
        check_all(&f[..at])?;
        let mut longer = f.clone();
        longer.extend_from_slice(&tail);
        check_all(&longer)?;
    }

    #[test]
    fn a_flipped_circuit_stream_decodes_to_itself(
        pick in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..4),
        piece in 1usize..300,
    ) {
        let streams = seeds("relay_framing");
        let mut s = pick.get(&streams)[1..].to_vec();
        for (at, bit) in flips {
            if !s.is_empty() {
                let i = at.index(s.len());
                s[i] ^= 1 << bit;
            }
        }
        let mut dec = CircuitDecoder::new();
        let mut again = Vec::new();
        for chunk in s.chunks(piece) {
            dec.push(chunk);
            while let Some(d) = dec.next_datagram() {
                again.extend(frame_datagram(&d).expect("a decoded datagram fits"));
            }
        }
        again.extend_from_slice(dec.pending());
        prop_assert_eq!(again, s);
    }
}

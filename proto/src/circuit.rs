//! Framing of datagrams on a relay circuit.
//!
//! A circuit is a byte stream (one QUIC stream per leg) that carries the two ends' QUIC
//! datagrams, each prefixed with its length as a big-endian u16. [`frame_datagram`] frames
//! one; [`CircuitDecoder`] takes the stream's bytes in whatever pieces they arrive and gives
//! back whole datagrams. Nothing here reads a stream or keeps time: the shell does, and asks
//! [`CircuitDecoder::inside_datagram`] to choose between its idle and its mid-datagram
//! deadline.

/// Bytes of the length prefix.
pub const CIRCUIT_PREFIX_LEN: usize = 2;
/// Largest datagram a circuit carries (what the prefix can say).
pub const MAX_CIRCUIT_DATAGRAM: usize = u16::MAX as usize;

/// `datagram` framed for a circuit, or `None` when it is longer than
/// [`MAX_CIRCUIT_DATAGRAM`].
pub fn frame_datagram(datagram: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(datagram.len()).ok()?;
    let mut frame = Vec::with_capacity(CIRCUIT_PREFIX_LEN + datagram.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(datagram);
    Some(frame)
}

/// Splits a circuit's byte stream back into datagrams. It holds at most one unfinished
/// datagram plus the piece last pushed.
#[derive(Debug, Default)]
pub struct CircuitDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as datagrams.
    start: usize,
}

impl CircuitDecoder {
    /// An empty decoder.
    pub fn new() -> CircuitDecoder {
        CircuitDecoder::default()
    }

    /// Adds the next bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole datagram, if the bytes pushed so far hold one.
    pub fn next_datagram(&mut self) -> Option<Vec<u8>> {
        let rest = &self.buf[self.start..];
        let prefix: [u8; CIRCUIT_PREFIX_LEN] = rest.get(..CIRCUIT_PREFIX_LEN)?.try_into().ok()?;
        let len = usize::from(u16::from_be_bytes(prefix));
        let datagram = rest
            .get(CIRCUIT_PREFIX_LEN..CIRCUIT_PREFIX_LEN + len)?
            .to_vec();
        self.start += CIRCUIT_PREFIX_LEN + len;
        Some(datagram)
    }

    /// Whether the stream stopped inside a datagram (or its prefix): the bytes pushed hold
    /// the start of one that is not complete.
    pub fn inside_datagram(&self) -> bool {
        self.start < self.buf.len()
    }

    /// Bytes pushed and not yet handed out.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn datagrams_come_back_whole_however_the_stream_is_cut() {
        let datagrams: Vec<Vec<u8>> = vec![vec![], vec![7], vec![1; 1200], vec![9; 65_535]];
        let stream: Vec<u8> = datagrams
            .iter()
            .flat_map(|d| frame_datagram(d).unwrap())
            .collect();
        for piece in [1, 2, 3, 1000, stream.len()] {
            let mut dec = CircuitDecoder::new();
            let mut out = Vec::new();
            for chunk in stream.chunks(piece) {
                dec.push(chunk);
                while let Some(d) = dec.next_datagram() {
                    out.push(d);
                }
            }
            assert_eq!(out, datagrams, "pieces of {piece}");
            assert!(!dec.inside_datagram());
        }
    }

    #[test]
    fn a_cut_datagram_is_held_and_too_long_one_is_refused() {
        let mut dec = CircuitDecoder::new();
        dec.push(&[0x00]);
        assert!(dec.inside_datagram() && dec.next_datagram().is_none());
        dec.push(&[0x03, 1, 2]);
        assert!(dec.next_datagram().is_none());
        assert_eq!(dec.pending(), &[0x00, 0x03, 1, 2]);
        dec.push(&[3]);
        assert_eq!(dec.next_datagram(), Some(vec![1, 2, 3]));
        assert!(!dec.inside_datagram());
        assert!(frame_datagram(&vec![0; MAX_CIRCUIT_DATAGRAM + 1]).is_none());
    }
}

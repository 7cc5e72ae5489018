//! Writes the seed corpus: valid frames of every kind, so that the fuzzer starts inside
//! postcard's body decoder and the signature checks rather than at the frame header.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin seeds -- fuzz/seeds` (what `make
//! fuzz-seeds` runs). The files are committed; chaosnet-proto's bit-flip test reads them
//! too, so after a wire change regenerate them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chaosnet_proto::{
    ConnMode, Countersign, ErrorCode, Hello, NatType, NodeId, PeerInfo, Request, Response,
    SecretKey, Signal, TraceContext, encode, frame_datagram,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

fn key(n: u8) -> SecretKey {
    SecretKey::from_bytes([n; 32])
}

/// Signals as a requester signs them, carried by 0 to 3 hops, each hop countersigning.
fn signals() -> Vec<Request> {
    let target = key(9).node_id();
    let trace = Some(TraceContext {
        trace_id: [7; 16],
        span_id: [8; 8],
        flags: 1,
    });
    let mut out = Vec::new();
    for (i, nat) in [NatType::Unknown, NatType::Cone, NatType::Symmetric, NatType::Public]
        .into_iter()
        .enumerate()
    {
        let addrs = match i {
            0 => vec![],
            1 => vec![addr("198.18.1.2:4000")],
            2 => vec![addr("198.18.1.2:4000"), addr("10.1.0.5:4000")],
            _ => vec![addr("[2001:db8::1]:9"), addr("198.18.0.9:1"), addr("127.0.0.1:5")],
        };
        let signal = Signal::with_addrs(&key(1), target, 1000 + i as u64, 5000, nat, addrs);
        let mut hops = Vec::new();
        for hop in 0..=i.min(3) {
            out.push(Request::Signal {
                signal: signal.clone(),
                hops: hops.clone(),
                trace: if hop % 2 == 0 { trace } else { None },
            });
            let seen = addr(&format!("198.18.2.{}:{}", hop + 1, 7000 + hop));
            hops.push(Countersign::new(&key(2 + hop as u8), &signal, hop, seen));
        }
    }
    out
}

fn requests() -> Vec<Request> {
    let mut out = vec![
        Request::Ping { nonce: 42 },
        Request::FindNode {
            target: NodeId([3; 32]),
        },
        Request::Introduce { max: 8 },
        Request::Echo {
            payload: (0..64).collect(),
        },
        Request::RelayOpen {
            target: NodeId([4; 32]),
            trace: None,
        },
        Request::RelayOpen {
            target: NodeId([4; 32]),
            trace: Some(TraceContext {
                trace_id: [1; 16],
                span_id: [2; 8],
                flags: 0,
            }),
        },
        Request::RelayIncoming {
            from: NodeId([5; 32]),
        },
    ];
    out.extend(signals());
    out
}

fn responses() -> Vec<Response> {
    let peer = |n: u8, addrs: Vec<SocketAddr>| PeerInfo {
        id: NodeId([n; 32]),
        addrs,
        mode: ConnMode::Direct,
        nat: NatType::Cone,
        live: n % 2 == 0,
    };
    vec![
        Response::Pong {
            nonce: 42,
            observed: Some(addr("198.18.3.4:5000")),
            nat: NatType::Symmetric,
        },
        Response::Pong {
            nonce: 0,
            observed: None,
            nat: NatType::Unknown,
        },
        Response::Nodes { peers: vec![] },
        Response::Nodes {
            peers: vec![
                peer(1, vec![addr("198.18.0.1:1")]),
                peer(2, vec![addr("10.0.0.1:2"), addr("[::1]:3")]),
                PeerInfo {
                    mode: ConnMode::Relayed,
                    nat: NatType::Public,
                    ..peer(3, vec![])
                },
            ],
        },
        Response::Echo {
            payload: vec![0xab; 100],
        },
        Response::SignalAnswer {
            target_nat: NatType::Cone,
            target_addr: Some(addr("198.18.5.6:7")),
            target_addrs: vec![addr("198.18.5.6:7"), addr("10.2.0.2:7")],
            via: Some(NodeId([6; 32])),
        },
        Response::RelayAccepted {
            max_bytes: 256 << 20,
            max_duration_ms: 600_000,
        },
        Response::Error {
            code: ErrorCode::RateLimited,
        },
    ]
}

fn hellos() -> Vec<Hello> {
    (0..=4)
        .map(|n| Hello {
            proofs: (0..n).map(|i| [i as u8 * 17; 32]).collect(),
            listen_addrs: match n {
                0 => vec![],
                1 => vec![addr("127.0.0.1:4000")],
                _ => vec![addr("198.18.0.2:4000"), addr("[2001:db8::2]:4000")],
            },
        })
        .collect()
}

/// Circuit streams: a cut byte (how the target slices the stream), then framed datagrams.
fn circuit_streams() -> Vec<Vec<u8>> {
    let datagrams: [&[&[u8]]; 4] = [
        &[b"x"],
        &[&[0xc3; 1200], &[0x40; 40]],
        &[&[], &[1, 2, 3]],
        &[&[0x5a; 1452], &[0x41; 1200], &[0x42; 20]],
    ];
    datagrams
        .iter()
        .enumerate()
        .map(|(i, ds)| {
            let mut s = vec![[1u8, 7, 200, 255][i]];
            for d in *ds {
                s.extend(frame_datagram(d).expect("small datagrams fit"));
            }
            s
        })
        .collect()
}

fn write(dir: &Path, target: &str, seeds: Vec<Vec<u8>>) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create the seed dir");
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(d.join(format!("seed-{i:02}")), s).expect("write a seed");
    }
    println!("{}: {} seeds", d.display(), seeds.len());
}

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    encode(msg).expect("a seed fits a frame")
}

fn main() {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("fuzz/seeds"), PathBuf::from);
    let mut wire: Vec<Vec<u8>> = requests().iter().map(frame).collect();
    wire.extend(responses().iter().map(frame));
    write(&dir, "wire_frame", wire);
    write(&dir, "signal_verify", signals().iter().map(frame).collect());
    write(&dir, "hello", hellos().iter().map(frame).collect());
    write(&dir, "relay_framing", circuit_streams());
}

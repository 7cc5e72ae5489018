//! A real OTLP/HTTP trace receiver for the lab tests: an axum server on a listener the test
//! chose (on loopback, or bound inside a lab namespace), decoding every export with the
//! OpenTelemetry project's own protobuf types and keeping the spans, at most [`MAX_SPANS`].

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// Spans kept at most: a fleet exports steadily, and this bounds the test's memory.
pub const MAX_SPANS: usize = 200_000;

/// One span as received.
#[derive(Clone, Debug)]
pub struct Span {
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    /// Attributes, values as strings.
    pub attrs: Vec<(String, String)>,
    /// Event names.
    pub events: Vec<String>,
}

impl Span {
    /// The value of attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What the receiver got so far.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    /// A copy of every span received.
    pub fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn traces(State(rx): State<Received>, body: Bytes) -> &'static str {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return "";
    };
    let mut out = rx.0.lock().unwrap_or_else(|p| p.into_inner());
    for span in req
        .resource_spans
        .into_iter()
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
    {
        if out.len() >= MAX_SPANS {
            break;
        }
        let attrs = span
            .attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                    Some(AnyValue::StringValue(s)) => s,
                    Some(other) => format!("{other:?}"),
                    None => String::new(),
                };
                (kv.key.clone(), v)
            })
            .collect();
        out.push(Span {
            name: span.name,
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            attrs,
            events: span.events.into_iter().map(|e| e.name).collect(),
        });
    }
    ""
}

/// Serves `POST /v1/traces` on `listener` from `rt` until the runtime is dropped.
pub fn serve(rt: &tokio::runtime::Runtime, listener: std::net::TcpListener) -> Received {
    let received = Received::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(received.clone());
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        axum::serve(listener, app).await
    });
    received
}

/// A runtime for the receiver.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

//! Logging and optional trace export, shared by the agent and the controller.
//!
//! Logs go to stderr through `tracing-subscriber` with an env filter (`CHAOSNET_LOG`). When
//! an OTLP endpoint is given (`--otlp-endpoint`), spans are also exported over OTLP/HTTP
//! (protobuf) by the OpenTelemetry SDK's batch processor, on its own thread. Without one no
//! exporter, layer or thread exists, so tracing costs nothing extra.
//!
//! It does not decide what is traced: the agent opens the spans (connects, lookups,
//! requests, signal hops, punches, relay circuits); the controller's `chaosnet run` is one
//! `chaos_run` span with its faults as events. It does carry span contexts between
//! processes ([`wire_context`], [`set_remote_parent`]) as plain bytes, so the agent's wire
//! format needs no OpenTelemetry type.

use std::io::IsTerminal;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint URL...).
    #[error("cannot set up the OTLP exporter for {endpoint}: {detail}")]
    Exporter {
        /// The endpoint given.
        endpoint: String,
        /// The SDK's message.
        detail: String,
    },
}

/// Keeps the trace pipeline alive; flushes pending spans when dropped.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("chaosnet: flushing traces failed: {e}");
        }
    }
}

/// What to log and export.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// The OpenTelemetry service name, e.g. `chaosnet-agent`.
    pub service: &'a str,
    /// `text` (for people) or `json` (one object per line, for log shippers).
    pub format: &'a str,
    /// Where to export spans (e.g. `http://127.0.0.1:4318/v1/traces`); `None`: no export.
    pub otlp_endpoint: Option<&'a str>,
    /// The log filter when `CHAOSNET_LOG` is unset, e.g. `info,quinn=warn`.
    pub default_log_filter: &'a str,
    /// Which spans are exported, whatever the log filter, e.g. `chaosnet_agent=debug`.
    pub export_filter: &'a str,
}

/// Installs the global subscriber: stderr logs, plus OTLP export when an endpoint is given.
pub fn init(opts: Options<'_>) -> Result<TelemetryGuard, TelemetryError> {
    let Options {
        service,
        format,
        otlp_endpoint,
        default_log_filter,
        export_filter,
    } = opts;
    let filter = || {
        EnvFilter::try_from_env("CHAOSNET_LOG")
            .unwrap_or_else(|_| EnvFilter::new(default_log_filter))
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // JSON logs are one object per line, for log shippers; text is for people.
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let Some(endpoint) = otlp_endpoint else {
        let _ = tracing_subscriber::registry()
            .with(fmt.with_filter(filter()))
            .try_init();
        return Ok(TelemetryGuard::default());
    };
    let err = |e: &dyn std::fmt::Display| TelemetryError::Exporter {
        endpoint: endpoint.to_string(),
        detail: e.to_string(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| err(&e))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(service.to_string());
    // Export has its own filter, so spans flow even when the log filter is quieter.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new(export_filter));
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .try_init();
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// A span's identity as another process needs it to continue the trace: the W3C
/// `traceparent` fields, as bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteContext {
    /// The trace's id.
    pub trace_id: [u8; 16],
    /// The span's id.
    pub span_id: [u8; 8],
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
}

/// The context to send along with a request made inside `span`, so the receiver's spans
/// join its trace. `None` when spans are not exported (no `--otlp-endpoint`, or `span` is
/// filtered out), which keeps the request as small as without tracing.
pub fn wire_context(span: &tracing::Span) -> Option<RemoteContext> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| RemoteContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// Makes `span` the child of a span in another process. Call it right after creating
/// `span`, before it is entered. A context with zero ids (all a hostile or buggy peer can
/// send that is not a real span) is ignored: `span` then starts a trace of its own.
pub fn set_remote_parent(span: &tracing::Span, remote: RemoteContext) {
    let sc = SpanContext::new(
        TraceId::from_bytes(remote.trace_id),
        SpanId::from_bytes(remote.span_id),
        TraceFlags::new(remote.flags),
        true,
        TraceState::default(),
    );
    if !sc.is_valid() || span.is_disabled() {
        return;
    }
    // Fails only when the span is not exported or already started; either way it keeps
    // its own trace, which is all a parent could change.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber with the OpenTelemetry layer and an SDK provider that exports nowhere:
    /// spans get real ids, as they do with `--otlp-endpoint`.
    fn traced() -> impl tracing::Subscriber + Send + Sync {
        let provider = SdkTracerProvider::builder().build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
    }

    #[test]
    fn a_remote_parent_joins_the_senders_trace() {
        tracing::subscriber::with_default(traced(), || {
            let sender = tracing::info_span!("sender");
            let sent = wire_context(&sender).expect("an exported span has a context");
            let receiver = tracing::info_span!("receiver");
            set_remote_parent(&receiver, sent);
            let got = wire_context(&receiver).expect("context");
            assert_eq!(got.trace_id, sent.trace_id, "same trace");
            assert_ne!(got.span_id, sent.span_id, "its own span");

            let stranger = tracing::info_span!("stranger");
            set_remote_parent(
                &stranger,
                RemoteContext {
                    trace_id: [0; 16],
                    span_id: [0; 8],
                    flags: 1,
                },
            );
            let own = wire_context(&stranger).expect("context");
            assert_ne!(own.trace_id, sent.trace_id, "zero ids are ignored");
            assert_ne!(own.trace_id, [0; 16]);
        });
    }

    #[test]
    fn without_export_nothing_goes_on_the_wire() {
        let fmt_only = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer());
        tracing::subscriber::with_default(fmt_only, || {
            let span = tracing::info_span!("plain");
            assert_eq!(wire_context(&span), None);
        });
        assert_eq!(wire_context(&tracing::Span::none()), None);
    }
}

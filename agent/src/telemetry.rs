//! Logging and optional trace export.
//!
//! Logs go to stderr through `tracing-subscriber` with an env filter (`CHAOSNET_LOG`). When
//! `--otlp-endpoint` is given, spans are also exported over OTLP/HTTP (protobuf) by the
//! OpenTelemetry SDK's batch processor, on its own thread. Without the flag no exporter,
//! layer or thread exists, so tracing costs nothing extra.
//!
//! It does not decide what is traced: the transport opens `connect` and `request` spans.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
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
            eprintln!("chaosnet-agent: flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber: stderr logs in `format` (`text` or `json`), plus OTLP
/// export to `otlp_endpoint` (e.g. `http://127.0.0.1:4318/v1/traces`) when given.
pub fn init(
    format: &str,
    otlp_endpoint: Option<&str>,
    service: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = || {
        EnvFilter::try_from_env("CHAOSNET_LOG")
            .unwrap_or_else(|_| EnvFilter::new("info,quinn=warn,rustls=warn"))
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
    // Spans are exported at debug level and above so `connect`/`request` spans flow even when
    // the log filter is at info.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(EnvFilter::new("chaosnet_agent=debug"));
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .try_init();
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

//! Logging and optional trace export, shared by the agent and the controller.
//!
//! Logs go to stderr through `tracing-subscriber` with an env filter (`CHAOSNET_LOG`). When
//! an OTLP endpoint is given (`--otlp-endpoint`), spans are also exported over OTLP/HTTP
//! (protobuf) by the OpenTelemetry SDK's batch processor, on its own thread. Without one no
//! exporter, layer or thread exists, so tracing costs nothing extra.
//!
//! It does not decide what is traced: the agent's transport opens `connect`, `request`,
//! `punch` and `relay_circuit` spans; the controller's `chaosnet run` is one `chaos_run` span
//! with its faults as events.

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

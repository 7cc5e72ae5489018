//! The scenario as written: the serde layer over the YAML (serde-saphyr), with every value
//! that can be wrong kept `Spanned` so validation can point at it. Unknown fields are
//! refused here, with the parser's position. What it does not do: check values (see
//! `validate`).

use std::fmt;
use std::path::PathBuf;

use chaosnet_contract::TaskWeights;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_saphyr::Spanned;

use super::{CONNTRACK_CHOICES, Conntrack, ConntrackPreset, ConntrackTimeouts, RUNTIME_CHOICES};
use super::{RuntimeChoice, validate::bounded};
use crate::plan::NatKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScenario {
    #[serde(default)]
    pub(crate) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) seed: Option<u64>,
    #[serde(default)]
    pub(crate) network: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) network_key_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(crate) seeds: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) agent: Option<RawAgent>,
    #[serde(default)]
    pub(crate) conntrack: Option<Spanned<Conntrack>>,
    #[serde(default)]
    pub(crate) runtime: Option<RuntimeField>,
    pub(crate) sites: Spanned<Vec<RawSite>>,
    #[serde(default)]
    pub(crate) chaos: Option<crate::chaos::spec::RawChaos>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    #[serde(default)]
    pub(crate) task_rate: Option<Spanned<f64>>,
    #[serde(default)]
    pub(crate) task_weights: Option<Spanned<TaskWeights>>,
    #[serde(default)]
    pub(crate) bucket_refresh_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) gc_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) otlp_endpoint: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) mdns: Option<Spanned<bool>>,
}

/// A site's `nat` as written: the five kinds plus `cgnat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawNat {
    None,
    FullCone,
    RestrictedCone,
    PortRestrictedCone,
    Symmetric,
    Cgnat,
}

impl RawNat {
    pub(crate) fn name(self) -> &'static str {
        match self.kind() {
            Some(k) => k.name(),
            None => "cgnat",
        }
    }

    pub(crate) fn kind(self) -> Option<NatKind> {
        Some(match self {
            RawNat::None => NatKind::None,
            RawNat::FullCone => NatKind::FullCone,
            RawNat::RestrictedCone => NatKind::RestrictedCone,
            RawNat::PortRestrictedCone => NatKind::PortRestrictedCone,
            RawNat::Symmetric => NatKind::Symmetric,
            RawNat::Cgnat => return None,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSite {
    pub(crate) name: Spanned<String>,
    pub(crate) nat: Spanned<RawNat>,
    #[serde(default)]
    pub(crate) inner: Option<Spanned<RawNat>>,
    #[serde(default)]
    pub(crate) agents: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) conntrack: Option<Spanned<Conntrack>>,
    #[serde(default)]
    pub(crate) hairpin: Option<Spanned<bool>>,
    #[serde(default)]
    pub(crate) runtime: Option<RuntimeChoice>,
    pub(crate) labels: Option<Spanned<std::collections::BTreeMap<String, String>>>,
}

/// The top-level `runtime` field: one choice for all, or one for seeds and one for sites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RuntimeField {
    pub(crate) seeds: RuntimeChoice,
    pub(crate) sites: RuntimeChoice,
}

impl<'de> Deserialize<'de> for RuntimeField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Split {
            #[serde(default)]
            seeds: RuntimeChoice,
            #[serde(default)]
            sites: RuntimeChoice,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RuntimeField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{RUNTIME_CHOICES}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RuntimeField, E> {
                let c: RuntimeChoice = v.parse().map_err(E::custom)?;
                Ok(RuntimeField { seeds: c, sites: c })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RuntimeField, A::Error> {
                Split::deserialize(de::value::MapAccessDeserializer::new(map)).map(|s| {
                    RuntimeField {
                        seeds: s.seeds,
                        sites: s.sites,
                    }
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Conntrack {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Conntrack;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{CONNTRACK_CHOICES}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Conntrack, E> {
                match v {
                    "home" => Ok(Conntrack::Preset(ConntrackPreset::Home)),
                    "corporate" => Ok(Conntrack::Preset(ConntrackPreset::Corporate)),
                    "cloud" => Ok(Conntrack::Preset(ConntrackPreset::Cloud)),
                    other => Err(E::custom(format_args!(
                        "unknown conntrack preset `{}`, expected one of {CONNTRACK_CHOICES}",
                        bounded(other)
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Conntrack, A::Error> {
                ConntrackTimeouts::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Conntrack::Custom)
            }
        }
        d.deserialize_any(V)
    }
}

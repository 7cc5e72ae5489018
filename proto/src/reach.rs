//! How peers reach each other: the NAT type a node classifies itself as (and advertises),
//! and how a connection was made.
//!
//! Plain labels shared by the node graph, the wire codec and the signalling rules. They sit
//! in a module of their own so that none of those depends on another just for them.

use serde::{Deserialize, Serialize};

/// How a connection to a peer was established: direct, punched or relayed (defined in the
/// controller-agent contract, whose `/status` and `/connect` bodies carry it; on the wire it
/// is its variant index, as before).
pub use chaosnet_contract::api::ConnMode;

/// How a NAT filters inbound packets to a mapping (RFC 4787 section 5), as a dial-back test
/// measured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Filtering {
    /// EIF: anyone may send to the mapping.
    EndpointIndependent,
    /// ADF: any port of an IP the mapping has sent to.
    AddressDependent,
    /// APDF: only the exact address and port the mapping has sent to.
    AddressPortDependent,
}

impl Filtering {
    /// Bounded label for metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Filtering::EndpointIndependent => "eif",
            Filtering::AddressDependent => "adf",
            Filtering::AddressPortDependent => "apdf",
        }
    }
}

/// A node's NAT type, as it classifies itself (RFC 4787 terms in the docs of each variant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum NatType {
    /// Not enough observations yet.
    #[default]
    Unknown,
    /// No NAT: observed address equals a listen address.
    Public,
    /// Endpoint-independent mapping whose filtering is not yet known.
    Cone,
    /// EIM + endpoint-independent filtering.
    FullCone,
    /// EIM + address-dependent filtering.
    RestrictedCone,
    /// EIM + address-and-port-dependent filtering.
    PortRestrictedCone,
    /// Endpoint-dependent mapping.
    Symmetric,
}

impl NatType {
    /// Every variant, for tests and label enumeration.
    pub const ALL: [NatType; 7] = [
        NatType::Unknown,
        NatType::Public,
        NatType::Cone,
        NatType::FullCone,
        NatType::RestrictedCone,
        NatType::PortRestrictedCone,
        NatType::Symmetric,
    ];

    /// Bounded label for metrics and JSON, in the scenario file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NatType::Unknown => "unknown",
            NatType::Public => "none",
            NatType::Cone => "cone",
            NatType::FullCone => "full-cone",
            NatType::RestrictedCone => "restricted-cone",
            NatType::PortRestrictedCone => "port-restricted-cone",
            NatType::Symmetric => "symmetric",
        }
    }

    /// Whether a node of this type accepts a plain dial from anywhere: no NAT, or a NAT
    /// with endpoint-independent filtering.
    pub fn is_open(self) -> bool {
        matches!(self, NatType::Public | NatType::FullCone)
    }

    /// Whether the node sits behind some NAT (any kind, measured or not).
    pub fn is_nated(self) -> bool {
        matches!(
            self,
            NatType::Cone
                | NatType::FullCone
                | NatType::RestrictedCone
                | NatType::PortRestrictedCone
                | NatType::Symmetric
        )
    }
}

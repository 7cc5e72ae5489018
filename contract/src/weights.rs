//! [`TaskWeights`]: the relative weights of the agent's autonomous tasks, with the
//! `ping,lookup,connect,echo[,claim]` spelling of `--task-weights`. Range checks of a scenario
//! (each at most 1,000,000, not all zero while tasks run) are the scenario's; the core takes
//! any values and never runs a task of weight 0.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Relative weights of the autonomous tasks. A zero weight disables that task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskWeights {
    /// Ping a random known node. Default 4.
    pub ping: u32,
    /// Look up a random id. Default 3.
    pub lookup: u32,
    /// Connect to a random known node any way possible. Default 2.
    pub connect: u32,
    /// Echo a payload off a random known node. Default 1.
    pub echo: u32,
    /// Claim a random known node (cross-signed node claims). Default 1.
    pub claim: u32,
}

impl Default for TaskWeights {
    fn default() -> Self {
        TaskWeights {
            ping: 4,
            lookup: 3,
            connect: 2,
            echo: 1,
            claim: 1,
        }
    }
}

/// Why a `--task-weights` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseWeightsError {
    /// A part is not a whole number.
    #[error("--task-weights {0:?}: expected whole numbers")]
    NotNumbers(String),
    /// Not four or five parts.
    #[error(
        "--task-weights {0:?}: expected four or five numbers: ping,lookup,connect,echo[,claim]"
    )]
    Count(String),
}

impl FromStr for TaskWeights {
    type Err = ParseWeightsError;

    /// `ping,lookup,connect,echo[,claim]`, e.g. `4,3,2,1,1` (spaces around numbers
    /// allowed); a missing claim weight is 0.
    fn from_str(s: &str) -> Result<Self, ParseWeightsError> {
        let parts: Vec<u32> = s
            .split(',')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| ParseWeightsError::NotNumbers(s.to_string()))?;
        let (ping, lookup, connect, echo, claim) = match parts[..] {
            [p, l, c, e] => (p, l, c, e, 0),
            [p, l, c, e, cl] => (p, l, c, e, cl),
            _ => return Err(ParseWeightsError::Count(s.to_string())),
        };
        Ok(TaskWeights {
            ping,
            lookup,
            connect,
            echo,
            claim,
        })
    }
}

impl fmt::Display for TaskWeights {
    /// The `--task-weights` spelling: `ping,lookup,connect,echo,claim`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{},{}",
            self.ping, self.lookup, self.connect, self.echo, self.claim
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_spelling_round_trips() {
        let w: TaskWeights = "4, 3,2 ,1, 1".parse().expect("five numbers");
        assert_eq!(w, TaskWeights::default());
        assert_eq!(w.to_string(), "4,3,2,1,1");
        let four: TaskWeights = "4,3,2,1".parse().expect("four numbers");
        assert_eq!(four.claim, 0, "no claim weight: no claims");
        let w = TaskWeights {
            ping: 0,
            lookup: 7,
            connect: 1_000_000,
            echo: 2,
            claim: 3,
        };
        assert_eq!(w.to_string().parse::<TaskWeights>(), Ok(w));
        assert!(matches!(
            "1,2,3".parse::<TaskWeights>(),
            Err(ParseWeightsError::Count(_))
        ));
        assert!(matches!(
            "1,2,x,4".parse::<TaskWeights>(),
            Err(ParseWeightsError::NotNumbers(_))
        ));
        assert!("-1,2,3,4".parse::<TaskWeights>().is_err());
    }

    #[test]
    fn yaml_style_maps_default_missing_weights_and_refuse_unknown_ones() {
        let w: TaskWeights = serde_json::from_str(r#"{"ping": 9}"#).expect("partial");
        assert_eq!(
            w,
            TaskWeights {
                ping: 9,
                ..TaskWeights::default()
            }
        );
        assert!(serde_json::from_str::<TaskWeights>(r#"{"pong": 1}"#).is_err());
    }
}

//! Named resilience policies (`config/resilience.yaml`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::duration::parse_duration;
use crate::error::{yaml_error, Errors, Location, ValidationErrors};

/// The policies this build ships (the same text as `config/resilience.yaml`).
pub const BUILTIN_RESILIENCE_YAML: &str = include_str!("../../config/resilience.yaml");

/// How the delay between retries grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// delay = initial × 2ⁿ
    Exponential,
    /// delay = initial × (n + 1)
    Linear,
    /// delay = initial
    Constant,
}

/// A validated resilience policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// How delays grow.
    pub backoff: Backoff,
    /// First delay.
    pub initial_delay: Duration,
    /// Cap on any delay.
    pub max_delay: Duration,
    /// Randomise delays.
    pub jitter: bool,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Circuit breaker: (failures to open, time before a half-open probe, probes).
    pub circuit_breaker: Option<(u32, Duration, u32)>,
    /// Rate limit: (requests per second, burst).
    pub rate_limit: Option<(f64, u32)>,
    /// The longest one call may take, retries and their delays included
    /// (`None`: bounded by the retries, timeouts and `max_delay` alone).
    pub deadline: Option<Duration>,
}

/// All named policies of a resilience file.
#[derive(Clone, Debug)]
pub struct Policies {
    /// By name.
    pub by_name: BTreeMap<String, Policy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    policies: BTreeMap<String, Spanned<RawPolicy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    retries: Option<RawRetries>,
    timeout: Spanned<String>,
    #[serde(default)]
    circuit_breaker: Option<RawBreaker>,
    #[serde(default)]
    rate_limit: Option<RawRate>,
    #[serde(default)]
    deadline: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetries {
    max_retries: u32,
    backoff: Spanned<String>,
    initial_delay: Spanned<String>,
    #[serde(default)]
    max_delay: Option<Spanned<String>>,
    #[serde(default)]
    jitter: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failure_threshold: Spanned<u32>,
    reset_timeout: Spanned<String>,
    #[serde(default = "one")]
    half_open_probes: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    per_second: Spanned<f64>,
    #[serde(default = "one")]
    burst: u32,
}

/// Parses a duration value, recording an error (and using zero) when it is not one.
fn duration(errors: &mut Errors, file: &str, policy: &str, s: &Spanned<String>, what: &str) -> Duration {
    parse_duration(&s.value).unwrap_or_else(|| {
        errors.push(
            Location::new(file, &s.referenced),
            Some(policy),
            format!("policy `{policy}`: {what} `{}` is not a duration (e.g. 500ms, 30s, 5m)", s.value),
        );
        Duration::ZERO
    })
}

fn one() -> u32 {
    1
}

impl Policies {
    /// The policies compiled into this build.
    pub fn builtin() -> Policies {
        Policies::from_yaml_str("config/resilience.yaml", BUILTIN_RESILIENCE_YAML)
            .expect("the built-in config/resilience.yaml is valid (checked by its unit test)")
    }

    /// Reads and validates a resilience file.
    pub fn from_path(path: &std::path::Path) -> Result<Policies, ValidationErrors> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Policies::from_yaml_str(&file, &text),
            Err(e) => Err(ValidationErrors(vec![crate::TopologyError {
                location: Location { file, line: 0, column: 0 },
                name: None,
                message: format!("cannot read the file: {e}"),
            }])),
        }
    }

    /// Validates a resilience file's text; `file` names it in errors.
    pub fn from_yaml_str(file: &str, text: &str) -> Result<Policies, ValidationErrors> {
        let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| yaml_error(file, &e))?;
        let mut errors = Errors::default();
        let mut by_name = BTreeMap::new();
        for (name, raw) in raw.policies {
            let at = |l: &serde_saphyr::Location| Location::new(file, l);
            let policy_raw = &raw.value;
            let timeout = duration(&mut errors, file, &name, &policy_raw.timeout, "timeout");
            let deadline = policy_raw.deadline.as_ref().map(|d| duration(&mut errors, file, &name, d, "deadline"));
            let (max_retries, backoff, initial_delay, max_delay, jitter) = match &policy_raw.retries {
                None => (0, Backoff::Constant, Duration::ZERO, Duration::ZERO, false),
                Some(r) => {
                    let initial = duration(&mut errors, file, &name, &r.initial_delay, "initial_delay");
                    let max = r
                        .max_delay
                        .as_ref()
                        .map(|m| duration(&mut errors, file, &name, m, "max_delay"))
                        .unwrap_or(Duration::from_secs(60));
                    let backoff = match r.backoff.value.as_str() {
                        "exponential" => Backoff::Exponential,
                        "linear" => Backoff::Linear,
                        "constant" => Backoff::Constant,
                        other => {
                            errors.push(
                                at(&r.backoff.referenced),
                                Some(&name),
                                format!(
                                    "policy `{name}`: backoff `{other}` is not one of exponential | linear | constant"
                                ),
                            );
                            Backoff::Constant
                        }
                    };
                    (r.max_retries, backoff, initial, max, r.jitter)
                }
            };
            let circuit_breaker = policy_raw.circuit_breaker.as_ref().map(|b| {
                if b.failure_threshold.value == 0 {
                    errors.push(
                        at(&b.failure_threshold.referenced),
                        Some(&name),
                        format!("policy `{name}`: failure_threshold must be ≥ 1"),
                    );
                }
                (
                    b.failure_threshold.value,
                    duration(&mut errors, file, &name, &b.reset_timeout, "reset_timeout"),
                    b.half_open_probes.max(1),
                )
            });
            let rate_limit = policy_raw.rate_limit.as_ref().map(|r| {
                let rate = r.per_second.value;
                if !(rate.is_finite() && rate > 0.0) {
                    errors.push(
                        at(&r.per_second.referenced),
                        Some(&name),
                        format!("policy `{name}`: per_second must be a number > 0"),
                    );
                }
                (rate, r.burst.max(1))
            });
            by_name.insert(
                name.clone(),
                Policy {
                    name,
                    max_retries,
                    backoff,
                    initial_delay,
                    max_delay,
                    jitter,
                    timeout,
                    circuit_breaker,
                    rate_limit,
                    deadline,
                },
            );
        }
        if !by_name.contains_key("default") {
            errors.push(
                Location { file: file.to_string(), line: 1, column: 1 },
                Some("default"),
                "no policy named `default` (stages without `policy:` use it)".into(),
            );
        }
        errors.finish(Policies { by_name })
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.by_name.get(name)
    }

    /// The names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policies_match_the_design() {
        let p = Policies::builtin();
        let default = p.get("default").unwrap();
        assert_eq!(default.max_retries, 3);
        assert_eq!(default.backoff, Backoff::Exponential);
        assert_eq!(default.timeout, Duration::from_secs(30));
        let gpu = p.get("gpu-bound").unwrap();
        assert_eq!(gpu.max_retries, 1);
        assert_eq!(gpu.circuit_breaker, Some((5, Duration::from_secs(60), 1)));
        assert_eq!(gpu.timeout, Duration::from_secs(60));
        let polite = p.get("polite-api").unwrap();
        assert_eq!(polite.max_retries, 10);
        assert_eq!(polite.backoff, Backoff::Linear);
        assert_eq!(polite.timeout, Duration::from_secs(10));
        assert_eq!(polite.rate_limit.map(|r| r.0), Some(5.0));
    }

    #[test]
    fn bad_policy_values_are_all_reported_with_lines() {
        let text = "policies:\n  default:\n    timeout: soon\n    retries: { max_retries: 2, backoff: fibonacci, initial_delay: 1s }\n  other:\n    timeout: 1s\n    rate_limit: { per_second: 0 }\n";
        let errors = Policies::from_yaml_str("r.yaml", text).unwrap_err().0;
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].location.line, 3);
        assert!(errors[0].message.contains("soon"));
        assert_eq!(errors[1].location.line, 4);
        assert!(errors[1].message.contains("fibonacci"));
        assert_eq!(errors[2].location.line, 7);
        assert_eq!(errors[2].name.as_deref(), Some("other"));
    }
}

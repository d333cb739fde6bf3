//! A stage's resilience policy at run time.
//!
//! [`Resilience::call`] runs one operation under a named [`Policy`] from
//! `config/resilience.yaml`:
//!
//! 1. the **rate limit** (`governor`, a token bucket of `per_second` with a
//!    `burst`) is waited for before every attempt, retries included;
//! 2. the **circuit breaker** lets the attempt through, or fails it at once
//!    with an [`ErrorClass::Unavailable`] `circuit_open` error;
//! 3. the attempt runs under the policy's **timeout**; running out of time
//!    is a [`ErrorClass::Transient`] `timeout`;
//! 4. a transient failure is **retried** (`backon`) after the policy's delay
//!    (exponential, linear or constant, capped by `max_delay`, optionally
//!    jittered, and never shorter than a `Retry-After` the error carries,
//!    though a `Retry-After` never stretches a delay past `max_delay`), up
//!    to `max_retries` times. Permanent and unavailable failures are never
//!    retried;
//! 5. the whole call, retries and delays included, ends by the policy's
//!    `deadline` (when it has one) as a transient `deadline` failure that
//!    is not retried: no server can park a document for longer.
//!
//! The breaker counts transient and unavailable failures only: a 404 says
//! the service is up. It opens after `failure_threshold` of them in a row,
//! fails calls fast for `reset_timeout`, then lets `half_open_probes` calls
//! through: as many successes close it, one failure opens it again.
//!
//! One `Resilience` serves a stage in a whole process (every worker), so
//! the rate limit and the breaker are per stage and process.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::Retryable;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use medkg_topology::{Backoff, Policy};

use crate::{ErrorClass, StageError};

/// A circuit breaker's state, as the `medkg_circuit_breaker_state` gauge shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through (0).
    Closed,
    /// Calls fail fast (1).
    Open,
    /// A few probe calls go through (2).
    HalfOpen,
}

impl BreakerState {
    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    /// The state's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What a call under a policy reports as it goes (events, metrics, ledger).
/// Every method has a no-op default.
pub trait Observer: Send + Sync {
    /// Attempt `attempt` (from 1) is about to run.
    fn attempt(&self, _attempt: u32) {}
    /// A transient failure will be retried after `delay`.
    fn retrying(&self, _attempt: u32, _error: &StageError, _delay: Duration) {}
    /// The rate limiter held the attempt back for `waited`.
    fn rate_limited(&self, _waited: Duration) {}
    /// The stage's breaker changed state.
    fn breaker(&self, _state: BreakerState) {}
}

/// Reports nothing.
pub struct Silent;
impl Observer for Silent {}

/// The outcome of a call: its value or error, and how many attempts it took.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The value, or the last attempt's error.
    pub result: Result<T, StageError>,
    /// Attempts made (1 when the first one settled it; 0 when the breaker
    /// refused the call before any attempt).
    pub attempts: u32,
}

/// A policy ready to run calls: its limiter and its breaker.
pub struct Resilience {
    policy: Policy,
    limiter: Option<DefaultDirectRateLimiter>,
    breaker: Option<Breaker>,
}

impl std::fmt::Debug for Resilience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilience").field("policy", &self.policy.name).finish()
    }
}

impl Resilience {
    /// The runtime of `policy`.
    pub fn new(policy: &Policy) -> Resilience {
        let limiter = policy.rate_limit.and_then(|(per_second, burst)| {
            let period = Duration::from_secs_f64(1.0 / per_second.max(1e-6));
            let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?);
            Some(RateLimiter::direct(quota))
        });
        let breaker = policy.circuit_breaker.map(|(threshold, reset, probes)| Breaker::new(threshold, reset, probes));
        Resilience { policy: policy.clone(), limiter, breaker }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The breaker's state (closed when the policy has none).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.as_ref().map_or(BreakerState::Closed, Breaker::state)
    }

    /// The delays between attempts the policy allows, without jitter.
    pub fn delays(&self) -> Vec<Duration> {
        delays(&self.policy, false)
    }

    /// Runs `operation` (given the attempt number, from 1) under the policy.
    pub async fn call<T, F, Fut>(&self, observer: &dyn Observer, operation: F) -> Outcome<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StageError>>,
    {
        let attempts = AtomicU32::new(0);
        // Taken by one attempt at a time; the future is built only once the
        // attempt is admitted. (Sync types: the call may run on any runtime thread.)
        let operation = Mutex::new(operation);
        let max_delay = self.policy.max_delay;
        let retried = (|| self.attempt(observer, &attempts, &operation))
            .retry(delays(&self.policy, self.policy.jitter).into_iter())
            .sleep(tokio::time::sleep)
            .when(|e: &StageError| e.class == ErrorClass::Transient)
            // A server's Retry-After is a floor under the policy's delay, and
            // the policy's max_delay a ceiling over both.
            .adjust(move |e: &StageError, delay| {
                delay.map(|d| {
                    let asked = e.retry_after.map_or(d, |after| after.max(d));
                    if max_delay.is_zero() {
                        asked
                    } else {
                        asked.min(max_delay.max(d))
                    }
                })
            })
            .notify(|e: &StageError, delay| observer.retrying(attempts.load(Ordering::SeqCst), e, delay));
        let result = match self.policy.deadline {
            None => retried.await,
            Some(deadline) => tokio::time::timeout(deadline, retried).await.unwrap_or_else(|_| {
                Err(StageError::transient(
                    "deadline",
                    format!(
                        "not done within the deadline of {deadline:?} (policy `{}`, {} attempts)",
                        self.policy.name,
                        attempts.load(Ordering::SeqCst)
                    ),
                ))
            }),
        };
        Outcome { result, attempts: attempts.load(Ordering::SeqCst) }
    }

    /// One attempt: rate limit, breaker, then the operation under the timeout.
    async fn attempt<T, F, Fut>(
        &self,
        observer: &dyn Observer,
        attempts: &AtomicU32,
        operation: &Mutex<F>,
    ) -> Result<T, StageError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, StageError>>,
    {
        if let Some(limiter) = &self.limiter {
            let asked = Instant::now();
            limiter.until_ready().await;
            observer.rate_limited(asked.elapsed());
        }
        if let Some(breaker) = &self.breaker {
            breaker.admit(observer)?;
        }
        let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        observer.attempt(n);
        let run = {
            let mut operation = operation.lock().unwrap_or_else(|p| p.into_inner());
            (*operation)(n)
        };
        let result = match tokio::time::timeout(self.policy.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(StageError::transient(
                "timeout",
                format!("no answer within {:?} (policy `{}`)", self.policy.timeout, self.policy.name),
            )),
        };
        if let Some(breaker) = &self.breaker {
            let failed = matches!(&result, Err(e) if e.class != ErrorClass::Permanent);
            breaker.record(observer, !failed);
        }
        result
    }
}

/// The delays before retry 1, 2, ... of a policy (`max_retries` of them).
fn delays(policy: &Policy, jitter: bool) -> Vec<Duration> {
    (0..policy.max_retries)
        .map(|n| {
            let base = match policy.backoff {
                Backoff::Exponential => policy.initial_delay.saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX)),
                Backoff::Linear => policy.initial_delay.saturating_mul(n + 1),
                Backoff::Constant => policy.initial_delay,
            };
            let capped = if policy.max_delay.is_zero() { base } else { base.min(policy.max_delay) };
            // Jitter: anywhere between half the delay and all of it.
            if jitter {
                capped.mul_f64(0.5 + fastrand::f64() * 0.5)
            } else {
                capped
            }
        })
        .collect()
}

/// A closed / open / half-open circuit breaker.
struct Breaker {
    threshold: u32,
    reset: Duration,
    probes: u32,
    state: Mutex<BreakerInner>,
}

#[derive(Debug)]
enum BreakerInner {
    /// Consecutive failures so far.
    Closed(u32),
    /// Fails fast until then.
    Open(Instant),
    /// Probes let through and probes that succeeded.
    HalfOpen { admitted: u32, succeeded: u32 },
}

impl Breaker {
    fn new(threshold: u32, reset: Duration, probes: u32) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            reset,
            probes: probes.max(1),
            state: Mutex::new(BreakerInner::Closed(0)),
        }
    }

    fn state(&self) -> BreakerState {
        match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            BreakerInner::Closed(_) => BreakerState::Closed,
            BreakerInner::Open(_) => BreakerState::Open,
            BreakerInner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Lets a call through, or refuses it while open (or while the
    /// half-open probes are all out).
    fn admit(&self, observer: &dyn Observer) -> Result<(), StageError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let BreakerInner::Open(until) = *state {
            if Instant::now() < until {
                return Err(self.refusal(until));
            }
            *state = BreakerInner::HalfOpen { admitted: 0, succeeded: 0 };
            observer.breaker(BreakerState::HalfOpen);
        }
        match &mut *state {
            BreakerInner::HalfOpen { admitted, .. } if *admitted >= self.probes => Err(StageError::unavailable(
                "circuit_open",
                "the circuit breaker is half-open and its probes are all out; call not attempted",
            )),
            BreakerInner::HalfOpen { admitted, .. } => {
                *admitted += 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn refusal(&self, until: Instant) -> StageError {
        StageError::unavailable(
            "circuit_open",
            format!(
                "the circuit breaker is open ({} failures in a row); call not attempted, next probe in {:?}",
                self.threshold,
                until.saturating_duration_since(Instant::now())
            ),
        )
    }

    fn record(&self, observer: &dyn Observer, success: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let open = || BreakerInner::Open(Instant::now() + self.reset);
        let next = match (&mut *state, success) {
            (BreakerInner::Closed(failures), true) => {
                *failures = 0;
                None
            }
            (BreakerInner::Closed(failures), false) => {
                *failures += 1;
                (*failures >= self.threshold).then(|| (open(), BreakerState::Open))
            }
            (BreakerInner::HalfOpen { succeeded, .. }, true) => {
                *succeeded += 1;
                (*succeeded >= self.probes).then_some((BreakerInner::Closed(0), BreakerState::Closed))
            }
            (BreakerInner::HalfOpen { .. }, false) => Some((open(), BreakerState::Open)),
            // A call admitted before the breaker opened: it changes nothing.
            (BreakerInner::Open(_), _) => None,
        };
        if let Some((inner, reported)) = next {
            *state = inner;
            drop(state);
            observer.breaker(reported);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn policy(retries: u32, backoff: Backoff) -> Policy {
        Policy {
            name: "test".into(),
            max_retries: retries,
            backoff,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(25),
            jitter: false,
            timeout: Duration::from_millis(200),
            circuit_breaker: None,
            rate_limit: None,
            deadline: None,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime")
    }

    #[test]
    fn delays_follow_the_backoff_and_the_cap() {
        let ms = |v: Vec<Duration>| v.into_iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(ms(delays(&policy(4, Backoff::Exponential), false)), [10, 20, 25, 25]);
        assert_eq!(ms(delays(&policy(4, Backoff::Linear), false)), [10, 20, 25, 25]);
        assert_eq!(ms(delays(&policy(3, Backoff::Constant), false)), [10, 10, 10]);
        let p = policy(50, Backoff::Exponential);
        for (jittered, base) in delays(&p, true).into_iter().zip(delays(&p, false)) {
            assert!(jittered >= base / 2 && jittered <= base, "{jittered:?} for {base:?}");
        }
    }

    #[derive(Default)]
    struct Log {
        retries: Mutex<Vec<(u32, String, Duration)>>,
        states: Mutex<Vec<BreakerState>>,
    }
    impl Observer for Log {
        fn retrying(&self, attempt: u32, error: &StageError, delay: Duration) {
            self.retries.lock().unwrap().push((attempt, error.kind.clone(), delay));
        }
        fn breaker(&self, state: BreakerState) {
            self.states.lock().unwrap().push(state);
        }
    }

    #[test]
    fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let rt = runtime();
        let resilience = Resilience::new(&policy(3, Backoff::Exponential));
        let log = Log::default();
        let outcome = rt.block_on(resilience.call(&log, |n| async move {
            if n < 3 {
                Err(StageError::transient("http_503", "busy"))
            } else {
                Ok(n)
            }
        }));
        assert_eq!(outcome.result, Ok(3));
        assert_eq!(outcome.attempts, 3);
        let retries = log.retries.lock().unwrap().clone();
        assert_eq!(
            retries,
            [(1, "http_503".into(), Duration::from_millis(10)), (2, "http_503".into(), Duration::from_millis(20))]
        );

        let outcome: Outcome<()> =
            rt.block_on(resilience.call(&Silent, |_| async { Err(StageError::permanent("http_404", "gone")) }));
        assert_eq!((outcome.attempts, outcome.result.unwrap_err().kind.as_str()), (1, "http_404"));

        let outcome: Outcome<()> =
            rt.block_on(resilience.call(&Silent, |_| async { Err(StageError::transient("http_503", "busy")) }));
        assert_eq!(outcome.attempts, 4, "the first attempt and three retries");
    }

    #[test]
    fn retry_after_is_a_floor_under_the_delay() {
        let rt = runtime();
        let resilience = Resilience::new(&policy(1, Backoff::Constant));
        let log = Log::default();
        let outcome =
            rt.block_on(resilience.call(&log, |n| async move {
                match n {
                    1 => Err(StageError::transient("http_429", "slow down")
                        .with_retry_after(Some(Duration::from_millis(120)))),
                    _ => Ok(()),
                }
            }));
        assert_eq!((outcome.result, outcome.attempts), (Ok(()), 2));
        // Asked for 120 ms; the policy's max_delay (25 ms) is the ceiling.
        assert_eq!(log.retries.lock().unwrap()[0].2, Duration::from_millis(25));
        let mut p = policy(1, Backoff::Constant);
        p.max_delay = Duration::from_millis(500);
        let resilience = Resilience::new(&p);
        let log = Log::default();
        let outcome =
            rt.block_on(resilience.call(&log, |n| async move {
                match n {
                    1 => Err(StageError::transient("http_429", "slow down")
                        .with_retry_after(Some(Duration::from_secs(3600)))),
                    _ => Ok(()),
                }
            }));
        assert_eq!(outcome.result, Ok(()));
        assert_eq!(log.retries.lock().unwrap()[0].2, Duration::from_millis(500), "an hour's Retry-After, capped");
    }

    #[test]
    fn the_deadline_ends_a_call_and_its_retries() {
        let rt = runtime();
        let mut p = policy(100, Backoff::Constant);
        p.deadline = Some(Duration::from_millis(150));
        let resilience = Resilience::new(&p);
        let began = Instant::now();
        let outcome: Outcome<()> =
            rt.block_on(resilience.call(&Silent, |_| async { Err(StageError::transient("http_503", "busy")) }));
        let error = outcome.result.unwrap_err();
        assert_eq!((error.kind.as_str(), error.class), ("deadline", ErrorClass::Transient));
        assert!(outcome.attempts >= 2 && outcome.attempts < 100, "{} attempts", outcome.attempts);
        assert!(began.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_slow_attempt_times_out_as_transient() {
        let rt = runtime();
        let resilience = Resilience::new(&policy(1, Backoff::Constant));
        let outcome: Outcome<()> = rt.block_on(resilience.call(&Silent, |_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        }));
        let error = outcome.result.unwrap_err();
        assert_eq!((error.kind.as_str(), error.class, outcome.attempts), ("timeout", ErrorClass::Transient, 2));
    }

    #[test]
    fn the_breaker_opens_fails_fast_half_opens_and_closes() {
        let rt = runtime();
        let mut p = policy(0, Backoff::Constant);
        p.circuit_breaker = Some((3, Duration::from_millis(100), 1));
        let resilience = Resilience::new(&p);
        let log = Log::default();
        let calls = Arc::new(AtomicU32::new(0));
        let failing = |calls: Arc<AtomicU32>| {
            move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(StageError::transient("http_503", "down")) }
            }
        };
        for _ in 0..3 {
            rt.block_on(resilience.call(&log, failing(calls.clone())));
        }
        assert_eq!(resilience.breaker_state(), BreakerState::Open);
        let refused = rt.block_on(resilience.call(&log, failing(calls.clone())));
        assert_eq!(refused.result.unwrap_err().kind, "circuit_open");
        assert_eq!((refused.attempts, calls.load(Ordering::SeqCst)), (0, 3), "short-circuited");
        std::thread::sleep(Duration::from_millis(120));
        // The probe fails: open again.
        rt.block_on(resilience.call(&log, failing(calls.clone())));
        assert_eq!(resilience.breaker_state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(120));
        let ok = rt.block_on(resilience.call(&log, |_| async { Ok(7) }));
        assert_eq!(ok.result, Ok(7));
        assert_eq!(resilience.breaker_state(), BreakerState::Closed);
        use BreakerState::*;
        assert_eq!(*log.states.lock().unwrap(), [Open, HalfOpen, Open, HalfOpen, Closed]);
        // Permanent failures say the service is up: they never open it.
        for _ in 0..5 {
            rt.block_on(resilience.call(&log, |_| async { Err::<(), _>(StageError::permanent("http_404", "")) }));
        }
        assert_eq!(resilience.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn the_rate_limit_spaces_attempts() {
        let rt = runtime();
        let mut p = policy(0, Backoff::Constant);
        p.rate_limit = Some((50.0, 1));
        let resilience = Resilience::new(&p);
        let began = Instant::now();
        for _ in 0..6 {
            rt.block_on(resilience.call(&Silent, |_| async { Ok(()) })).result.unwrap();
        }
        // Five gaps of 20 ms at least (the first call passes at once).
        assert!(began.elapsed() >= Duration::from_millis(95), "{:?}", began.elapsed());
    }
}

//! The lease core: every decision of a [`Session`](crate::Session), with no I/O.
//!
//! [`LeaseCore`] takes each input as a value (a grant answered or failed, a
//! renewal, the keepalive stream lost, a timer, a reset, a close), with the
//! time now passed in, and queues [`LeaseAction`]s for its driver (the
//! session's task in `session/mod.rs`, or the simulator) to execute. It never
//! awaits, reads a clock, spawns or locks.
//!
//! # When is a lease lost?
//!
//! etcd expires a lease `TTL` seconds after the leader last renewed it, and it
//! renews it only after our request reached it. So a lease granted or renewed
//! in answer to a request we sent at `sent_at` lives on etcd at least until
//! `sent_at + TTL`. The core takes its lease for lost at
//!
//! ```text
//! deadline = sent_at(last answered grant or keepalive) + TTL - margin,   margin = clamp(TTL / 6, 100 ms, 2 s)
//! ```
//!
//! and reports the loss then, whether or not it has heard anything, so the
//! holder steps down *before* etcd can expire the lease and let another
//! candidate win. The margin absorbs what sits between the deadline and the
//! holder acting on it: a late timer, the observer's own work, and clock-rate
//! differences between this machine and etcd's leader (ppm, far below it).
//! Keepalives go every `TTL / 3`, so two may be lost before the deadline comes.
//!
//! # Transitions
//!
//! One method per input. The rows below are read by a unit test, which puts
//! a core in each row's phase, applies the input and checks the next phase
//! and the actions, in order.
//!
//! | phase | input | next phase | actions |
//! |---|---|---|---|
//! | `Paused` | `start` | `Granting` | `Grant` |
//! | `Paused` | `on_timer(due)` | `Granting` | `Grant` |
//! | `Paused` | `on_timer(early)` | `Paused` | |
//! | `Paused` | `on_reset` | `Granting` | `Grant` |
//! | `Paused` | `on_close` | `Closed` | |
//! | `Granting` | `on_granted` | `Holding` | `KeepAlive Gained` |
//! | `Granting` | `on_granted(late)` | `Granting` | `KeepAlive Gained StopKeepAlive Lost Revoke Grant` |
//! | `Granting` | `on_grant_failed` | `Paused` | `Failed` |
//! | `Granting` | `on_reset` | `Granting` | `RevokeGrant Grant` |
//! | `Granting` | `on_close` | `Closed` | `RevokeGrant` |
//! | `Holding` | `on_renewed` | `Holding` | |
//! | `Holding` | `on_renewed(ttl 0)` | `Granting` | `StopKeepAlive Lost Revoke Grant` |
//! | `Holding` | `on_timer(due)` | `Granting` | `StopKeepAlive Lost Revoke Grant` |
//! | `Holding` | `on_timer(early)` | `Holding` | |
//! | `Holding` | `on_keepalive_failed` | `Granting` | `StopKeepAlive Lost Revoke Grant` |
//! | `Holding` | `on_reset` | `Granting` | `StopKeepAlive Reset Revoke Grant` |
//! | `Holding` | `on_close` | `Closed` | `StopKeepAlive Revoke` |
//! | `Closed` | `on_reset` | `Closed` | |
//! | `Closed` | `on_timer(due)` | `Closed` | |
//!
//! A renewal only ever moves the deadline later; a late answer (a grant
//! whose deadline passed while it travelled) is lost at once.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::sabotage::Sabotage;

/// Retry after a failed grant: from 500 ms, doubling, up to the TTL or
/// [`MAX_BACKOFF`], whichever is shorter.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The longest pause between grants: a service started before etcd holds a
/// lease within 3 s of etcd coming up, whatever its TTL.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The safety margin of the deadline rule in the module docs.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 6).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Where a session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeasePhase {
    /// Waiting until `until` to ask for a lease (before the start, or after
    /// a failed grant).
    Paused {
        /// When to grant again.
        until: Instant,
    },
    /// A LeaseGrant is on its way.
    Granting,
    /// Holding lease `id`, granted for `ttl` s; taken for lost at `deadline`
    /// unless renewed.
    Holding {
        /// The lease.
        id: i64,
        /// Its TTL as etcd granted it, in seconds.
        ttl: i64,
        /// When we take it for lost (see the module docs).
        deadline: Instant,
    },
    /// Closed: no more leases.
    Closed,
}

/// What the core asks its driver to do, in order.
#[derive(Clone, Debug)]
pub enum LeaseAction {
    /// Send a LeaseGrant for `ttl` seconds, and say when it went out.
    Grant {
        /// The TTL to ask for.
        ttl: i64,
    },
    /// Renew `id` every `ttl / 3`, from `granted_at`, on the shared stream.
    KeepAlive {
        /// The lease.
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
        /// When the grant was sent.
        granted_at: Instant,
    },
    /// Stop renewing `id`.
    StopKeepAlive {
        /// The lease.
        id: i64,
    },
    /// We hold lease `id` now: tell the owner.
    Gained {
        /// The lease.
        id: i64,
    },
    /// A grant failed: tell the owner (no lease).
    Failed {
        /// Why.
        error: Error,
    },
    /// Lease `id` is lost: tell the owner now. etcd may expire it from
    /// `etcd_may_expire_at` on.
    Lost {
        /// The lease.
        id: i64,
        /// Why.
        error: Error,
        /// The earliest moment etcd may expire the lease, on our clock.
        etcd_may_expire_at: Instant,
    },
    /// The owner reset the session: tell it the lease is given up.
    Reset {
        /// The lease given up.
        id: i64,
    },
    /// Revoke `id` in the background, retrying until `by`.
    Revoke {
        /// The lease.
        id: i64,
        /// Give up then; etcd expires it at its TTL.
        by: Instant,
    },
    /// Let the grant in flight finish (until `by`) and revoke what it got.
    RevokeGrant {
        /// Give up then.
        by: Instant,
    },
}

/// The decisions of one session (see the module docs).
#[derive(Debug)]
pub struct LeaseCore {
    /// The TTL to ask for, in seconds.
    ttl: i64,
    /// The pause after the next failed grant.
    backoff: Duration,
    phase: LeasePhase,
    actions: VecDeque<LeaseAction>,
    sabotage: Sabotage,
}

impl LeaseCore {
    /// A session asking for leases of `ttl` seconds, not started yet.
    pub fn new(ttl: i64, now: Instant) -> LeaseCore {
        LeaseCore::with_sabotage(ttl, now, Sabotage::None)
    }

    /// As [`new`](Self::new), broken on purpose as `sabotage` says.
    pub fn with_sabotage(ttl: i64, now: Instant, sabotage: Sabotage) -> LeaseCore {
        LeaseCore {
            ttl,
            backoff: FIRST_BACKOFF,
            phase: LeasePhase::Paused { until: now },
            actions: VecDeque::new(),
            sabotage,
        }
    }

    /// Where the session stands.
    pub fn phase(&self) -> &LeasePhase {
        &self.phase
    }

    /// The lease held, if any.
    pub fn lease(&self) -> Option<i64> {
        match self.phase {
            LeasePhase::Holding { id, .. } => Some(id),
            _ => None,
        }
    }

    /// When [`on_timer`](Self::on_timer) is due next.
    pub fn next_timer(&self) -> Option<Instant> {
        match self.phase {
            LeasePhase::Paused { until } => Some(until),
            LeasePhase::Holding { deadline, .. } => Some(deadline),
            LeasePhase::Granting | LeasePhase::Closed => None,
        }
    }

    /// The next action to execute, oldest first.
    pub fn poll_action(&mut self) -> Option<LeaseAction> {
        self.actions.pop_front()
    }

    /// Starts: asks for the first lease.
    pub fn start(&mut self, now: Instant) {
        let _ = now;
        if let LeasePhase::Paused { .. } = self.phase {
            self.grant();
        }
    }

    /// The grant sent at `sent_at` answered with lease `id` of `ttl` seconds.
    pub fn on_granted(&mut self, now: Instant, sent_at: Instant, id: i64, ttl: i64) {
        if self.phase != LeasePhase::Granting {
            return;
        }
        self.backoff = FIRST_BACKOFF;
        let deadline = self.deadline(now, sent_at, ttl);
        self.phase = LeasePhase::Holding { id, ttl, deadline };
        self.push(LeaseAction::KeepAlive {
            id,
            ttl,
            granted_at: sent_at,
        });
        self.push(LeaseAction::Gained { id });
        // An answer that came too late to use: lost at once.
        self.on_timer(now);
    }

    /// The grant failed: pause, then ask again.
    pub fn on_grant_failed(&mut self, now: Instant, error: Error) {
        if self.phase != LeasePhase::Granting {
            return;
        }
        self.phase = LeasePhase::Paused {
            until: now + self.backoff,
        };
        self.backoff = (self.backoff * 2)
            .min(Duration::from_secs(self.ttl as u64))
            .min(MAX_BACKOFF);
        self.push(LeaseAction::Failed { error });
    }

    /// etcd renewed lease `id` for `ttl` seconds, in answer to a keepalive
    /// sent at `sent_at`; `ttl <= 0` means etcd no longer has the lease.
    pub fn on_renewed(&mut self, now: Instant, id: i64, sent_at: Instant, ttl: i64) {
        let LeasePhase::Holding {
            id: held, deadline, ..
        } = self.phase
        else {
            return;
        };
        if held != id {
            return;
        }
        if ttl <= 0 {
            return self.lose(now, Error::LeaseExpired { lease: id });
        }
        let renewed = self.deadline(now, sent_at, ttl);
        if let LeasePhase::Holding { deadline: d, .. } = &mut self.phase {
            *d = deadline.max(renewed);
        }
    }

    /// The keepalive stream carrying lease `id` failed: the lease is lost.
    pub fn on_keepalive_failed(&mut self, now: Instant, id: i64, error: Error) {
        if self.lease() == Some(id) {
            self.lose(now, error);
        }
    }

    /// Time passed: the lease's deadline, or the end of a pause.
    pub fn on_timer(&mut self, now: Instant) {
        match self.phase {
            LeasePhase::Paused { until } if now >= until => self.grant(),
            LeasePhase::Holding { id, deadline, .. } if now >= deadline => {
                self.lose(
                    now,
                    Error::LeaseDeadline {
                        lease: id,
                        ttl: self.ttl,
                    },
                );
            }
            _ => {}
        }
    }

    /// The owner gives the lease up and wants a new one.
    pub fn on_reset(&mut self, now: Instant) {
        let by = now + self.ttl_duration();
        match self.phase {
            LeasePhase::Holding { id, .. } => {
                self.push(LeaseAction::StopKeepAlive { id });
                self.push(LeaseAction::Reset { id });
                self.push(LeaseAction::Revoke { id, by });
            }
            // A grant etcd may already have applied: revoke what it gets.
            LeasePhase::Granting => self.push(LeaseAction::RevokeGrant { by }),
            LeasePhase::Paused { .. } => {}
            LeasePhase::Closed => return,
        }
        self.grant();
    }

    /// Closing, to be done by `by`: give up the lease for good.
    pub fn on_close(&mut self, by: Instant) {
        match self.phase {
            LeasePhase::Holding { id, .. } => {
                self.push(LeaseAction::StopKeepAlive { id });
                self.push(LeaseAction::Revoke { id, by });
            }
            LeasePhase::Granting => self.push(LeaseAction::RevokeGrant { by }),
            LeasePhase::Paused { .. } | LeasePhase::Closed => {}
        }
        self.phase = LeasePhase::Closed;
    }

    fn grant(&mut self) {
        self.phase = LeasePhase::Granting;
        self.push(LeaseAction::Grant { ttl: self.ttl });
    }

    /// The lease is lost: say so, revoke it (it may still live on etcd, say
    /// the network hangs), and ask for a new one.
    fn lose(&mut self, now: Instant, error: Error) {
        let LeasePhase::Holding { id, deadline, .. } = self.phase else {
            return;
        };
        self.push(LeaseAction::StopKeepAlive { id });
        self.push(LeaseAction::Lost {
            id,
            error,
            etcd_may_expire_at: deadline + self.margin(self.ttl_duration()),
        });
        self.push(LeaseAction::Revoke {
            id,
            by: now + self.ttl_duration(),
        });
        self.grant();
    }

    /// When a lease renewed for `ttl` s by a request sent at `sent_at` is
    /// taken for lost (see the module docs).
    fn deadline(&self, now: Instant, sent_at: Instant, ttl: i64) -> Instant {
        let ttl = Duration::from_secs(ttl.max(1) as u64);
        let from = match self.sabotage {
            Sabotage::DeadlineFromAnswer => now,
            _ => sent_at,
        };
        from + ttl - self.margin(ttl)
    }

    fn margin(&self, ttl: Duration) -> Duration {
        match self.sabotage {
            Sabotage::ZeroMargin => Duration::ZERO,
            _ => safety_margin(ttl),
        }
    }

    fn ttl_duration(&self) -> Duration {
        Duration::from_secs(self.ttl as u64)
    }

    fn push(&mut self, action: LeaseAction) {
        self.actions.push_back(action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transition_table::{names, rows};

    const ID: i64 = 0x1234;
    const TTL: i64 = 6;

    fn t0() -> Instant {
        Instant::now()
    }

    fn name_of(phase: &LeasePhase) -> &'static str {
        match phase {
            LeasePhase::Paused { .. } => "Paused",
            LeasePhase::Granting => "Granting",
            LeasePhase::Holding { .. } => "Holding",
            LeasePhase::Closed => "Closed",
        }
    }

    fn drain(core: &mut LeaseCore) -> Vec<String> {
        names(std::iter::from_fn(|| core.poll_action()))
    }

    /// A core in `phase`, made by the inputs that lead there.
    fn in_phase(phase: &str, t0: Instant) -> LeaseCore {
        let mut core = LeaseCore::new(TTL, t0);
        match phase {
            "Paused" => {
                core.start(t0);
                core.on_grant_failed(t0, Error::StreamEnded { stream: "test" });
            }
            "Granting" => core.start(t0),
            "Holding" => {
                core.start(t0);
                core.on_granted(t0, t0, ID, TTL);
            }
            "Closed" => core.on_close(t0),
            other => panic!("no phase {other}"),
        }
        drain(&mut core);
        assert_eq!(name_of(core.phase()), phase);
        core
    }

    fn apply(core: &mut LeaseCore, input: &str, t0: Instant) {
        let s = Duration::from_secs;
        let error = || Error::StreamEnded { stream: "test" };
        match input {
            "start" => core.start(t0),
            "on_timer(due)" => core.on_timer(t0 + s(100)),
            "on_timer(early)" => core.on_timer(t0 + Duration::from_millis(1)),
            "on_granted" => core.on_granted(t0 + Duration::from_millis(10), t0, ID, TTL),
            "on_granted(late)" => core.on_granted(t0 + s(10), t0, ID, TTL),
            "on_grant_failed" => core.on_grant_failed(t0, error()),
            "on_renewed" => core.on_renewed(t0 + s(1), ID, t0 + s(1), TTL),
            "on_renewed(ttl 0)" => core.on_renewed(t0 + s(1), ID, t0 + s(1), 0),
            "on_keepalive_failed" => core.on_keepalive_failed(t0 + s(1), ID, error()),
            "on_reset" => core.on_reset(t0 + s(1)),
            "on_close" => core.on_close(t0 + s(1)),
            other => panic!("no input {other}"),
        }
    }

    #[test]
    fn every_row_of_the_transition_table_is_what_the_code_does() {
        let rows = rows(include_str!("core.rs"));
        assert!(rows.len() >= 19, "the table has {} rows", rows.len());
        let mut wrong = Vec::new();
        for [phase, input, next, actions] in rows {
            let t0 = t0();
            let mut core = in_phase(&phase, t0);
            apply(&mut core, &input, t0);
            let got_actions = drain(&mut core).join(" ");
            let got_next = name_of(core.phase());
            if got_next != next || got_actions != actions {
                wrong.push(format!(
                    "{phase} + {input}: table says {next} [{actions}], code does {got_next} [{got_actions}]"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn margin_is_a_sixth_of_the_ttl_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(safety_margin(s(6)), s(1));
        assert_eq!(
            safety_margin(Duration::from_millis(300)),
            Duration::from_millis(100)
        );
        assert_eq!(safety_margin(s(60)), s(2));
    }

    #[test]
    fn the_deadline_counts_from_the_send_not_the_answer() {
        let t0 = t0();
        let mut core = in_phase("Granting", t0);
        // Sent at t0, answered 2 s later: lost at t0 + TTL - margin.
        core.on_granted(t0 + Duration::from_secs(2), t0, ID, TTL);
        assert_eq!(core.next_timer(), Some(t0 + Duration::from_secs(5)));
        let mut broken = LeaseCore::with_sabotage(TTL, t0, Sabotage::DeadlineFromAnswer);
        broken.start(t0);
        broken.on_granted(t0 + Duration::from_secs(2), t0, ID, TTL);
        assert_eq!(broken.next_timer(), Some(t0 + Duration::from_secs(7)));
    }

    #[test]
    fn a_renewal_only_moves_the_deadline_later() {
        let t0 = t0();
        let mut core = in_phase("Holding", t0);
        let s = Duration::from_secs;
        core.on_renewed(t0 + s(2), ID, t0 + s(2), TTL);
        assert_eq!(core.next_timer(), Some(t0 + s(7)));
        // An older request's answer, arriving late, changes nothing.
        core.on_renewed(t0 + s(3), ID, t0 + s(1), TTL);
        assert_eq!(core.next_timer(), Some(t0 + s(7)));
        // Another lease's renewal is not ours.
        core.on_renewed(t0 + s(3), ID + 1, t0 + s(3), TTL);
        assert_eq!(core.next_timer(), Some(t0 + s(7)));
        assert!(drain(&mut core).is_empty());
    }

    #[test]
    fn a_renewal_answered_just_after_the_deadline_does_not_save_the_lease() {
        let t0 = t0();
        let mut core = in_phase("Holding", t0);
        let deadline = core.next_timer().expect("holding");
        // The timer fires first: lost, whatever answer is on its way.
        core.on_timer(deadline);
        assert_eq!(drain(&mut core)[..2], ["StopKeepAlive", "Lost"]);
        core.on_renewed(deadline + Duration::from_millis(1), ID, deadline, TTL);
        assert_eq!(core.phase(), &LeasePhase::Granting);
    }

    #[test]
    fn grants_back_off_from_500_ms_doubling_to_2_s() {
        let t0 = t0();
        let mut core = LeaseCore::new(30, t0);
        core.start(t0);
        let mut pauses = Vec::new();
        let mut now = t0;
        for _ in 0..5 {
            core.on_grant_failed(now, Error::StreamEnded { stream: "test" });
            let until = core.next_timer().expect("paused");
            pauses.push((until - now).as_millis());
            now = until;
            core.on_timer(now);
        }
        assert_eq!(pauses, [500, 1000, 2000, 2000, 2000]);
        // A granted lease starts the backoff over.
        core.on_granted(now, now, ID, 30);
        core.on_keepalive_failed(now, ID, Error::StreamEnded { stream: "test" });
        core.on_grant_failed(now, Error::StreamEnded { stream: "test" });
        assert_eq!(core.next_timer(), Some(now + FIRST_BACKOFF));
    }

    #[test]
    fn the_loss_says_when_etcd_may_expire_the_lease() {
        let t0 = t0();
        let mut core = in_phase("Holding", t0);
        core.on_timer(t0 + Duration::from_secs(5));
        let lost = std::iter::from_fn(|| core.poll_action()).find_map(|a| match a {
            LeaseAction::Lost {
                etcd_may_expire_at, ..
            } => Some(etcd_may_expire_at),
            _ => None,
        });
        assert_eq!(lost, Some(t0 + Duration::from_secs(TTL as u64)));
    }
}

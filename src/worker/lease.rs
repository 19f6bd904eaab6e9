//! The claims a worker holds, and the heartbeat that keeps their leases from
//! running out while their steps wait or run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::workflow::Claim;

/// The claims of a worker, by step id: each with when its lease runs out as
/// this process sees it (a local clock, so the database's does not matter).
#[derive(Debug)]
pub(super) struct Leases {
    lease: Duration,
    held: Mutex<HashMap<i64, Held>>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    claim: Claim,
    expires: Instant,
    /// The shutdown deadline passed with its handler running, and the claim
    /// was released: the handler's result is dropped.
    released: bool,
    /// An extension was refused: the claim no longer holds.
    lost: bool,
}

impl Leases {
    pub fn new(lease: Duration) -> Self {
        Leases {
            lease,
            held: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Held>> {
        // A panic never happens while the map is locked (no user code runs
        // under the lock), so a poisoned lock still holds a consistent map.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A claim just made: its lease started at most now.
    pub fn hold(&self, claim: Claim) {
        self.held().insert(
            claim.workflow_step_id,
            Held {
                claim,
                expires: crate::arguments::deadline_after(self.lease),
                released: false,
                lost: false,
            },
        );
    }

    /// The claim is done with (reported, or lost); false when the shutdown
    /// released it meanwhile, so its result must not be reported.
    pub fn finish(&self, claim: Claim) -> bool {
        match self.held().remove(&claim.workflow_step_id) {
            Some(held) => !held.released,
            None => true,
        }
    }

    /// Whether the claim was released by the shutdown.
    pub fn was_released(&self, claim: Claim) -> bool {
        self.held()
            .get(&claim.workflow_step_id)
            .is_some_and(|held| held.released)
    }

    /// A heartbeat or a handler extended the claim by `lease` from `at`.
    pub fn extended_at(&self, claim: Claim, at: Instant, lease: Duration) {
        if let Some(held) = self.held().get_mut(&claim.workflow_step_id) {
            if held.claim == claim {
                held.expires = held.expires.max(at + lease);
            }
        }
    }

    /// The claims whose lease runs out within `margin`.
    pub fn due(&self, margin: Duration) -> Vec<Claim> {
        let soon = crate::arguments::deadline_after(margin);
        self.held()
            .values()
            .filter(|held| !held.released && !held.lost && held.expires <= soon)
            .map(|held| held.claim)
            .collect()
    }

    /// An extension of the claim was refused: the heartbeat stops trying.
    pub fn lost(&self, claim: Claim) {
        if let Some(held) = self.held().get_mut(&claim.workflow_step_id) {
            held.lost = true;
        }
    }

    /// Every claim still held, marked released: the shutdown deadline gives
    /// them back, and their results are dropped.
    pub fn release_all(&self) -> Vec<Claim> {
        self.held()
            .values_mut()
            .filter(|held| !held.released)
            .map(|held| {
                held.released = true;
                held.claim
            })
            .collect()
    }
}

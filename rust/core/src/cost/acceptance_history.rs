//! Acceptance learned from the run's own history (`speculative.adaptive_estimate: history`):
//! the survival of each draft position as a speculating instance has observed it.
//!
//! vLLM's adaptive verification scores draft slots either by a confidence head's per-request
//! estimates (DSpark; here each request's class rates, `adaptive_estimate: request`) or, for
//! proposers without one, by the accepted-prefix survival it has observed, choosing one k for
//! every decode of the next step (DFlash). This is that history: for each draft position i, the
//! verified slots and the accepted ones, counted over the instance's steps with each older step
//! weighted [`HISTORY_DECAY`] less (a memory of about 64 steps), so the estimate follows a
//! workload whose mix of requests changes. Each position also counts one pseudo-slot, verified
//! and accepted, that never decays: the estimate is (accepted + 1) / (verified + 1), so a
//! position never verified survives as the one before it (optimistic: the first steps verify
//! every draft and learn it), and one early rejection (a single decode's first step) does not
//! end speculation for good, since a position no longer verified is no longer observed. The
//! estimate is made non-increasing (a slot survives only if every earlier one does).

/// The weight of a step's observations relative to the next step's: 63/64, about 64 steps of
/// memory (exact in binary, so every platform sums the same).
pub const HISTORY_DECAY: f64 = 63.0 / 64.0;

/// Verified and accepted draft slots by position, decayed by step, and the current step's.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptanceHistory {
    /// Decayed verified slots at each position.
    verified: Vec<f64>,
    /// Decayed accepted slots at each position.
    accepted: Vec<f64>,
    /// The step being formed's verified slots at each position.
    step_verified: Vec<u32>,
    /// The step being formed's accepted slots at each position.
    step_accepted: Vec<u32>,
}

impl AcceptanceHistory {
    /// An empty history of `positions` draft positions.
    pub fn new(positions: usize) -> Self {
        AcceptanceHistory { verified: vec![0.0; positions], accepted: vec![0.0; positions], step_verified: vec![0; positions], step_accepted: vec![0; positions] }
    }

    /// One sequence of the step being formed verified its first `depth` draft slots and accepted
    /// the first `accepted` of them.
    pub fn observe(&mut self, depth: u32, accepted: u32) {
        for i in 0..(depth as usize).min(self.verified.len()) {
            self.step_verified[i] += 1;
            self.step_accepted[i] += (i < accepted as usize) as u32;
        }
    }

    /// Folds the step's observations in: the older ones weighted [`HISTORY_DECAY`] less, then
    /// the step's added. A step that verified nothing changes nothing.
    pub fn end_step(&mut self) {
        if self.step_verified.iter().all(|&v| v == 0) {
            return;
        }
        for i in 0..self.verified.len() {
            self.verified[i] = self.verified[i] * HISTORY_DECAY + self.step_verified[i] as f64;
            self.accepted[i] = self.accepted[i] * HISTORY_DECAY + self.step_accepted[i] as f64;
        }
        self.step_verified.fill(0);
        self.step_accepted.fill(0);
    }

    /// The estimated survival of each position (the probability that it and every earlier one
    /// are accepted): (accepted + 1) / (verified + 1) at each position (one optimistic
    /// pseudo-slot), at most the position before's (1 for the first).
    pub fn survival(&self) -> Vec<f64> {
        let mut s = 1.0f64;
        self.verified
            .iter()
            .zip(&self.accepted)
            .map(|(&v, &a)| {
                s = s.min((a + 1.0) / (v + 1.0));
                s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_survival_follows_the_decayed_counts() {
        let mut h = AcceptanceHistory::new(3);
        // Nothing observed: every position optimistic.
        assert_eq!(h.survival(), vec![1.0, 1.0, 1.0]);
        // Step 1: two sequences verify 3; one accepts 2, the other 0. With the pseudo-slot:
        // (1 + 1) / (2 + 1) at the first two positions, (0 + 1) / (2 + 1) at the third.
        h.observe(3, 2);
        h.observe(3, 0);
        h.end_step();
        assert_eq!(h.survival(), vec![2.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0]);
        // Step 2: one sequence verifies 1 and accepts it. Position 0: (63/64 + 1 + 1) / (2 * 63/64 + 1 + 1).
        h.observe(1, 1);
        h.end_step();
        let d = HISTORY_DECAY;
        let s0 = (d + 1.0 + 1.0) / (2.0 * d + 1.0 + 1.0);
        assert_eq!(h.survival()[0], s0);
        // Position 1 not verified this step: its counts decay together, capped by position 0's.
        assert_eq!(h.survival()[1], ((d + 1.0) / (2.0 * d + 1.0)).min(s0));
        assert_eq!(h.survival()[2], (1.0 / (2.0 * d + 1.0)).min(h.survival()[1]));
        // A step verifying nothing changes nothing.
        let before = h.clone();
        h.end_step();
        assert_eq!(h, before);
    }

    #[test]
    fn an_unobserved_position_survives_as_the_one_before_and_the_estimate_never_rises() {
        let mut h = AcceptanceHistory::new(4);
        h.observe(2, 2);
        h.observe(2, 1);
        h.end_step();
        assert_eq!(h.survival(), vec![1.0, 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0]);
        // One decode's first draft rejected once: not the end of speculation (1/2, not 0).
        let mut once = AcceptanceHistory::new(2);
        once.observe(2, 0);
        once.end_step();
        assert_eq!(once.survival(), vec![0.5, 0.5]);
        // Position 2 observed with a higher ratio than position 1: capped at 0.5.
        h.observe(3, 3);
        h.end_step();
        let s = h.survival();
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "{s:?}");
        assert_eq!(s[2], s[1]);
    }
}

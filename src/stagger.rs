//! Spreading the members' copies of their state (defragmenting,
//! snapshotting) over time.
//!
//! Members apply the same entries, so their databases and logs grow in
//! step: with one bound they all reach it within a moment and copy at once,
//! and the copies slow every member together. A member's place in the
//! rota, from its ordinal, either raises its bounds by a step (for copies
//! that a bound alone starts) or gives it turns of a shared count such as
//! the log index (for copies that recur at every so many entries, where
//! raised bounds would meet again every few rounds). This module only says
//! where a member stands; the layers that copy decide what a bound is.

/// How much higher each member's bounds are than those of the member
/// before it, in percent of the bound, and after how many members the
/// steps (and turns) start again: in a set of five, ordinals 3 and 4 share
/// those of 0 and 1, and the three members on other steps are still a
/// quorum.
const STEP_PERCENT: u64 = 25;
const STEPS: u32 = 3;

/// One member's place in the rota of copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stagger {
    /// `None`: not a member of a set (no ordinal), alone in its rota.
    slot: Option<u32>,
}

impl Stagger {
    /// No rota: every bound as given, every turn its own.
    pub const NONE: Stagger = Stagger { slot: None };

    /// The place of the member with `ordinal` in its set.
    pub fn of_ordinal(ordinal: u32) -> Self {
        Stagger {
            slot: Some(ordinal % STEPS),
        }
    }

    /// `bound` raised by this member's step.
    pub fn raise(self, bound: u64) -> u64 {
        let percent = self.slot.map_or(0, |slot| u64::from(slot) * STEP_PERCENT);
        bound.saturating_add(bound.saturating_mul(percent) / 100)
    }

    /// Whether `position` falls in this member's turn, when turns of
    /// `turn` positions are dealt to the slots in rotation.
    pub fn has_turn(self, position: u64, turn: u64) -> bool {
        self.slot
            .is_none_or(|slot| (position / turn.max(1)) % u64::from(STEPS) == u64::from(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::Stagger;

    #[test]
    fn each_ordinal_raises_its_bounds_a_quarter_above_the_one_before() {
        let raised: Vec<u64> = (0..5).map(|o| Stagger::of_ordinal(o).raise(400)).collect();
        assert_eq!(raised, [400, 500, 600, 400, 500]);
        assert_eq!(Stagger::NONE.raise(400), 400);
        assert_eq!(
            Stagger::of_ordinal(2).raise(u64::MAX),
            u64::MAX,
            "saturates"
        );
    }

    #[test]
    fn the_turns_go_round_the_ordinals() {
        let holder = |position| {
            (0..5)
                .filter(|o| Stagger::of_ordinal(*o).has_turn(position, 10))
                .collect::<Vec<u32>>()
        };
        assert_eq!(holder(0), [0, 3]);
        assert_eq!(holder(19), [1, 4]);
        assert_eq!(holder(25), [2]);
        assert_eq!(holder(30), [0, 3]);
        assert!((0..100).all(|p| Stagger::NONE.has_turn(p, 10)));
    }
}

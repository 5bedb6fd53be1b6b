//! The "securely save payment details for automated subscription renewal" box of the checkout.

/// What the checkout showed and what the customer chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consent {
    /// The box was shown.
    pub presented: bool,
    /// The box was ticked.
    pub accepted: bool,
}

impl Consent {
    /// The consent rule (DESIGN.md, flow 1): the token is saved only for an order with a
    /// subscription item, and only if the box was not shown or was ticked. Otherwise it is
    /// dropped without being persisted anywhere.
    pub fn saves_token(self, has_subscription: bool) -> bool {
        has_subscription && (!self.presented || self.accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_saved_only_for_a_subscription_without_a_refused_box() {
        let c = |presented, accepted| Consent {
            presented,
            accepted,
        };
        assert!(c(false, false).saves_token(true), "box not shown");
        assert!(c(true, true).saves_token(true), "box ticked");
        assert!(!c(true, false).saves_token(true), "box shown, not ticked");
        for (p, a) in [(false, false), (true, true), (true, false), (false, true)] {
            assert!(!c(p, a).saves_token(false), "one-off orders never save");
        }
    }
}

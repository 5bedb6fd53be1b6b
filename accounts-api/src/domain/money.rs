//! Money: integer minor units of an ISO 4217 currency inside, the decimal number FastSpring
//! shows (`14.95`) at the edge.

/// Minor units → the decimal number FastSpring shows (`14.95`).
pub fn to_major(minor: i64, exponent: u8) -> f64 {
    minor as f64 / 10f64.powi(i32::from(exponent))
}

/// A decimal price → minor units; refuses negatives, absurd amounts and sub-minor precision.
pub fn to_minor(price: f64, exponent: u8) -> Option<i64> {
    if !price.is_finite() || !(0.0..=1e9).contains(&price) {
        return None;
    }
    let scaled = price * 10f64.powi(i32::from(exponent));
    let rounded = scaled.round();
    ((scaled - rounded).abs() < 1e-6).then_some(rounded as i64)
}

/// An amount in minor units of a currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    minor: i64,
    currency: String,
    exponent: u8,
}

impl Money {
    /// `minor` units of `currency` (a stored ISO code; an unknown one counts 2 decimals, as
    /// every display of a stored amount did).
    pub fn of(minor: i64, currency: &str) -> Self {
        let exponent = shared::Currency::parse(currency)
            .map(|c| c.exponent())
            .unwrap_or(2);
        Self {
            minor,
            currency: currency.to_owned(),
            exponent,
        }
    }

    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// The decimal amount (`1495` USD → `14.95`).
    pub fn major(&self) -> f64 {
        to_major(self.minor, self.exponent)
    }

    /// `quantity` times this amount.
    pub fn times(&self, quantity: u32) -> Self {
        Self {
            minor: self.minor.saturating_mul(i64::from(quantity)),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_convert_to_minor_units_only_when_exact() {
        assert_eq!(to_minor(14.95, 2), Some(1495));
        assert_eq!(to_minor(1000.0, 0), Some(1000));
        assert_eq!(to_minor(1.005, 2), None);
        assert_eq!(to_minor(-1.0, 2), None);
        assert_eq!(to_minor(f64::NAN, 2), None);
    }

    #[test]
    fn amounts_show_with_their_currency_decimals() {
        assert_eq!(Money::of(1495, "USD").major(), 14.95);
        assert_eq!(Money::of(1000, "JPY").major(), 1000.0);
        assert_eq!(Money::of(1495, "USD").times(3).minor(), 4485);
        assert_eq!(Money::of(1495, "???").major(), 14.95, "unknown: 2 decimals");
    }
}

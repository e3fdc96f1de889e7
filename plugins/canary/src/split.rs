//! Which variant a request gets: a stable hash of who is asking puts each end user (or API key)
//! on one side of the split for as long as the split's weight stays the same.

/// One side of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Baseline,
    Canary,
}

impl Variant {
    pub fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Canary => "canary",
        }
    }

    /// The value of the variant header that forces this variant (`canary`, `baseline`), if any.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            v if v.eq_ignore_ascii_case("canary") => Some(Variant::Canary),
            v if v.eq_ignore_ascii_case("baseline") => Some(Variant::Baseline),
            _ => None,
        }
    }

    /// One byte, for the per-request scratch space.
    pub fn byte(self) -> u8 {
        match self {
            Variant::Baseline => b'b',
            Variant::Canary => b'c',
        }
    }

    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'b' => Some(Variant::Baseline),
            b'c' => Some(Variant::Canary),
            _ => None,
        }
    }
}

/// Weights are kept in basis points (1/100 of a percent), so `weight = 12.5` is exact.
pub const FULL: u32 = 10_000;

/// Whether `who` falls in the canary's share of `weight_bp` basis points of the split `salt`.
/// The same `(salt, who)` always lands on the same side, and raising the weight only ever moves
/// users from the baseline to the canary, never back.
pub fn in_canary_share(salt: &str, who: &str, weight_bp: u32) -> bool {
    position(salt, who) < weight_bp
}

/// Where `who` sits on the split, `0..FULL`.
fn position(salt: &str, who: &str) -> u32 {
    let hash = mix(fnv1a(&[salt.as_bytes(), b"\0", who.as_bytes()]));
    // FULL is tiny next to 2^64, so the modulo adds no measurable bias.
    (hash % u64::from(FULL)) as u32
}

/// FNV-1a over the parts, in order.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// splitmix64's finalizer: FNV's low bits are weak for similar strings (`user-1`, `user-2`, …);
/// this spreads every input bit over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_close_to_the_weight_for_similar_names() {
        for weight in [1_000, 2_500, 5_000, 9_000] {
            let n = 20_000;
            let canary = (0..n).filter(|i| in_canary_share("gpt-x", &format!("user-{i}"), weight)).count();
            let share = canary as f64 / f64::from(n) * f64::from(FULL);
            assert!((share - f64::from(weight)).abs() < 150.0, "weight {weight}: share {share}");
        }
    }

    #[test]
    fn a_user_keeps_their_side_and_a_higher_weight_only_adds_users() {
        for i in 0..1_000 {
            let who = format!("u{i}");
            assert_eq!(in_canary_share("m", &who, 1_000), in_canary_share("m", &who, 1_000));
            if in_canary_share("m", &who, 1_000) {
                assert!(in_canary_share("m", &who, 2_000));
            }
        }
        assert!(!in_canary_share("m", "anyone", 0));
        assert!(in_canary_share("m", "anyone", FULL));
    }

    #[test]
    fn splits_are_independent() {
        let both = (0..10_000).filter(|i| {
            let who = format!("u{i}");
            in_canary_share("a", &who, 5_000) && in_canary_share("b", &who, 5_000)
        });
        let both = both.count();
        assert!((2_300..2_700).contains(&both), "{both}");
    }

    #[test]
    fn the_header_value_parses() {
        assert_eq!(Variant::parse(" Canary "), Some(Variant::Canary));
        assert_eq!(Variant::parse("baseline"), Some(Variant::Baseline));
        assert_eq!(Variant::parse("both"), None);
        assert_eq!(Variant::from_byte(Variant::Canary.byte()), Some(Variant::Canary));
    }
}

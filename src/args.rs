//! Value parsers for the command line's numbers and addresses, whose
//! errors say what to give ("a whole number, 0 or more") rather than what
//! Rust's parser found ("invalid digit found in string").

use std::num::IntErrorKind;

/// An unsigned integer type an option takes, with how to describe its range.
pub trait Whole: std::str::FromStr<Err = std::num::ParseIntError> + Copy + Send + Sync + 'static {
    /// "0 or more" for the wide types, "0 to 255" for the narrow ones.
    const RANGE: &'static str;
}

macro_rules! whole {
    ($($t:ty => $range:expr),*) => {
        $(impl Whole for $t { const RANGE: &'static str = $range; })*
    };
}

whole!(u8 => "0 to 255", u16 => "0 to 65535", u32 => "0 to 4294967295", u64 => "0 or more", usize => "0 or more");

/// A whole number of type `T` (`--top 20`, `--seed 7`).
pub fn whole<T: Whole>(s: &str) -> Result<T, String> {
    s.trim().parse::<T>().map_err(|e| match e.kind() {
        IntErrorKind::PosOverflow => format!("too large: give a whole number, {}", T::RANGE),
        _ => format!("expected a whole number, {}", T::RANGE),
    })
}

/// A finite number, fractions allowed (`--seconds 2.5`).
pub fn number(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err("expected a number such as 4 or 2.5".to_string()),
    }
}

/// An IP address and port (`--ipfix 127.0.0.1:4739`).
pub fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        "expected an IP address and port such as 127.0.0.1:4739 or [2001:db8::1]:4739 (host names are not looked up)"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_say_what_to_give() {
        assert_eq!(whole::<usize>("20"), Ok(20));
        assert_eq!(whole::<u8>(" 7 "), Ok(7));
        assert_eq!(whole::<usize>("abc"), Err("expected a whole number, 0 or more".into()));
        assert_eq!(whole::<u64>("-3"), Err("expected a whole number, 0 or more".into()));
        assert_eq!(whole::<u8>("300"), Err("too large: give a whole number, 0 to 255".into()));
        assert_eq!(number("2.5"), Ok(2.5));
        assert!(number("inf").is_err() && number("x").is_err());
        assert_eq!(socket_addr("[::1]:4739").unwrap().port(), 4739);
        assert!(socket_addr("collector:4739").unwrap_err().contains("such as 127.0.0.1:4739"));
    }
}

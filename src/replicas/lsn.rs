//! PostgreSQL WAL positions (`pg_lsn`).

use std::fmt;
use std::str::FromStr;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::data_types::PgLsn as DieselLsn;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::PgLsn;

/// A position in the write-ahead log, PostgreSQL's `pg_lsn`: a byte offset
/// into the WAL stream, so later positions compare greater.
///
/// Written as PostgreSQL writes it, two hexadecimal halves: `16/B374D848`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, FromSqlRow, AsExpression,
)]
#[diesel(sql_type = PgLsn)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text is not a `pg_lsn` (`X/Y`, each half 1 to 8 hexadecimal digits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL position {0:?}: expected two hexadecimal halves like 16/B374D848")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let half = |digits: &str| {
            let valid = (1..=8).contains(&digits.len())
                && digits.bytes().all(|byte| byte.is_ascii_hexdigit());
            valid
                .then(|| u64::from_str_radix(digits, 16).ok())
                .flatten()
        };
        text.split_once('/')
            .and_then(|(high, low)| Some((half(high)? << 32) | half(low)?))
            .map(Lsn)
            .ok_or_else(|| ParseLsnError(text.to_owned()))
    }
}

impl FromSql<PgLsn, Pg> for Lsn {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        DieselLsn::from_sql(bytes).map(|DieselLsn(position)| Lsn(position))
    }
}

impl ToSql<PgLsn, Pg> for Lsn {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let position = DieselLsn(self.0);
        <DieselLsn as ToSql<PgLsn, Pg>>::to_sql(&position, &mut out.reborrow())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_like_postgresql() {
        for (text, value) in [
            ("0/0", 0),
            ("0/3001150", 0x0300_1150),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("16/b374d848".parse(), Ok(Lsn(0x16_B374_D848)));
    }

    #[test]
    fn rejects_what_postgresql_rejects() {
        for text in [
            "",
            "0",
            "/0",
            "0/",
            "1/2/3",
            "G/0",
            "123456789/0",
            "+1/0",
            " 0/0",
        ] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn orders_by_position() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b: Lsn = "1/0".parse().unwrap();
        assert!(a < b);
    }
}

//! Identifier rules shared by every id in the contract (driver, device,
//! room, vendor, client ids): 1–64 characters of `[A-Za-z0-9_.:-]`.

/// Longest id the contract accepts.
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {MAX_ID_LEN} characters")]
    TooLong { what: &'static str },
    #[error("{what} contains {found:?}; only [A-Za-z0-9_.:-] are allowed")]
    BadChar { what: &'static str, found: char },
}

/// Checks `id` against the contract's id rules; `what` names the field in the
/// error message (e.g. `"driver_id"`).
pub fn validate_id(what: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { what });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { what });
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        Some(found) => Err(IdError::BadChar { what, found }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_contract_ids() {
        for id in ["d-1", "order:42", "a.b_c", &"x".repeat(64)] {
            assert_eq!(validate_id("id", id), Ok(()), "{id}");
        }
    }

    #[test]
    fn refuses_bad_ids() {
        assert_eq!(validate_id("id", ""), Err(IdError::Empty { what: "id" }));
        assert_eq!(
            validate_id("id", &"x".repeat(65)),
            Err(IdError::TooLong { what: "id" })
        );
        assert_eq!(
            validate_id("id", "a b"),
            Err(IdError::BadChar {
                what: "id",
                found: ' '
            })
        );
        assert!(validate_id("id", "é").is_err());
        assert!(validate_id("id", "a/b").is_err());
    }
}

//! Deterministic entity ids, so tests and demos can name seeded entities
//! without asking the emulator first.

use uuid::Uuid;

fn seeded_id(kind: &str, n: usize) -> String {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{kind}-{n}").as_bytes()).to_string()
}

/// Id of the `n`-th seeded queue (0-based): UUID v5 (OID namespace) of `"queue-{n}"`.
pub fn queue_id(n: usize) -> String {
    seeded_id("queue", n)
}

/// Id of the `n`-th seeded user (0-based): UUID v5 (OID namespace) of `"user-{n}"`.
pub fn user_id(n: usize) -> String {
    seeded_id("user", n)
}

/// Id of the `n`-th seeded skill (0-based): UUID v5 (OID namespace) of `"skill-{n}"`.
pub fn skill_id(n: usize) -> String {
    seeded_id("skill", n)
}

/// Id of the `n`-th seeded division (0-based).
pub(crate) fn division_id(n: usize) -> String {
    seeded_id("division", n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(queue_id(3), queue_id(3));
        assert_ne!(queue_id(3), queue_id(4));
        assert_ne!(queue_id(0), user_id(0));
        assert_eq!(skill_id(1).len(), 36);
    }
}

//! nat (being written).

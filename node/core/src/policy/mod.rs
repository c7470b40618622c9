//! Decisions as plain functions over data, with `now` passed in, so they
//! are tested without a network or a clock: when to run ([`schedule`]),
//! what to keep ([`retention`]), how fast to send ([`bandwidth`]), where
//! to place replicas ([`placement`]) and who repairs ([`repairers`]).

pub mod bandwidth;
pub mod placement;
pub mod repairers;
pub mod retention;
pub mod schedule;

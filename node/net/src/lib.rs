//! omesh networking: the QUIC transport with mutual TLS against the site
//! CA, both sides of the mesh protocol (serving and storing other nodes'
//! replicas; connecting to peers and pushing snapshots), the site CA
//! itself, and the residency policy that vets every address.
//!
//! Above `omesh-core` (stores, snapshots) and below `omesh-daemon`, which
//! composes the node. Nothing here reads the node's configuration file:
//! each piece takes the settings it needs.

pub mod attest;
pub mod ca;
pub mod mesh;
pub mod residency;
pub mod transport;

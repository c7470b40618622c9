//! omesh integration tests. Each module drives the real `omesh` binary
//! (and, for the mesh, real daemons, real QUIC, a real S3 server and real
//! network namespaces) against real files in temporary directories.

mod alerts;
mod common;

mod hooks;
mod key_rotation;
mod lab;
mod lifecycle;
mod local_browse;
mod local_cli;
mod local_compat;
mod local_corruption;
mod local_crash;
mod local_dedup;
mod local_hostile;
mod local_image;
mod local_lifecycle;
mod local_roundtrip;
mod mesh_hostile;
mod mesh_operator;
mod mesh_reliability;
mod mesh_replication;
mod mesh_security;
mod mount;
mod notify;
mod package;
mod postgres;
mod residency;
mod s3;
mod ssm;
mod stream;
mod tags;
mod torture;

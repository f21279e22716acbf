//! A snapshot file from a leader, installed into a temporary store: an
//! error, never a panic or an unbounded allocation.
//! The checks are in `raftset::fuzzing::snapshot_file`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raftset::fuzzing::snapshot_file(data));

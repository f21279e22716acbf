//! A peer envelope opened as every payload the peer port and its callers
//! decode: never a panic, never a message for another cluster or node, and
//! what opens seals and opens again to the same value.
//! The checks are in `raftset::fuzzing::peer_message`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raftset::fuzzing::peer_message(data));

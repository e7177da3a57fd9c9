#![no_main]

libfuzzer_sys::fuzz_target!(init: murmur_fuzz::init(), |data: &[u8]| murmur_fuzz::repo_messages(data));

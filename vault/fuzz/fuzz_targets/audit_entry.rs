//! The audit entry decoders and the chain walker: any bytes as one exported entry, every line as
//! a segment line (header, entry or checkpoint), and the input split into several entries of a
//! pre-segment sled chain — never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = vault::audit::AuditEntry::decode(data) {
        let _ = e.hash_is_valid();
        let _ = e.hash_bytes();
    }
    for line in data.split(|b| *b == b'\n') {
        let _ = vault::audit::segment::parse_line(line);
    }
    let entries: Vec<Result<(Vec<u8>, Vec<u8>), ()>> = data
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, chunk)| Ok((vault::audit::key(i as u64 + 1).to_vec(), chunk.to_vec())))
        .collect();
    let _ = vault::audit::verify_legacy(entries);
});

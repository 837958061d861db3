//! Flow hashing for the consistent-hash schedulers and the Maglev permutations.
//!
//! One function per use, each MurmurHash3 (x86, 32-bit) over the exact bytes named, so
//! every LB host and `lb-ctl explain` compute the same value. Inputs are the packet's
//! fields as they sit in memory (network byte order read as a native `u32`).

const SEED: u32 = 0x4c42_5846; // "LBXF"

#[inline(always)]
const fn round(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(h: u32, len: u32) -> u32 {
    let mut h = h ^ len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a client address (`sch`).
#[inline(always)]
pub const fn hash_source(src_addr: u32) -> u32 {
    finish(round(SEED, src_addr), 4)
}

/// Hash of a 4-tuple (`tch` and mid-flow pickups). Ports are network byte order too.
#[inline(always)]
pub const fn hash_tuple(src_addr: u32, dst_addr: u32, src_port: u16, dst_port: u16) -> u32 {
    // The two ports in packet order, as the TCP/UDP header holds them.
    let ports = (src_port as u32) | ((dst_port as u32) << 16);
    finish(round(round(round(SEED, src_addr), dst_addr), ports), 12)
}

/// Hash of an IPv6 client address (`sch`): the same function over its 16 bytes.
#[inline(always)]
pub const fn hash_source6(src_addr: [u32; 4]) -> u32 {
    let h = round(
        round(round(round(SEED, src_addr[0]), src_addr[1]), src_addr[2]),
        src_addr[3],
    );
    finish(h, 16)
}

/// Hash of an IPv6 4-tuple (`tch`, pickups): both addresses, then the ports as in
/// `hash_tuple`.
#[inline(always)]
pub const fn hash_tuple6(
    src_addr: [u32; 4],
    dst_addr: [u32; 4],
    src_port: u16,
    dst_port: u16,
) -> u32 {
    let mut h = SEED;
    let mut i = 0;
    while i < 4 {
        h = round(h, src_addr[i]);
        i += 1;
    }
    let mut i = 0;
    while i < 4 {
        h = round(h, dst_addr[i]);
        i += 1;
    }
    let ports = (src_port as u32) | ((dst_port as u32) << 16);
    finish(round(h, ports), 36)
}

/// 64-bit mix (SplitMix64's finaliser), used host-side for Maglev permutations.
#[inline]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference MurmurHash3_x86_32 over a byte slice.
    fn murmur3(bytes: &[u8], seed: u32) -> u32 {
        let mut h = seed;
        for chunk in bytes.chunks_exact(4) {
            h = round(h, u32::from_le_bytes(chunk.try_into().unwrap()));
        }
        assert!(bytes.len().is_multiple_of(4));
        finish(h, bytes.len() as u32)
    }

    #[test]
    fn matches_reference_murmur3() {
        // Known answer of MurmurHash3_x86_32 ("test", seed 0) = 0xba6bd213.
        assert_eq!(murmur3(b"test", 0), 0xba6b_d213);
        let src = [198u8, 18, 0, 1];
        assert_eq!(hash_source(u32::from_ne_bytes(src)), murmur3(&src, SEED));
        let mut tuple = Vec::new();
        tuple.extend_from_slice(&[198, 18, 0, 1]);
        tuple.extend_from_slice(&[198, 18, 0, 100]);
        tuple.extend_from_slice(&40000u16.to_be_bytes());
        tuple.extend_from_slice(&80u16.to_be_bytes());
        let h = hash_tuple(
            u32::from_ne_bytes([198, 18, 0, 1]),
            u32::from_ne_bytes([198, 18, 0, 100]),
            u16::from_ne_bytes(40000u16.to_be_bytes()),
            u16::from_ne_bytes(80u16.to_be_bytes()),
        );
        if cfg!(target_endian = "little") {
            assert_eq!(h, murmur3(&tuple, SEED));
        }
    }

    #[test]
    fn ipv6_hashes_match_reference_murmur3() {
        let src: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        let dst: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64,
        ];
        let words = |b: [u8; 16]| crate::family::addr6(b);
        assert_eq!(hash_source6(words(src)), murmur3(&src, SEED));
        let mut tuple = Vec::new();
        tuple.extend_from_slice(&src);
        tuple.extend_from_slice(&dst);
        tuple.extend_from_slice(&40000u16.to_be_bytes());
        tuple.extend_from_slice(&80u16.to_be_bytes());
        let h = hash_tuple6(
            words(src),
            words(dst),
            u16::from_ne_bytes(40000u16.to_be_bytes()),
            u16::from_ne_bytes(80u16.to_be_bytes()),
        );
        if cfg!(target_endian = "little") {
            assert_eq!(h, murmur3(&tuple, SEED));
        }
    }

    #[test]
    fn spreads_sequential_ports() {
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            buckets[(hash_tuple(1, 2, port.to_be(), 80u16.to_be()) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1100).contains(&b), "{buckets:?}");
        }
    }
}

//! AV1 temporal units for WebRTC delivery: str0m's packetizer marks a keyframe (the
//! aggregation header's N bit) only when the temporal unit's first OBU is a sequence
//! header, and a browser needs that header to start decoding. A keyframe that arrives
//! without one (its sender kept the sequence header out of band) gets the one from the
//! `av1C` record. Input is untrusted: nothing here indexes unchecked or panics.

/// OBU type of a sequence header.
const OBU_SEQUENCE_HEADER: u8 = 1;

/// The temporal unit `tu` (OBUs with size fields, as the codec crate depacketizes AV1) to
/// send: as is, unless it is a `keyframe` whose first OBU is not a sequence header and
/// `av1c` (an `AV1CodecConfigurationRecord`) holds one, which is then put first.
pub fn with_sequence_header(tu: &[u8], keyframe: bool, av1c: Option<&[u8]>) -> Vec<u8> {
    let starts_with_header = tu
        .first()
        .is_some_and(|h| (h >> 3) & 0x0f == OBU_SEQUENCE_HEADER);
    let header = av1c
        .and_then(|c| c.get(4..))
        .filter(|obus| {
            obus.first()
                .is_some_and(|h| (h >> 3) & 0x0f == OBU_SEQUENCE_HEADER && h & 0x02 != 0)
        })
        .filter(|_| keyframe && !starts_with_header);
    match header {
        Some(h) => [h, tu].concat(),
        None => tu.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframes_get_the_sequence_header_first() {
        let av1c = [0x81, 0, 0x0c, 0, 0x0a, 0x01, 0xaa];
        let frame = [0x32, 0x01, 0x10];
        assert_eq!(
            with_sequence_header(&frame, true, Some(&av1c)),
            [0x0a, 0x01, 0xaa, 0x32, 0x01, 0x10]
        );
        assert_eq!(with_sequence_header(&frame, false, Some(&av1c)), frame);
        let with = [0x0a, 0x01, 0xbb, 0x32, 0x01, 0x10];
        assert_eq!(with_sequence_header(&with, true, Some(&av1c)), with);
        assert_eq!(with_sequence_header(&frame, true, Some(&av1c[..4])), frame);
        assert_eq!(with_sequence_header(&frame, true, None), frame);
    }
}

//! SR/RR/BYE compound packet writing.

use rtcp_types::{
    Bye, CompoundBuilder, ReceiverReport, ReportBlock as WireBlock, ReportBlockBuilder,
    RtcpPacketWriter, RtcpPacketWriterExt, Sdes, SdesChunk, SdesItem, SenderReport,
};

use super::{
    ReportBlock, SenderInfo, CUMULATIVE_LOST_MAX, CUMULATIVE_LOST_MIN, MAX_BLOCKS_PER_PACKET,
};

/// Longest SDES item value (the item length is one byte).
const MAX_SDES_VALUE: usize = 255;

/// Appends a compound SR + SDES(CNAME) to `out`.
///
/// More than 31 blocks are carried in additional RR packets after the SR
/// (RFC 3550 §6.4.2). A CNAME longer than 255 bytes is truncated at a
/// character boundary.
pub fn write_sender_report(
    out: &mut Vec<u8>,
    info: &SenderInfo,
    blocks: &[ReportBlock],
    cname: &str,
) {
    let mut chunks = blocks.chunks(MAX_BLOCKS_PER_PACKET);
    let sr = chunks.next().unwrap_or_default().iter().fold(
        SenderReport::builder(info.ssrc)
            .ntp_timestamp(info.ntp.0)
            .rtp_timestamp(info.rtp_timestamp)
            .packet_count(info.packet_count)
            .octet_count(info.octet_count),
        |sr, b| sr.add_report_block(block_builder(b)),
    );
    let mut compound = CompoundBuilder::default().add_packet(sr);
    for chunk in chunks {
        compound = compound.add_packet(rr_builder(info.ssrc, chunk));
    }
    let compound = compound.add_packet(sdes_builder(info.ssrc, cname));
    append(out, &compound);
}

/// Appends a compound RR + SDES(CNAME) to `out`.
///
/// More than 31 blocks are split over several RR packets (RFC 3550 §6.4.2).
/// A CNAME longer than 255 bytes is truncated at a character boundary.
pub fn write_receiver_report(out: &mut Vec<u8>, ssrc: u32, blocks: &[ReportBlock], cname: &str) {
    let mut compound = CompoundBuilder::default();
    let mut chunks = blocks.chunks(MAX_BLOCKS_PER_PACKET);
    // Always at least one RR, even with no blocks.
    compound = compound.add_packet(rr_builder(ssrc, chunks.next().unwrap_or_default()));
    for chunk in chunks {
        compound = compound.add_packet(rr_builder(ssrc, chunk));
    }
    let compound = compound.add_packet(sdes_builder(ssrc, cname));
    append(out, &compound);
}

/// Appends a compound RR(no blocks) + SDES(CNAME) + BYE(ssrc) to `out` (RFC 3550 §6.1: BYE must be in a compound packet).
pub fn write_bye(out: &mut Vec<u8>, ssrc: u32, cname: &str) {
    let compound = CompoundBuilder::default()
        .add_packet(ReceiverReport::builder(ssrc))
        .add_packet(sdes_builder(ssrc, cname))
        .add_packet(Bye::builder().add_source(ssrc));
    append(out, &compound);
}

fn rr_builder(ssrc: u32, blocks: &[ReportBlock]) -> rtcp_types::ReceiverReportBuilder {
    blocks.iter().fold(ReceiverReport::builder(ssrc), |rr, b| {
        rr.add_report_block(block_builder(b))
    })
}

fn block_builder(b: &ReportBlock) -> ReportBlockBuilder {
    // 24-bit two's complement; out-of-range values saturate as RFC 3550 §6.4.1 suggests.
    let lost = b
        .cumulative_lost
        .clamp(CUMULATIVE_LOST_MIN, CUMULATIVE_LOST_MAX);
    WireBlock::builder(b.ssrc)
        .fraction_lost(b.fraction_lost)
        .cumulative_lost(lost as u32 & 0x00ff_ffff)
        .extended_sequence_number(b.extended_highest_seq)
        .interarrival_jitter(b.jitter)
        .last_sender_report_timestamp(b.last_sr)
        .delay_since_last_sender_report_timestamp(b.delay_since_last_sr)
}

fn sdes_builder(ssrc: u32, cname: &str) -> rtcp_types::SdesBuilder<'_> {
    Sdes::builder().add_chunk(
        SdesChunk::builder(ssrc).add_item(SdesItem::builder(SdesItem::CNAME, truncate(cname))),
    )
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_SDES_VALUE {
        return s;
    }
    let mut end = MAX_SDES_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn append(out: &mut Vec<u8>, compound: &CompoundBuilder<'_>) {
    // Every input that could make rtcp-types refuse (too many blocks, oversized
    // cumulative loss or CNAME) has been sanitised above, so failure here is a bug.
    let size = compound
        .calculate_size()
        .expect("sanitised RTCP compound must be writable");
    let start = out.len();
    out.resize(start + size, 0);
    let written = compound
        .write_into(&mut out[start..])
        .expect("buffer sized by calculate_size");
    out.truncate(start + written);
}

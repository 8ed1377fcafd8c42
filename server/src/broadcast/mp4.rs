//! Opus in fragmented MP4 (CMAF), as HLS serves it: one init segment (`ftyp` + `moov`), then
//! fragments (`moof` + `mdat`), each a run of Opus packets. ISO/IEC 14496-12 for the boxes,
//! "Encapsulation of Opus in ISO Base Media File Format" (v0.8.1) for the `Opus` sample entry
//! and its `dOps` box. Pure: bytes in, bytes out.

/// Samples per second of every Opus stream (RFC 7587); also the track's timescale.
pub const TIMESCALE: u32 = 48_000;

/// Writes one box: its size and type, then what `body` writes.
fn mp4_box(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A "full box": a box whose body starts with a version and 24 bits of flags.
fn full_box(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    mp4_box(out, kind, |out| {
        out.extend_from_slice(&((u32::from(version) << 24) | (flags & 0x00ff_ffff)).to_be_bytes());
        body(out);
    });
}

fn u16be(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn u32be(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// The unity transformation matrix of `mvhd` and `tkhd`.
fn matrix(out: &mut Vec<u8>) {
    for v in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000u32] {
        u32be(out, v);
    }
}

/// What the init segment says about the stream.
#[derive(Clone, Copy, Debug)]
pub struct OpusTrack {
    pub channels: u8,
    /// Samples (at 48 kHz) the decoder drops at the start: the encoder's lookahead.
    pub pre_skip: u16,
}

/// `ftyp` + `moov` for one Opus audio track (track 1), with no samples: they come in fragments.
pub fn init_segment(track: OpusTrack) -> Vec<u8> {
    let mut out = Vec::with_capacity(700);
    mp4_box(&mut out, b"ftyp", |out| {
        out.extend_from_slice(b"iso6");
        u32be(out, 0);
        for brand in [b"iso6", b"cmfc", b"mp41"] {
            out.extend_from_slice(brand);
        }
    });
    mp4_box(&mut out, b"moov", |out| {
        full_box(out, b"mvhd", 0, 0, |out| {
            u32be(out, 0); // creation time
            u32be(out, 0); // modification time
            u32be(out, 1000); // timescale
            u32be(out, 0); // duration: unknown (fragmented)
            u32be(out, 0x0001_0000); // rate 1.0
            u16be(out, 0x0100); // volume 1.0
            out.extend_from_slice(&[0; 10]);
            matrix(out);
            out.extend_from_slice(&[0; 24]);
            u32be(out, 2); // next track id
        });
        mp4_box(out, b"trak", |out| {
            // Flags: enabled, in movie.
            full_box(out, b"tkhd", 0, 0x3, |out| {
                u32be(out, 0);
                u32be(out, 0);
                u32be(out, 1); // track id
                u32be(out, 0);
                u32be(out, 0); // duration
                out.extend_from_slice(&[0; 8]);
                u16be(out, 0); // layer
                u16be(out, 0); // alternate group
                u16be(out, 0x0100); // volume: an audio track
                u16be(out, 0);
                matrix(out);
                u32be(out, 0); // width
                u32be(out, 0); // height
            });
            mp4_box(out, b"mdia", |out| {
                full_box(out, b"mdhd", 0, 0, |out| {
                    u32be(out, 0);
                    u32be(out, 0);
                    u32be(out, TIMESCALE);
                    u32be(out, 0);
                    u16be(out, 0x55c4); // "und"
                    u16be(out, 0);
                });
                full_box(out, b"hdlr", 0, 0, |out| {
                    u32be(out, 0);
                    out.extend_from_slice(b"soun");
                    out.extend_from_slice(&[0; 12]);
                    out.extend_from_slice(b"Stoa stage mix\0");
                });
                mp4_box(out, b"minf", |out| {
                    full_box(out, b"smhd", 0, 0, |out| u32be(out, 0));
                    mp4_box(out, b"dinf", |out| {
                        full_box(out, b"dref", 0, 0, |out| {
                            u32be(out, 1);
                            // Flag 1: the media is in this file.
                            full_box(out, b"url ", 0, 1, |_| {});
                        });
                    });
                    sample_table(out, track);
                });
            });
        });
        mp4_box(out, b"mvex", |out| {
            full_box(out, b"trex", 0, 0, |out| {
                u32be(out, 1); // track id
                u32be(out, 1); // sample description index
                u32be(out, 960); // default duration: 20 ms
                u32be(out, 0); // default size
                u32be(out, 0); // default flags
            });
        });
    });
    out
}

/// `stbl` with the `Opus` sample entry and empty tables (the samples are in fragments).
fn sample_table(out: &mut Vec<u8>, track: OpusTrack) {
    mp4_box(out, b"stbl", |out| {
        full_box(out, b"stsd", 0, 0, |out| {
            u32be(out, 1);
            mp4_box(out, b"Opus", |out| {
                out.extend_from_slice(&[0; 6]);
                u16be(out, 1); // data reference index
                out.extend_from_slice(&[0; 8]);
                u16be(out, u16::from(track.channels));
                u16be(out, 16); // sample size
                u16be(out, 0);
                u16be(out, 0);
                u32be(out, TIMESCALE << 16);
                mp4_box(out, b"dOps", |out| {
                    out.push(0); // version
                    out.push(track.channels);
                    u16be(out, track.pre_skip);
                    u32be(out, TIMESCALE); // input sample rate
                    u16be(out, 0); // output gain
                    out.push(0); // channel mapping family 0: mono or stereo
                });
            });
        });
        for kind in [b"stts", b"stsc", b"stco"] {
            full_box(out, kind, 0, 0, |out| u32be(out, 0));
        }
        full_box(out, b"stsz", 0, 0, |out| {
            u32be(out, 0);
            u32be(out, 0);
        });
    });
}

/// One fragment: `moof` + `mdat` holding `packets` (each `duration` samples long), starting
/// at `decode_time` (in samples since the stream began). `sequence` counts fragments from 1.
pub fn fragment(sequence: u32, decode_time: u64, packets: &[(&[u8], u32)]) -> Vec<u8> {
    let payload: usize = packets.iter().map(|(p, _)| p.len()).sum();
    let mut out = Vec::with_capacity(100 + 8 * packets.len() + payload);
    let mut data_offset_at = 0;
    mp4_box(&mut out, b"moof", |out| {
        full_box(out, b"mfhd", 0, 0, |out| u32be(out, sequence));
        mp4_box(out, b"traf", |out| {
            // Flag 0x020000: offsets count from the start of this `moof`.
            full_box(out, b"tfhd", 0, 0x02_0000, |out| u32be(out, 1));
            full_box(out, b"tfdt", 1, 0, |out| {
                out.extend_from_slice(&decode_time.to_be_bytes());
            });
            // Flags: data offset, per-sample duration, per-sample size.
            full_box(out, b"trun", 0, 0x1 | 0x100 | 0x200, |out| {
                u32be(out, packets.len() as u32);
                data_offset_at = out.len();
                u32be(out, 0);
                for (packet, duration) in packets {
                    u32be(out, *duration);
                    u32be(out, packet.len() as u32);
                }
            });
        });
    });
    // The samples start right after the `mdat` header.
    let data_offset = (out.len() + 8) as u32;
    out[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    mp4_box(&mut out, b"mdat", |out| {
        for (packet, _) in packets {
            out.extend_from_slice(packet);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the boxes of `data` at one level: (type, body).
    fn boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        while data.len() >= 8 {
            let size = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
            assert!(
                size >= 8 && size <= data.len(),
                "box size {size} of {}",
                data.len()
            );
            out.push((data[4..8].try_into().unwrap(), &data[8..size]));
            data = &data[size..];
        }
        assert!(data.is_empty(), "trailing bytes");
        out
    }

    fn find<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> &'a [u8] {
        let (first, rest) = path.split_first().unwrap();
        let body = boxes(data)
            .into_iter()
            .find(|(k, _)| k == *first)
            .unwrap_or_else(|| panic!("no {}", String::from_utf8_lossy(*first)))
            .1;
        if rest.is_empty() {
            body
        } else {
            find(body, rest)
        }
    }

    #[test]
    fn the_init_segment_nests_as_the_standard_says() {
        let init = init_segment(OpusTrack {
            channels: 1,
            pre_skip: 312,
        });
        let kinds: Vec<_> = boxes(&init).iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [*b"ftyp", *b"moov"]);
        let stsd = find(
            &init,
            &[b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"],
        );
        // Version/flags, one entry, then the `Opus` sample entry.
        let opus = find(&stsd[8..], &[b"Opus"]);
        assert_eq!(u16::from_be_bytes([opus[16], opus[17]]), 1, "channels");
        assert_eq!(
            u32::from_be_bytes(opus[24..28].try_into().unwrap()),
            48_000 << 16
        );
        let dops = find(&opus[28..], &[b"dOps"]);
        assert_eq!(dops, [0, 1, 0x01, 0x38, 0, 0, 0xbb, 0x80, 0, 0, 0]);
        let mdhd = find(&init, &[b"moov", b"trak", b"mdia", b"mdhd"]);
        assert_eq!(
            u32::from_be_bytes(mdhd[12..16].try_into().unwrap()),
            TIMESCALE
        );
        find(&init, &[b"moov", b"mvex", b"trex"]);
    }

    #[test]
    fn a_fragment_points_at_its_samples() {
        let packets: [(&[u8], u32); 3] = [(b"abc", 960), (b"de", 960), (b"fghi", 480)];
        let frag = fragment(7, 96_000, &packets);
        let top = boxes(&frag);
        assert_eq!(
            top.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [*b"moof", *b"mdat"]
        );
        assert_eq!(top[1].1, b"abcdefghi");
        let mfhd = find(&frag, &[b"moof", b"mfhd"]);
        assert_eq!(u32::from_be_bytes(mfhd[4..8].try_into().unwrap()), 7);
        let tfdt = find(&frag, &[b"moof", b"traf", b"tfdt"]);
        assert_eq!(tfdt[0], 1, "64-bit decode time");
        assert_eq!(u64::from_be_bytes(tfdt[4..12].try_into().unwrap()), 96_000);
        let trun = find(&frag, &[b"moof", b"traf", b"trun"]);
        assert_eq!(u32::from_be_bytes(trun[4..8].try_into().unwrap()), 3);
        let offset = u32::from_be_bytes(trun[8..12].try_into().unwrap()) as usize;
        assert_eq!(
            &frag[offset..offset + 3],
            b"abc",
            "data offset from the moof"
        );
        let sizes: Vec<u32> = trun[12..]
            .chunks(8)
            .map(|c| u32::from_be_bytes(c[4..8].try_into().unwrap()))
            .collect();
        assert_eq!(sizes, [3, 2, 4]);
    }
}

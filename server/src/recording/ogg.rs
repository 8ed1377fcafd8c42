//! Ogg Opus (RFC 7845, pages per RFC 3533), written as it happens and read back after a crash.
//! Sans-IO: frames in, whole pages out as bytes; the caller owns the file. It must not buffer
//! more than `flush_frames` frames, so a killed process loses at most that much audio.

/// The granule clock of Opus in Ogg: 48 kHz whatever the input rate.
pub const GRANULE_RATE: u64 = 48_000;
/// The most lacing values one page holds.
const MAX_SEGMENTS: usize = 255;
/// Bytes of a page header before its segment table.
const HEADER: usize = 27;

const BOS: u8 = 0x02;
const EOS: u8 = 0x04;

/// The stream's shape, fixed at its start.
#[derive(Clone, Copy, Debug)]
pub struct StreamInfo {
    /// The logical stream's serial number (any value; random per file).
    pub serial: u32,
    pub channels: u8,
    /// Samples (at 48 kHz) a player drops at the start: the encoder's lookahead.
    pub pre_skip: u16,
    /// Samples per frame pushed (960 for 20 ms).
    pub frame_samples: u32,
    /// Frames per page at most: an audio page goes out at least this often.
    pub flush_frames: usize,
}

/// One Ogg Opus stream being written.
pub struct OggOpusWriter {
    info: StreamInfo,
    sequence: u32,
    /// Samples of every frame pushed so far (granule of the last complete packet).
    granule: u64,
    /// The granule of the last page made.
    sealed: u64,
    /// Lacing values of the page being filled.
    segments: Vec<u8>,
    body: Vec<u8>,
    frames: usize,
    /// The last page made, handed out by reference.
    page: Vec<u8>,
}

impl OggOpusWriter {
    /// A writer, and the two header pages (OpusHead, then OpusTags) that start the file.
    pub fn new(info: StreamInfo, vendor: &str) -> (Self, Vec<u8>) {
        let mut w = OggOpusWriter {
            info,
            sequence: 0,
            granule: 0,
            sealed: 0,
            segments: Vec::with_capacity(MAX_SEGMENTS),
            body: Vec::with_capacity(8 * 1024),
            frames: 0,
            page: Vec::with_capacity(16 * 1024),
        };
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.push(1); // version
        head.push(info.channels);
        head.extend_from_slice(&info.pre_skip.to_le_bytes());
        head.extend_from_slice(&(GRANULE_RATE as u32).to_le_bytes()); // input rate, informative
        head.extend_from_slice(&0i16.to_le_bytes()); // output gain
        head.push(0); // mapping family 0: mono or stereo, no table
        let mut tags = Vec::with_capacity(16 + vendor.len());
        tags.extend_from_slice(b"OpusTags");
        tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        tags.extend_from_slice(vendor.as_bytes());
        tags.extend_from_slice(&0u32.to_le_bytes()); // no user comments
        let mut out = Vec::new();
        // Header pages carry granule 0 (RFC 7845 section 3).
        w.add_packet(&head);
        out.extend_from_slice(w.seal(BOS, 0));
        w.add_packet(&tags);
        out.extend_from_slice(w.seal(0, 0));
        (w, out)
    }

    /// One encoded frame of `frame_samples`; a full page comes back when it is time to write
    /// one.
    pub fn push(&mut self, frame: &[u8]) -> Option<&[u8]> {
        self.push_samples(frame, self.info.frame_samples)
    }

    /// One packet of `samples` (at 48 kHz): a speaker's packet may hold 10 to 120 ms.
    pub fn push_samples(&mut self, frame: &[u8], samples: u32) -> Option<&[u8]> {
        let lacing = frame.len() / 255 + 1;
        let mut early = false;
        if self.segments.len() + lacing > MAX_SEGMENTS {
            // No room for it on this page: the page goes out first, the frame starts the next.
            // Kept in `page` while the frame is added below.
            self.seal(0, self.granule);
            early = true;
        }
        self.add_packet(frame);
        self.granule += u64::from(samples);
        self.frames += 1;
        if early {
            return Some(&self.page);
        }
        if self.frames >= self.info.flush_frames.max(1) {
            return Some(self.seal(0, self.granule));
        }
        None
    }

    /// Whatever is waiting, as a page (nothing if no frame is waiting).
    pub fn flush(&mut self) -> Option<&[u8]> {
        if self.frames == 0 {
            return None;
        }
        Some(self.seal(0, self.granule))
    }

    /// The last page, marked end of stream (empty if nothing waits: a page with no packet).
    pub fn finish(mut self) -> Vec<u8> {
        self.seal(EOS, self.granule);
        self.page
    }

    /// The last page, as [`finish`](Self::finish), telling players to stop at `end`: the
    /// samples of its packets past `end` are not played (RFC 7845 section 4.4, end trimming).
    /// What earlier pages hold cannot be trimmed; the granule it gives is returned too.
    pub fn finish_at(mut self, end: u64) -> (Vec<u8>, u64) {
        let granule = end.clamp(self.sealed, self.granule);
        self.seal(EOS, granule);
        (self.page, granule)
    }

    /// Samples written so far, pre-skip included.
    pub fn granule(&self) -> u64 {
        self.granule
    }

    fn add_packet(&mut self, packet: &[u8]) {
        let mut left = packet.len();
        while left >= 255 {
            self.segments.push(255);
            left -= 255;
        }
        // A packet ends with a lacing value under 255 (0 after an exact multiple).
        self.segments.push(left as u8);
        self.body.extend_from_slice(packet);
    }

    /// Makes the page out of the waiting packets.
    fn seal(&mut self, flags: u8, granule: u64) -> &[u8] {
        let page = &mut self.page;
        page.clear();
        page.extend_from_slice(b"OggS");
        page.push(0); // version
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&self.info.serial.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]); // CRC, filled in below
        page.push(self.segments.len() as u8);
        page.extend_from_slice(&self.segments);
        page.extend_from_slice(&self.body);
        let crc = crc32(page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.sequence += 1;
        self.sealed = granule;
        self.segments.clear();
        self.body.clear();
        self.frames = 0;
        &self.page
    }
}

/// What the end of a file says about it, read back after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    /// Where the last whole, valid page ends: anything after it is a torn write.
    pub valid_len: u64,
    /// That page's granule position (samples, pre-skip included).
    pub granule: u64,
    /// The stream's pre-skip, from its OpusHead.
    pub pre_skip: u16,
}

impl Tail {
    /// Playable audio, in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.granule.saturating_sub(u64::from(self.pre_skip)) * 1000 / GRANULE_RATE
    }
}

/// Walks a file's pages from the start and stops at the first one that is torn or corrupt.
/// `None` if it does not even start with a valid OpusHead page.
pub fn read_tail(file: &[u8]) -> Option<Tail> {
    let mut at = 0usize;
    let mut tail: Option<Tail> = None;
    while let Some((len, granule, body)) = page_at(&file[at..]) {
        match tail.as_mut() {
            None => {
                if body.len() < 19 || &body[..8] != b"OpusHead" {
                    return None;
                }
                tail = Some(Tail {
                    valid_len: 0,
                    granule: 0,
                    pre_skip: u16::from_le_bytes([body[10], body[11]]),
                });
            }
            Some(t) => {
                // A page with no packet ending on it says -1; it leaves the granule as it was.
                if granule != u64::MAX {
                    t.granule = granule;
                }
            }
        }
        at += len;
        if let Some(t) = tail.as_mut() {
            t.valid_len = at as u64;
        }
    }
    tail
}

/// Reads an Ogg Opus stream's packets in order, page by page from any reader (a file of many
/// hours is never held whole). Stops at the end or at the first torn or corrupt page, as
/// [`read_tail`] does.
pub struct PacketReader<R> {
    source: R,
    /// The stream's pre-skip, from its OpusHead.
    pub pre_skip: u16,
    page: Vec<u8>,
    /// Whole packets of the pages read, not handed out yet.
    ready: std::collections::VecDeque<Vec<u8>>,
    /// A packet not ended yet (its lacing ended on 255 at the end of a page).
    partial: Vec<u8>,
}

impl<R: std::io::Read> PacketReader<R> {
    /// `None` unless the stream starts with a valid OpusHead, then OpusTags; audio packets
    /// follow.
    pub fn new(source: R) -> Option<Self> {
        let mut reader = PacketReader {
            source,
            pre_skip: 0,
            page: Vec::with_capacity(8 * 1024),
            ready: std::collections::VecDeque::new(),
            partial: Vec::new(),
        };
        let head = reader.next_packet()?;
        if head.len() < 19 || &head[..8] != b"OpusHead" {
            return None;
        }
        reader.pre_skip = u16::from_le_bytes([head[10], head[11]]);
        let tags = reader.next_packet()?;
        (tags.len() >= 8 && &tags[..8] == b"OpusTags").then_some(reader)
    }

    /// The next whole packet, or `None` at the end of what is valid.
    pub fn next_packet(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(packet) = self.ready.pop_front() {
                return Some(packet);
            }
            if !self.read_page() {
                return None;
            }
        }
    }

    /// Reads and checks the next page; queues the packets that end on it.
    fn read_page(&mut self) -> bool {
        let page = &mut self.page;
        page.resize(HEADER, 0);
        if self.source.read_exact(page).is_err() {
            return false;
        }
        let segments = usize::from(page[26]);
        page.resize(HEADER + segments, 0);
        if self.source.read_exact(&mut page[HEADER..]).is_err() {
            return false;
        }
        let body_len: usize = page[HEADER..].iter().map(|&l| usize::from(l)).sum();
        page.resize(HEADER + segments + body_len, 0);
        if self
            .source
            .read_exact(&mut page[HEADER + segments..])
            .is_err()
            || page_at(page).is_none()
        {
            return false;
        }
        let (table, body) = page[HEADER..].split_at(segments);
        let mut at = 0;
        for &lacing in table {
            let end = at + usize::from(lacing);
            self.partial.extend_from_slice(&body[at..end]);
            at = end;
            if lacing < 255 {
                self.ready.push_back(std::mem::take(&mut self.partial));
            }
        }
        true
    }
}

/// The page at the start of `bytes`: its length, granule position and body, if it is whole and
/// its checksum is right.
fn page_at(bytes: &[u8]) -> Option<(usize, u64, &[u8])> {
    if bytes.len() < HEADER || &bytes[..4] != b"OggS" || bytes[4] != 0 {
        return None;
    }
    let segments = usize::from(bytes[26]);
    let table = bytes.get(HEADER..HEADER + segments)?;
    let body_len: usize = table.iter().map(|&l| usize::from(l)).sum();
    let len = HEADER + segments + body_len;
    let page = bytes.get(..len)?;
    let stored = u32::from_le_bytes([page[22], page[23], page[24], page[25]]);
    let mut check = page.to_vec();
    check[22..26].fill(0);
    if crc32(&check) != stored {
        return None;
    }
    let granule = u64::from_le_bytes(page[6..14].try_into().ok()?);
    Some((len, granule, &page[HEADER + segments..]))
}

/// Ogg's CRC-32: polynomial 0x04c11db7, not reflected, initial value and final xor zero.
fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u32; 256];
        for (i, entry) in table.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
            }
            *entry = r;
        }
        table
    });
    bytes.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ table[usize::from(((crc >> 24) as u8) ^ b)]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(flush_frames: usize) -> StreamInfo {
        StreamInfo {
            serial: 0x1234_5678,
            channels: 1,
            pre_skip: 312,
            frame_samples: 960,
            flush_frames,
        }
    }

    /// Every page in a byte string: (flags, granule, sequence, lacing values).
    fn pages(mut bytes: &[u8]) -> Vec<(u8, u64, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (len, granule, _) = page_at(bytes).expect("a valid page");
            let seq = u32::from_le_bytes(bytes[18..22].try_into().unwrap());
            let n = usize::from(bytes[26]);
            out.push((bytes[5], granule, seq, bytes[27..27 + n].to_vec()));
            bytes = &bytes[len..];
        }
        out
    }

    #[test]
    fn the_crc_is_ogg_s() {
        // The checksum of "OggS" headers as libogg computes it (a known vector of the
        // non-reflected 0x04c11db7 CRC with zero init: "123456789" gives 0x89a1897f).
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn headers_are_two_pages_with_the_pre_skip() {
        let (_, head) = OggOpusWriter::new(info(50), "stoa");
        let p = pages(&head);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].0, p[0].1, p[0].2), (BOS, 0, 0));
        assert_eq!((p[1].0, p[1].1, p[1].2), (0, 0, 1));
        let (_, _, body) = page_at(&head).unwrap();
        assert_eq!(&body[..8], b"OpusHead");
        assert_eq!(body[8], 1, "version");
        assert_eq!(body[9], 1, "channels");
        assert_eq!(u16::from_le_bytes([body[10], body[11]]), 312);
        assert_eq!(body.len(), 19);
    }

    #[test]
    fn granules_lacing_and_page_flushes() {
        struct Case {
            name: &'static str,
            frame_len: usize,
            frames: usize,
            flush_frames: usize,
            /// (granule, lacing values) of each audio page, `finish` included.
            expect: Vec<(u64, usize)>,
        }
        let cases = [
            Case {
                name: "a page a second",
                frame_len: 80,
                frames: 120,
                flush_frames: 50,
                expect: vec![(48_000, 50), (96_000, 50), (115_200, 20)],
            },
            Case {
                name: "a packet of exactly 255 bytes ends with a zero lacing value",
                frame_len: 255,
                frames: 2,
                flush_frames: 50,
                expect: vec![(1_920, 4)],
            },
            Case {
                name: "large packets fill the segment table before the second is up",
                frame_len: 1000, // 4 lacing values each: 63 per page
                frames: 70,
                flush_frames: 100,
                expect: vec![(63 * 960, 252), (70 * 960, 28)],
            },
            Case {
                name: "nothing waiting: the end is an empty page",
                frame_len: 80,
                frames: 50,
                flush_frames: 50,
                expect: vec![(48_000, 50), (48_000, 0)],
            },
        ];
        for case in cases {
            let (mut w, mut file) = OggOpusWriter::new(info(case.flush_frames), "stoa");
            let frame = vec![0x5a; case.frame_len];
            for _ in 0..case.frames {
                if let Some(page) = w.push(&frame) {
                    file.extend_from_slice(page);
                }
            }
            file.extend_from_slice(&w.finish());
            let p = pages(&file);
            let audio: Vec<(u64, usize)> = p[2..].iter().map(|p| (p.1, p.3.len())).collect();
            assert_eq!(audio, case.expect, "{}", case.name);
            for (i, page) in p.iter().enumerate() {
                assert_eq!(page.2, i as u32, "{}: page sequence", case.name);
            }
            assert_eq!(p.last().unwrap().0, EOS, "{}", case.name);
            let tail = read_tail(&file).unwrap();
            assert_eq!(tail.valid_len, file.len() as u64);
            assert_eq!(tail.granule, (case.frames * 960) as u64, "{}", case.name);
        }
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_at_the_last_good_page() {
        let (mut w, mut file) = OggOpusWriter::new(info(50), "stoa");
        let mut ends = Vec::new();
        for _ in 0..150 {
            if let Some(page) = w.push(&[7; 60]) {
                file.extend_from_slice(page);
                ends.push(file.len());
            }
        }
        // A process killed mid-write: half of the third second's page.
        let torn = &file[..ends[2] - 100];
        let tail = read_tail(torn).unwrap();
        assert_eq!(tail.valid_len, ends[1] as u64);
        assert_eq!(tail.granule, 96_000);
        assert_eq!(tail.duration_ms(), (96_000 - 312) * 1000 / 48_000);
        // A flipped byte in the second audio page: only the first is trusted.
        let mut corrupt = file.clone();
        corrupt[ends[0] + 40] ^= 1;
        assert_eq!(read_tail(&corrupt).unwrap().valid_len, ends[0] as u64);
        // Not an Ogg Opus file at all.
        assert_eq!(read_tail(b"RIFF....WAVE"), None);
        assert_eq!(read_tail(&[]), None);
    }

    #[test]
    fn the_last_page_trims_the_end_but_not_what_earlier_pages_hold() {
        let (mut w, mut file) = OggOpusWriter::new(info(50), "stoa");
        for _ in 0..60 {
            if let Some(page) = w.push(&[3; 20]) {
                file.extend_from_slice(page);
            }
        }
        let (last, granule) = w.finish_at(58 * 960 + 100);
        assert_eq!(granule, 58 * 960 + 100);
        file.extend_from_slice(&last);
        assert_eq!(read_tail(&file).unwrap().granule, 58 * 960 + 100);
        // Asked to end inside the first page: only the second's packets can go.
        let (mut w, _) = OggOpusWriter::new(info(50), "stoa");
        for _ in 0..60 {
            w.push(&[3; 20]);
        }
        assert_eq!(w.finish_at(10 * 960).1, 50 * 960);
    }

    #[test]
    fn flush_writes_what_waits() {
        let (mut w, _) = OggOpusWriter::new(info(50), "stoa");
        assert!(w.flush().is_none());
        assert!(w.push(&[1; 10]).is_none());
        let page = w.flush().unwrap().to_vec();
        assert_eq!(pages(&page)[0].1, 960);
        assert!(w.flush().is_none());
    }

    /// Runs a Debian tool and returns its standard output.
    fn run(tool: &str, args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool} is needed for this test: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// How many times a run of samples crosses zero upwards per second.
    fn frequency(pcm: &[i16]) -> f64 {
        let ups = pcm.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        ups as f64 * 48_000.0 / pcm.len() as f64
    }

    #[test]
    fn ffmpeg_decodes_a_written_tone_with_its_duration() {
        use opus::{Application, Channels, Encoder};
        let mut enc = Encoder::new(48_000, Channels::Mono, Application::Audio).unwrap();
        let pre_skip = enc.get_lookahead().unwrap() as u16;
        let (mut w, mut file) = OggOpusWriter::new(
            StreamInfo {
                pre_skip,
                ..info(50)
            },
            "stoa test",
        );
        // 3 s of 440 Hz.
        let mut packet = [0u8; 4000];
        for f in 0..150 {
            let pcm: Vec<i16> = (0..960)
                .map(|i| {
                    let t = (f * 960 + i) as f64 / 48_000.0;
                    ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            let n = enc.encode(&pcm, &mut packet).unwrap();
            if let Some(page) = w.push(&packet[..n]) {
                file.extend_from_slice(page);
            }
        }
        // No `finish`: the file as a killed process leaves it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.ogg");
        std::fs::write(&path, &file).unwrap();
        let path = path.to_str().unwrap();
        let probe = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,duration",
                "-of",
                "default=nw=1",
                path,
            ],
        );
        let probe = String::from_utf8(probe).unwrap();
        assert!(probe.contains("codec_name=opus"), "{probe}");
        let duration: f64 = probe
            .lines()
            .find_map(|l| l.strip_prefix("duration="))
            .unwrap()
            .parse()
            .unwrap();
        assert!((duration - 3.0).abs() < 0.03, "{probe}");
        let raw = run(
            "ffmpeg",
            &[
                "-v", "error", "-i", path, "-f", "s16le", "-ac", "1", "-ar", "48000", "-",
            ],
        );
        let pcm: Vec<i16> = raw
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert!(
            (pcm.len() as f64 / 48_000.0 - 3.0).abs() < 0.03,
            "{}",
            pcm.len()
        );
        let hz = frequency(&pcm[4_800..pcm.len() - 4_800]);
        assert!((hz - 440.0).abs() < 5.0, "{hz} Hz");
    }
}

//! The last seconds of a room's mix, kept for clips: the encoded 20 ms frames the mix made,
//! oldest first, at most a fixed number of them. Sans-IO and bounded; a frame is shared with
//! the stream (a reference count, not a copy).

use std::collections::VecDeque;

use bytes::Bytes;

/// A bounded window of the mix's encoded frames.
pub struct Ring {
    frames: VecDeque<Bytes>,
    capacity: usize,
    /// The index in the stream (frames since the mix started) of the oldest frame kept.
    first_index: u64,
    /// Bytes of audio held (the frames' payloads).
    bytes: usize,
}

/// What a ring holds at one moment, for a clip.
pub struct Window {
    pub frames: Vec<Bytes>,
    /// The stream index of `frames[0]`.
    pub first_index: u64,
}

impl Ring {
    /// A ring of at most `capacity` frames (0 keeps nothing).
    pub fn new(capacity: usize) -> Self {
        Ring {
            frames: VecDeque::with_capacity(capacity),
            capacity,
            first_index: 0,
            bytes: 0,
        }
    }

    /// The mix's next frame; the oldest goes when the ring is full.
    pub fn push(&mut self, frame: &Bytes) {
        if self.capacity == 0 {
            self.first_index += 1;
            return;
        }
        if self.frames.len() == self.capacity
            && let Some(old) = self.frames.pop_front()
        {
            self.bytes -= old.len();
            self.first_index += 1;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame.clone());
    }

    /// The frames held now, copied out (references, not audio) so the mix goes on.
    pub fn window(&self) -> Window {
        Window {
            frames: self.frames.iter().cloned().collect(),
            first_index: self.first_index,
        }
    }

    /// Bytes of audio held, for the memory it costs.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_frames_and_counts_the_stream() {
        let mut ring = Ring::new(3);
        for i in 0..5u8 {
            ring.push(&Bytes::from(vec![i; 10 + usize::from(i)]));
        }
        let w = ring.window();
        assert_eq!(w.first_index, 2);
        assert_eq!(w.frames.iter().map(|f| f[0]).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(ring.bytes(), 12 + 13 + 14);
        let mut none = Ring::new(0);
        none.push(&Bytes::from_static(b"x"));
        assert!(none.is_empty());
        assert_eq!(none.window().first_index, 1);
    }
}

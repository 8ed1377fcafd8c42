//! Chooses which speakers of a room fill its audio slots: the loudest active ones by smoothed
//! RFC 6464 level, with hysteresis so slots do not flap and a speaker keeps its slot index.
//! Pure and clock-free (times are passed in): no I/O, no locks, no allocation per observation.

use std::ops::Range;

/// Opus frames as browsers send them; one packet stands for this much audio.
const FRAME_US: u64 = 20_000;
/// RFC 6464's quietest value: -127 dBov, silence.
const SILENT_LEVEL: u8 = 127;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SelectorConfig {
    /// Slots every listener hears.
    pub slots: usize,
    /// The quietest level (-dBov) that counts as speech; quieter packets count as silence, so
    /// a muted-but-sending or noise-only microphone never claims a slot.
    pub speech_level: u8,
    /// Time constant of the level smoothing.
    pub smoothing_us: u64,
    /// A speaker with no speech for this long is silent: no longer a candidate, and a slot
    /// they hold goes to the next active speaker at once.
    pub silence_after_us: u64,
    /// How much louder than the weakest selected speaker a challenger must be…
    pub switch_margin_db: f32,
    /// …without a break for this long, before taking that speaker's slot.
    pub switch_hold_us: u64,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        Self {
            slots: 3,
            speech_level: 60,
            // With a 200 ms hold, speakers of equal level taking turns hand over in ~0.4 s.
            smoothing_us: 120_000,
            silence_after_us: 500_000,
            switch_margin_db: 6.0,
            switch_hold_us: 200_000,
        }
    }
}

/// A speaker's smoothed level, for telling clients who is talking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeakerLevel<K> {
    pub key: K,
    /// -dBov, 0 loudest, 127 silence.
    pub level: u8,
}

#[derive(Clone, Copy, Debug)]
struct Speaker<K> {
    key: K,
    /// Smoothed linear power (1.0 is 0 dBov) as of `last_packet_us`.
    energy: f32,
    last_packet_us: u64,
    last_speech_us: Option<u64>,
    /// When the speaker's current run of speech began (their first speech after silence).
    speech_since_us: u64,
    /// Per tier (slots, reserve): since when this speaker has been louder than the tier's
    /// weakest member by the margin, without a break.
    louder_since_us: [Option<u64>; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
enum Occupant {
    Empty,
    Silent,
    Active(f32),
}

const SLOTS_TIER: usize = 0;
const RESERVE_TIER: usize = 1;

/// The slot assignment of one room. Feed it every speaker packet's level (`observe`), call
/// `update` on a steady tick (every 20–50 ms) and read `slots`/`slots_for` when it reports a
/// change.
#[derive(Clone, Debug)]
pub struct SpeakerSelector<K> {
    config: SelectorConfig,
    margin: f32,
    frame_weight: f32,
    speakers: Vec<Speaker<K>>,
    /// `config.slots` slots, then one reserve: the best speaker outside the slots, heard
    /// instead of themselves by a selected speaker (nobody hears their own voice).
    ranked: Vec<Option<K>>,
    generation: u64,
}

impl<K: Copy + Eq> SpeakerSelector<K> {
    /// A `config.slots` of 0 is taken as 1.
    pub fn new(config: SelectorConfig) -> Self {
        Self::with_capacity(config, 0)
    }

    /// Reserves room for `speakers` distinct speakers so `observe` never allocates below it.
    pub fn with_capacity(config: SelectorConfig, speakers: usize) -> Self {
        let config = SelectorConfig {
            slots: config.slots.max(1),
            smoothing_us: config.smoothing_us.max(1),
            ..config
        };
        Self {
            margin: 10f32.powf(config.switch_margin_db / 10.0),
            frame_weight: 1.0 - decay(FRAME_US, config.smoothing_us),
            speakers: Vec::with_capacity(speakers),
            ranked: vec![None; config.slots + 1],
            generation: 0,
            config,
        }
    }

    pub fn config(&self) -> &SelectorConfig {
        &self.config
    }

    /// Records one packet's audio level. Speakers are remembered from their first packet
    /// until `remove`.
    pub fn observe(&mut self, key: K, level: u8, voice_activity: bool, now_us: u64) {
        let level = level.min(SILENT_LEVEL);
        let speech = voice_activity && level <= self.config.speech_level;
        let power = if speech { power_of(level) } else { 0.0 };
        let index = match self.speakers.iter().position(|s| s.key == key) {
            Some(index) => index,
            None => {
                self.speakers.push(Speaker {
                    key,
                    energy: 0.0,
                    last_packet_us: now_us,
                    last_speech_us: None,
                    speech_since_us: now_us,
                    louder_since_us: [None; 2],
                });
                self.speakers.len() - 1
            }
        };
        let speaker = &mut self.speakers[index];
        // Each packet weighs as one frame, whatever its arrival jitter; a gap longer than a
        // frame (DTX, loss, a stopped sender) is silence.
        let gap = now_us
            .saturating_sub(speaker.last_packet_us)
            .saturating_sub(FRAME_US);
        speaker.energy *= decay(gap, self.config.smoothing_us);
        speaker.energy += (power - speaker.energy) * self.frame_weight;
        speaker.last_packet_us = speaker.last_packet_us.max(now_us);
        if speech {
            let resumed = speaker
                .last_speech_us
                .is_none_or(|t| now_us.saturating_sub(t) >= self.config.silence_after_us);
            if resumed {
                speaker.speech_since_us = now_us;
            }
            speaker.last_speech_us = Some(speaker.last_speech_us.map_or(now_us, |t| t.max(now_us)));
        }
    }

    /// Forgets a speaker (left the stage, disconnected); a slot they held is empty until the
    /// next `update` fills it. Returns whether the slots or the reserve changed.
    pub fn remove(&mut self, key: K) -> bool {
        self.speakers.retain(|s| s.key != key);
        let mut changed = false;
        for slot in self.ranked.iter_mut().filter(|slot| **slot == Some(key)) {
            *slot = None;
            changed = true;
        }
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Re-decides the slots and the reserve. Returns whether either changed.
    pub fn update(&mut self, now_us: u64) -> bool {
        let before = self.generation;
        self.refresh(SLOTS_TIER, now_us);
        self.refresh(RESERVE_TIER, now_us);
        self.generation != before
    }

    /// Who each slot carries, by slot index; what a listener who is not selected hears.
    pub fn slots(&self) -> &[Option<K>] {
        &self.ranked[..self.config.slots]
    }

    /// The best active speaker outside the slots.
    pub fn reserve(&self) -> Option<K> {
        self.ranked[self.config.slots]
    }

    /// What `listener` hears in each slot: the common slots, except that a selected speaker
    /// hears the reserve in their own slot instead of themselves.
    pub fn slots_for(&self, listener: K) -> impl Iterator<Item = Option<K>> + '_ {
        let reserve = self.reserve();
        self.slots().iter().map(move |&slot| {
            if slot == Some(listener) {
                reserve
            } else {
                slot
            }
        })
    }

    /// The slot index carrying `key`, if any.
    pub fn slot_of(&self, key: K) -> Option<usize> {
        self.slots().iter().position(|&slot| slot == Some(key))
    }

    /// Bumped by every change of the slots or the reserve.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Speakers heard speaking within the silence window, with their smoothed level.
    pub fn active_speakers(&self, now_us: u64) -> impl Iterator<Item = SpeakerLevel<K>> + '_ {
        self.speakers
            .iter()
            .filter(move |s| self.is_active(s, now_us))
            .map(move |s| SpeakerLevel {
                key: s.key,
                level: level_of(self.energy_at(s, now_us)),
            })
    }

    /// When `key` changed between speaking and silent last, as of `now_us`: the start of
    /// their current run of speech if they speak, else the moment their last run was over
    /// (`silence_after_us` after its last speech). `None` for a speaker it does not know.
    pub fn speaking_changed_at(&self, key: K, now_us: u64) -> Option<u64> {
        let speaker = self.speakers.iter().find(|s| s.key == key)?;
        Some(if self.is_active(speaker, now_us) {
            speaker.speech_since_us
        } else {
            speaker
                .last_speech_us
                .map_or(speaker.last_packet_us, |t| t + self.config.silence_after_us)
                .min(now_us)
        })
    }

    fn tier_range(&self, tier: usize) -> Range<usize> {
        let slots = self.config.slots;
        if tier == SLOTS_TIER {
            0..slots
        } else {
            slots..slots + 1
        }
    }

    /// Candidates for a tier are active speakers not already in it or in a tier above it.
    /// The reserve is a candidate for the slots, so promoting it is an ordinary replacement.
    fn refresh(&mut self, tier: usize, now_us: u64) {
        let range = self.tier_range(tier);
        // Empty slots, and slots of speakers gone quiet, go to the strongest candidate at once.
        loop {
            let (index, occupant) = self.weakest(range.clone(), now_us);
            if matches!(occupant, Occupant::Active(_)) {
                break;
            }
            let Some(candidate) = self.strongest_candidate(range.end, now_us) else {
                break;
            };
            self.assign(index, self.speakers[candidate].key);
        }
        // A full tier of active speakers: a challenger must beat its weakest by the margin for
        // the hold time. Timers run per speaker so several newcomers can enter together.
        loop {
            let (index, Occupant::Active(weakest)) = self.weakest(range.clone(), now_us) else {
                self.reset_timers(tier);
                return;
            };
            let threshold = weakest * self.margin;
            let mut winner: Option<(usize, f32)> = None;
            for candidate in 0..self.speakers.len() {
                let speaker = self.speakers[candidate];
                let energy = self.energy_at(&speaker, now_us);
                let louder = self.is_active(&speaker, now_us)
                    && !self.ranked[..range.end].contains(&Some(speaker.key))
                    && energy > threshold;
                let since = &mut self.speakers[candidate].louder_since_us[tier];
                if !louder {
                    *since = None;
                    continue;
                }
                let since = *since.get_or_insert(now_us);
                let held = now_us.saturating_sub(since) >= self.config.switch_hold_us;
                if held && winner.is_none_or(|(_, best)| energy > best) {
                    winner = Some((candidate, energy));
                }
            }
            let Some((candidate, _)) = winner else {
                return;
            };
            self.speakers[candidate].louder_since_us[tier] = None;
            self.assign(index, self.speakers[candidate].key);
        }
    }

    fn reset_timers(&mut self, tier: usize) {
        for speaker in &mut self.speakers {
            speaker.louder_since_us[tier] = None;
        }
    }

    /// The slot in `range` to give away first: empty, then silent, then the quietest.
    fn weakest(&self, range: Range<usize>, now_us: u64) -> (usize, Occupant) {
        let mut weakest = (range.start, Occupant::Active(f32::INFINITY));
        for index in range {
            let occupant = match self.ranked[index] {
                None => Occupant::Empty,
                Some(key) => match self.speakers.iter().find(|s| s.key == key) {
                    None => Occupant::Empty,
                    Some(s) if !self.is_active(s, now_us) => Occupant::Silent,
                    Some(s) => Occupant::Active(self.energy_at(s, now_us)),
                },
            };
            if occupant < weakest.1 {
                weakest = (index, occupant);
            }
        }
        weakest
    }

    /// Index into `speakers` of the loudest active speaker not in `ranked[..end]`.
    fn strongest_candidate(&self, end: usize, now_us: u64) -> Option<usize> {
        let mut best: Option<(usize, f32)> = None;
        for (index, speaker) in self.speakers.iter().enumerate() {
            if !self.is_active(speaker, now_us) || self.ranked[..end].contains(&Some(speaker.key)) {
                continue;
            }
            let energy = self.energy_at(speaker, now_us);
            if best.is_none_or(|(_, e)| energy > e) {
                best = Some((index, energy));
            }
        }
        best.map(|(index, _)| index)
    }

    /// Puts `key` in slot `index`, moving it out of any other (the reserve, when promoted).
    fn assign(&mut self, index: usize, key: K) {
        for slot in self.ranked.iter_mut().filter(|slot| **slot == Some(key)) {
            *slot = None;
        }
        self.ranked[index] = Some(key);
        self.generation += 1;
    }

    fn is_active(&self, speaker: &Speaker<K>, now_us: u64) -> bool {
        speaker
            .last_speech_us
            .is_some_and(|t| now_us.saturating_sub(t) < self.config.silence_after_us)
    }

    /// The smoothed power as of `now_us`: no packet since the last one means silence.
    fn energy_at(&self, speaker: &Speaker<K>, now_us: u64) -> f32 {
        let gap = now_us
            .saturating_sub(speaker.last_packet_us)
            .saturating_sub(FRAME_US);
        speaker.energy * decay(gap, self.config.smoothing_us)
    }
}

/// Smoothing is done on power, not dB, so one loud syllable counts for more than it would in
/// an average of logarithms, as the ear hears it.
fn power_of(level: u8) -> f32 {
    10f32.powf(-f32::from(level) / 10.0)
}

fn level_of(energy: f32) -> u8 {
    if energy <= 0.0 {
        return SILENT_LEVEL;
    }
    (-10.0 * energy.log10())
        .round()
        .clamp(0.0, f32::from(SILENT_LEVEL)) as u8
}

fn decay(elapsed_us: u64, time_constant_us: u64) -> f32 {
    (-(elapsed_us as f32) / time_constant_us as f32).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;
    const D: u32 = 4;
    const E: u32 = 5;
    const TICK_MS: u64 = 20;

    #[derive(Clone, Copy, Debug)]
    enum Sound {
        Speech(u8),
        /// Packets still flow, flagged and measured as silence.
        Silence,
        /// No packets at all (muted by stopping the track, or gone).
        Nothing,
    }
    use Sound::{Nothing, Silence, Speech};

    /// A room driven tick by tick: every 20 ms each speaker sends per its `Sound`, then the
    /// selector updates, as a media worker would.
    struct Room {
        selector: SpeakerSelector<u32>,
        now_ms: u64,
    }

    impl Room {
        fn new(slots: usize) -> Self {
            Self {
                selector: SpeakerSelector::new(SelectorConfig {
                    slots,
                    ..SelectorConfig::default()
                }),
                now_ms: 0,
            }
        }

        fn tick(&mut self, sounds: &[(u32, Sound)]) -> bool {
            let now_us = self.now_ms * 1000;
            for &(key, sound) in sounds {
                match sound {
                    Speech(level) => self.selector.observe(key, level, true, now_us),
                    Silence => self.selector.observe(key, SILENT_LEVEL, false, now_us),
                    Nothing => {}
                }
            }
            let changed = self.selector.update(now_us);
            self.now_ms += TICK_MS;
            changed
        }

        fn run(&mut self, ms: u64, sounds: &[(u32, Sound)]) {
            for _ in 0..ms / TICK_MS {
                self.tick(sounds);
            }
        }

        /// Runs until `done` holds, returning how long that took, or `None` within `limit_ms`.
        fn run_until(
            &mut self,
            limit_ms: u64,
            sounds: &[(u32, Sound)],
            done: impl Fn(&[Option<u32>]) -> bool,
        ) -> Option<u64> {
            let start = self.now_ms;
            while self.now_ms - start <= limit_ms {
                self.tick(sounds);
                if done(self.selector.slots()) {
                    return Some(self.now_ms - start);
                }
            }
            None
        }

        fn slots(&self) -> Vec<Option<u32>> {
            self.selector.slots().to_vec()
        }

        fn selected(&self) -> Vec<u32> {
            let mut keys: Vec<u32> = self.selector.slots().iter().flatten().copied().collect();
            keys.sort_unstable();
            keys
        }
    }

    #[test]
    fn a_single_speaker_takes_slot_zero_at_once() {
        let mut room = Room::new(3);
        assert!(room.tick(&[(A, Speech(40))]));
        assert_eq!(room.slots(), [Some(A), None, None]);
        assert_eq!(room.selector.generation(), 1);
        assert_eq!(room.selector.slot_of(A), Some(0));
        assert!(
            !room.tick(&[(A, Speech(40))]),
            "nothing changes while A talks alone"
        );
    }

    #[test]
    fn noise_and_silence_never_claim_a_slot() {
        let mut room = Room::new(3);
        room.run(1000, &[(A, Speech(75)), (B, Silence)]);
        assert_eq!(room.slots(), [None, None, None]);
        assert_eq!(room.selector.active_speakers(room.now_ms * 1000).count(), 0);
    }

    #[test]
    fn five_speakers_leave_the_loudest_three_selected() {
        let sounds = [
            (A, Speech(60)),
            (B, Speech(50)),
            (C, Speech(40)),
            (D, Speech(30)),
            (E, Speech(20)),
        ];
        let mut room = Room::new(3);
        room.run(1000, &sounds);
        assert_eq!(
            room.slots(),
            [Some(E), Some(D), Some(C)],
            "loudest first when all start together"
        );
        assert_eq!(room.selector.reserve(), Some(B));

        // The quiet ones first: the loud ones must still win their way in, together.
        let mut room = Room::new(3);
        room.run(200, &sounds[..3]);
        assert_eq!(room.selected(), [A, B, C]);
        let slot_of_c = room.selector.slot_of(C);
        room.run(500, &sounds);
        assert_eq!(room.selected(), [C, D, E]);
        assert_eq!(
            room.selector.slot_of(C),
            slot_of_c,
            "C kept its slot throughout"
        );
    }

    #[test]
    fn the_slot_follows_a_change_of_loudest_within_500_ms() {
        struct Handover {
            name: &'static str,
            before: [(u32, Sound); 2],
            after: [(u32, Sound); 2],
        }
        let cases = [
            Handover {
                name: "turn-taking at equal level",
                before: [(A, Speech(30)), (B, Silence)],
                after: [(A, Silence), (B, Speech(30))],
            },
            Handover {
                name: "the old speaker's packets stop altogether",
                before: [(A, Speech(30)), (B, Silence)],
                after: [(A, Nothing), (B, Speech(30))],
            },
            Handover {
                name: "the next speaker is much quieter",
                before: [(A, Speech(20)), (B, Speech(45))],
                after: [(A, Silence), (B, Speech(45))],
            },
            Handover {
                name: "a much louder voice joins a talking one",
                before: [(A, Speech(45)), (B, Silence)],
                after: [(A, Speech(45)), (B, Speech(25))],
            },
        ];
        for case in cases {
            let mut room = Room::new(1);
            room.run(2000, &case.before);
            assert_eq!(room.slots(), [Some(A)], "{}", case.name);
            let took = room.run_until(2000, &case.after, |slots| slots == [Some(B)]);
            let took = took.unwrap_or_else(|| panic!("{}: B never took the slot", case.name));
            assert!(took <= 500, "{}: took {took} ms", case.name);
        }
    }

    #[test]
    fn a_loud_newcomer_takes_the_weakest_slot_and_others_keep_theirs() {
        let mut room = Room::new(3);
        let talking = [(A, Speech(38)), (B, Speech(40)), (C, Speech(42))];
        room.run(1000, &talking);
        assert_eq!(room.slots(), [Some(A), Some(B), Some(C)]);
        let with_d = [talking[0], talking[1], talking[2], (D, Speech(25))];
        let took = room.run_until(2000, &with_d, |slots| slots.contains(&Some(D)));
        assert!(took.is_some_and(|ms| ms <= 500), "took {took:?}");
        assert_eq!(room.slots(), [Some(A), Some(B), Some(D)]);
    }

    #[test]
    fn near_equal_speakers_do_not_flap() {
        // Levels wander ±3 dB around the same mean, independently, for a minute.
        let mut rng = 0x1234_5678_9ABC_DEF1u64;
        let mut wobble = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 7) as u8
        };
        let mut room = Room::new(1);
        room.tick(&[(A, Speech(30)), (B, Speech(30))]);
        let first = room.slots();
        for _ in 0..3000 {
            let sounds = [(A, Speech(27 + wobble())), (B, Speech(27 + wobble()))];
            room.tick(&sounds);
            assert_eq!(room.slots(), first, "flapped at {} ms", room.now_ms);
        }
        assert_eq!(
            room.selector.generation(),
            2,
            "one slot and one reserve, set once"
        );
    }

    #[test]
    fn a_short_loud_burst_does_not_take_a_slot() {
        let mut room = Room::new(1);
        room.run(1000, &[(A, Speech(40)), (B, Silence)]);
        // A cough 14 dB over the speaker, for two frames.
        room.run(40, &[(A, Speech(40)), (B, Speech(26))]);
        room.run(1000, &[(A, Speech(40)), (B, Silence)]);
        assert_eq!(room.slots(), [Some(A)]);
    }

    #[test]
    fn a_margin_too_small_never_displaces_an_active_speaker() {
        let mut room = Room::new(1);
        room.run(1000, &[(A, Speech(34)), (B, Silence)]);
        room.run(5000, &[(A, Speech(34)), (B, Speech(30))]);
        assert_eq!(room.slots(), [Some(A)], "4 dB louder is not enough");
        assert_eq!(room.selector.reserve(), Some(B));
    }

    #[test]
    fn a_speaker_who_stops_is_replaced_in_their_slot() {
        let mut room = Room::new(3);
        let quiet_d = (D, Speech(55));
        room.run(
            1000,
            &[(A, Speech(30)), (B, Speech(30)), (C, Speech(30)), quiet_d],
        );
        assert_eq!(
            room.slots(),
            [Some(A), Some(B), Some(C)],
            "D is too quiet to enter"
        );
        let took = room.run_until(
            1000,
            &[(A, Speech(30)), (B, Silence), (C, Speech(30)), quiet_d],
            |slots| slots.contains(&Some(D)),
        );
        assert!(took.is_some_and(|ms| ms <= 500), "took {took:?}");
        assert_eq!(room.slots(), [Some(A), Some(D), Some(C)]);
    }

    #[test]
    fn a_silent_speaker_keeps_the_slot_while_nobody_else_talks() {
        let mut room = Room::new(1);
        room.run(500, &[(A, Speech(30))]);
        room.run(3000, &[(A, Silence), (B, Silence)]);
        assert_eq!(room.slots(), [Some(A)], "no needless switch to nobody");
        assert!(
            room.tick(&[(A, Silence), (B, Speech(50))]),
            "B takes the slot at once"
        );
        assert_eq!(room.slots(), [Some(B)]);
    }

    #[test]
    fn removal_frees_the_slot_for_the_next_speaker() {
        let mut room = Room::new(3);
        let sounds = [
            (A, Speech(30)),
            (B, Speech(30)),
            (C, Speech(30)),
            (D, Speech(55)),
        ];
        room.run(1000, &sounds);
        assert_eq!(room.slots(), [Some(A), Some(B), Some(C)]);
        assert!(room.selector.remove(B));
        assert_eq!(room.slots(), [Some(A), None, Some(C)]);
        assert!(room.tick(&[sounds[0], sounds[2], sounds[3]]));
        assert_eq!(room.slots(), [Some(A), Some(D), Some(C)]);

        assert!(room.selector.remove(D));
        assert_eq!(room.slots(), [Some(A), None, Some(C)]);
        assert!(
            !room.tick(&[sounds[0], sounds[2]]),
            "nobody left to fill it"
        );
        assert_eq!(room.slots(), [Some(A), None, Some(C)]);
        assert!(
            !room.selector.remove(E),
            "an unknown speaker changes nothing"
        );
    }

    #[test]
    fn nobody_hears_themselves() {
        let mut room = Room::new(2);
        room.run(1000, &[(A, Speech(20)), (B, Speech(30)), (C, Speech(40))]);
        assert_eq!(room.slots(), [Some(A), Some(B)]);
        assert_eq!(room.selector.reserve(), Some(C));
        let heard = |room: &Room, listener| room.selector.slots_for(listener).collect::<Vec<_>>();
        assert_eq!(heard(&room, A), [Some(C), Some(B)]);
        assert_eq!(heard(&room, B), [Some(A), Some(C)]);
        assert_eq!(heard(&room, C), [Some(A), Some(B)]);
        assert_eq!(heard(&room, E), [Some(A), Some(B)]);

        let mut pair = Room::new(2);
        pair.run(1000, &[(A, Speech(20)), (B, Speech(30))]);
        assert_eq!(
            heard(&pair, A),
            [None, Some(B)],
            "no reserve: A's slot is quiet for A"
        );
    }

    #[test]
    fn the_reserve_is_promoted_when_a_slot_frees() {
        let mut room = Room::new(2);
        let sounds = [
            (A, Speech(20)),
            (B, Speech(30)),
            (C, Speech(40)),
            (D, Speech(50)),
        ];
        room.run(1000, &sounds);
        assert_eq!(
            (room.slots(), room.selector.reserve()),
            (vec![Some(A), Some(B)], Some(C))
        );
        room.selector.remove(A);
        room.tick(&sounds[1..]);
        assert_eq!(
            (room.slots(), room.selector.reserve()),
            (vec![Some(C), Some(B)], Some(D))
        );
    }

    #[test]
    fn a_speaker_changed_between_speaking_and_silent_when_the_audio_did() {
        let mut room = Room::new(3);
        room.run(400, &[(A, Silence)]);
        assert_eq!(
            room.selector.speaking_changed_at(B, 400_000),
            None,
            "unknown"
        );
        // Speech from 400 ms on: speaking since its first packet, however late one asks.
        room.run(1000, &[(A, Speech(30))]);
        assert_eq!(
            room.selector.speaking_changed_at(A, 1_400_000),
            Some(400_000)
        );
        // A short pause within the silence window is the same run of speech.
        room.run(200, &[(A, Silence)]);
        room.run(200, &[(A, Speech(30))]);
        assert_eq!(
            room.selector.speaking_changed_at(A, 1_800_000),
            Some(400_000)
        );
        // Quiet from 1,800 ms (the last speech at 1,780): silent from 500 ms after it.
        room.run(1000, &[(A, Silence)]);
        assert_eq!(
            room.selector.speaking_changed_at(A, 2_800_000),
            Some(2_280_000)
        );
        // Speaking again starts a new run.
        room.run(100, &[(A, Speech(30))]);
        assert_eq!(
            room.selector.speaking_changed_at(A, 2_900_000),
            Some(2_800_000)
        );
    }

    #[test]
    fn active_speakers_report_smoothed_levels() {
        let mut room = Room::new(3);
        room.run(1000, &[(A, Speech(30)), (B, Silence), (C, Speech(70))]);
        let now_us = room.now_ms * 1000;
        let active: Vec<_> = room.selector.active_speakers(now_us).collect();
        assert_eq!(active, [SpeakerLevel { key: A, level: 30 }]);
        let later: Vec<_> = room.selector.active_speakers(now_us + 600_000).collect();
        assert_eq!(later, [], "silent after 500 ms without speech");
    }
}

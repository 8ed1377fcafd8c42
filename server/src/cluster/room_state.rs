//! A live room's state kept in Redis by its home (`stoa:room-state:{id}`), so that the node
//! that takes the room over puts it back. Writes are fenced by the lease: only the node
//! holding the room's current lease writes, and never over a later placement's state.
//!
//! The value is `{node} {epoch} {seq}\n{json}`: who wrote it, under which lease epoch, the
//! writer's sequence number (a slow write never overwrites a newer one of the same lease),
//! then the room's saved state (`room::SavedRoom`, whose JSON this module does not read).

use super::Cluster;
use super::placement::ROOM_PREFIX;

pub(super) const STATE_PREFIX: &str = "stoa:room-state:";
/// A saved room larger than this is refused on reading (2,000 people fit in a quarter of it).
pub const MAX_ROOM_STATE_BYTES: usize = 1 << 20;

/// Writes the state if the lease is `ARGV[1]` (`{node} {epoch}`) and what is there is not from
/// a later epoch, or the same epoch's later sequence number. 1 written, 0 not the lease
/// holder, -1 a newer state is there.
const SAVE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local held = redis.call('GET', KEYS[2])
if held then
  local epoch, seq = string.match(held, '^%S+ (%d+) (%d+)\n')
  epoch, seq = tonumber(epoch), tonumber(seq)
  local mine, my_seq = tonumber(ARGV[4]), tonumber(ARGV[5])
  if epoch and (epoch > mine or (epoch == mine and seq > my_seq)) then return -1 end
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1";

/// The value's length, and the value unless it is longer than `ARGV[1]` bytes.
const LOAD: &str = r"
local n = redis.call('STRLEN', KEYS[1])
if n == 0 or n > tonumber(ARGV[1]) then return {n, false} end
return {n, redis.call('GET', KEYS[1])}";

/// Deletes the state if the lease is `ARGV[1]`.
const FORGET: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[2])";

/// What became of a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Saved {
    Written,
    /// This node does not hold the room's lease (lost, or Redis forgot it): nothing written.
    NotHeld,
    /// A newer state is there (a later placement's, or a later write of this one).
    Stale,
}

/// A room's state as found when the room starts here.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing kept: the room starts from the store.
    Nothing,
    /// The saved room's JSON, written by `node` under an earlier lease (or this node's own).
    State {
        node: String,
        epoch: u64,
        json: String,
    },
    /// Something is there that must not be used; the reason's stable word, and details.
    Refused(&'static str, String),
}

impl Cluster {
    /// The epoch of the lease this node holds on `room`, if it holds one.
    pub fn held_epoch(&self, room: &str) -> Option<u64> {
        self.held().get(room).map(|h| h.epoch)
    }

    /// How long a room's state outlives its home's last lease renewal: a lease's lifetime
    /// plus the resume grace, after which nobody in it could come back anyway.
    pub fn room_state_ttl_ms(&self) -> u64 {
        self.inner.settings.node_ttl_ms
            + self
                .inner
                .resume_grace_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes the room's state under the lease this node holds; `seq` grows with each write.
    pub async fn save_room_state(
        &self,
        room: &str,
        seq: u64,
        json: &str,
    ) -> redis::RedisResult<Saved> {
        let Some(epoch) = self.held_epoch(room) else {
            return Ok(Saved::NotHeld);
        };
        let lease = format!("{} {epoch}", self.inner.name);
        let written: i64 = redis::Script::new(SAVE)
            .key(format!("{ROOM_PREFIX}{room}"))
            .key(format!("{STATE_PREFIX}{room}"))
            .arg(&lease)
            .arg(format!("{lease} {seq}\n{json}"))
            .arg(self.room_state_ttl_ms())
            .arg(epoch)
            .arg(seq)
            .invoke_async(&mut self.redis())
            .await?;
        Ok(match written {
            1 => Saved::Written,
            0 => Saved::NotHeld,
            _ => Saved::Stale,
        })
    }

    /// The room's kept state, for this node starting it under the lease of epoch `epoch`.
    /// Only a state written under an earlier lease, or by this node under this one, is used.
    pub async fn load_room_state(&self, room: &str, epoch: u64) -> redis::RedisResult<Found> {
        let (len, value): (usize, Option<Vec<u8>>) = redis::Script::new(LOAD)
            .key(format!("{STATE_PREFIX}{room}"))
            .arg(MAX_ROOM_STATE_BYTES)
            .invoke_async(&mut self.redis())
            .await?;
        if len == 0 {
            return Ok(Found::Nothing);
        }
        let Some(value) = value else {
            let limit = MAX_ROOM_STATE_BYTES;
            return Ok(Found::Refused(
                "oversize",
                format!("{len} bytes, more than {limit}"),
            ));
        };
        Ok(self.judge(value, epoch))
    }

    fn judge(&self, value: Vec<u8>, epoch: u64) -> Found {
        let refused = |why: &str| Found::Refused("unparsable", why.to_owned());
        let Ok(text) = String::from_utf8(value) else {
            return refused("not UTF-8");
        };
        let Some((header, json)) = text.split_once('\n') else {
            return refused("no `{node} {epoch} {seq}` line");
        };
        let mut fields = header.split(' ');
        let (Some(node), Some(Ok(saved_epoch)), Some(Ok(_seq)), None) = (
            fields.next(),
            fields.next().map(str::parse::<u64>),
            fields.next().map(str::parse::<u64>),
            fields.next(),
        ) else {
            return refused("no `{node} {epoch} {seq}` line");
        };
        let ours = node == self.inner.name;
        if saved_epoch > epoch || (saved_epoch == epoch && !ours) {
            return Found::Refused(
                "epoch_mismatch",
                format!(
                    "written by {node} under epoch {saved_epoch}; this node holds epoch {epoch}"
                ),
            );
        }
        Found::State {
            node: node.to_owned(),
            epoch: saved_epoch,
            json: json.to_owned(),
        }
    }

    /// Deletes the room's state (it ended, or nobody is left in it), if this node holds it.
    pub async fn forget_room_state(&self, room: &str) -> redis::RedisResult<()> {
        let Some(epoch) = self.held_epoch(room) else {
            return Ok(());
        };
        let _: i64 = redis::Script::new(FORGET)
            .key(format!("{ROOM_PREFIX}{room}"))
            .key(format!("{STATE_PREFIX}{room}"))
            .arg(format!("{} {epoch}", self.inner.name))
            .invoke_async(&mut self.redis())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::placement::tests::node;
    use super::super::throwaway_redis;
    use super::{Found, Saved};
    use crate::cluster::Home;

    /// The home writes, a node that lost the room cannot, and the new home reads only what
    /// an earlier lease wrote.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_rooms_home_writes_its_state_and_a_later_home_reads_it() {
        let redis = throwaway_redis::Redis::start();
        let (a, _a_listens) = node("node-a", &redis).await;
        let (b, _b_listens) = node("node-b", &redis).await;
        let room = "rm_keptstate000000";
        let Home::Here(first) = a.claim(room).await.unwrap() else {
            panic!("node-a takes the room");
        };
        assert_eq!(
            a.save_room_state(room, 2, "{\"v\":1}").await.unwrap(),
            Saved::Written
        );
        // An older write of the same lease arriving late changes nothing.
        assert_eq!(
            a.save_room_state(room, 1, "{\"old\":1}").await.unwrap(),
            Saved::Stale
        );
        assert_eq!(
            b.save_room_state(room, 9, "{}").await.unwrap(),
            Saved::NotHeld
        );
        let key = format!("stoa:room-state:{room}");
        let raw = redis.cli(&["--raw", "GET", &key]);
        assert_eq!(
            raw.trim_end(),
            format!("node-a {} 2\n{{\"v\":1}}", first.epoch)
        );
        let ttl: u64 = redis.cli(&["PTTL", &key]).trim().parse().unwrap();
        assert!(ttl > 0 && ttl <= a.room_state_ttl_ms(), "{ttl}");

        // node-b takes the room over (node-a's lease released, as after its death).
        a.release(room, first.epoch).await.unwrap();
        let Home::Here(second) = b.claim(room).await.unwrap() else {
            panic!("node-b takes the room");
        };
        assert!(second.epoch > first.epoch);
        assert_eq!(
            b.load_room_state(room, second.epoch).await.unwrap(),
            Found::State {
                node: "node-a".into(),
                epoch: first.epoch,
                json: "{\"v\":1}".into()
            }
        );
        // node-a, which no longer holds the room, cannot write over it or delete it.
        a.held()
            .insert(room.into(), super::super::placement::Held::now(first.epoch));
        assert_eq!(
            a.save_room_state(room, 3, "{\"late\":1}").await.unwrap(),
            Saved::NotHeld
        );
        a.forget_room_state(room).await.unwrap();
        assert!(redis.cli(&["--raw", "GET", &key]).contains("{\"v\":1}"));

        // What a later placement wrote is refused; so are garbage and oversize values.
        let later = format!("node-c {} 1\n{{}}", second.epoch + 1);
        redis.cli(&["SET", &key, &later]);
        assert!(matches!(
            b.load_room_state(room, second.epoch).await.unwrap(),
            Found::Refused("epoch_mismatch", _)
        ));
        redis.cli(&["SET", &key, "garbage"]);
        assert!(matches!(
            b.load_room_state(room, second.epoch).await.unwrap(),
            Found::Refused("unparsable", _)
        ));
        redis.cli(&[
            "SETRANGE",
            &key,
            &super::MAX_ROOM_STATE_BYTES.to_string(),
            "x",
        ]);
        assert!(matches!(
            b.load_room_state(room, second.epoch).await.unwrap(),
            Found::Refused("oversize", _)
        ));

        // The home deletes it when the room ends.
        assert_eq!(
            b.save_room_state(room, 1, "{}").await.unwrap(),
            Saved::Written
        );
        b.forget_room_state(room).await.unwrap();
        assert_eq!(
            b.load_room_state(room, second.epoch).await.unwrap(),
            Found::Nothing
        );
    }
}

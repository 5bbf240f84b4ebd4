//! Orders on Redis, shared by every process. A commit is one Lua script
//! (event-id check, compare-and-set on the seq, state, entries, trim,
//! expiry), so it is atomic.
//!
//! Keys — every key of one order shares the hash tag `{order_id}`, so an
//! order's script touches one cluster slot:
//! - `wp:order:{id}` hash: `seq` (highest timeline seq), `json` (the
//!   state);
//! - `wp:order:{id}:log` sorted set, score = seq, member = entry JSON,
//!   trimmed to the timeline length;
//! - `wp:order:{id}:eid` hash event id → seq, only for retained entries.
//!
//! All three expire together after the order TTL without a commit. The
//! driver index `wp:driver-orders:{driver}` (sorted set order id → time
//! added, bounded) carries the driver's tag, so it is written after the
//! order's commit, not inside it (see `Orders::sync_index`).

use crate::engine::redis::RedisHandle;
use async_trait::async_trait;
use redis::Script;
use waypost_protocol::TimelineEntry;

use super::store::{Commit, CommitOutcome, Loaded, OrderStore, Timeline};
use super::{Order, OrderLimits};
use crate::engine::EngineError;

fn redis_err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt(e.to_string())
}

const LOAD: &str = r#"
local json = redis.call('HGET', KEYS[1], 'json')
local seen = false
if ARGV[1] ~= '' then seen = redis.call('HGET', KEYS[2], ARGV[1]) end
return {json, seen}
"#;

const COMMIT: &str = r#"
if ARGV[3] ~= '' then
  local known = redis.call('HGET', KEYS[3], ARGV[3])
  if known then return {2, tonumber(known)} end
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if cur ~= tonumber(ARGV[1]) then return {1, cur} end
local n = (#ARGV - 5) / 2
local high = cur
for i = 0, n - 1 do
  local seq = tonumber(ARGV[6 + 2 * i])
  redis.call('ZADD', KEYS[2], seq, ARGV[7 + 2 * i])
  if i == 0 and ARGV[3] ~= '' then redis.call('HSET', KEYS[3], ARGV[3], seq) end
  high = seq
end
redis.call('HSET', KEYS[1], 'seq', high, 'json', ARGV[2])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  for _, m in ipairs(old) do
    local d = cjson.decode(m)
    if d['kind'] == 'status' and d['event_id'] then
      redis.call('HDEL', KEYS[3], d['event_id'])
    end
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
for i = 1, 3 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
return {0, high}
"#;

const READ: &str = r#"
local high = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local items = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
return {high, items}
"#;

const INDEX: &str = r#"
if ARGV[2] == '1' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[4]))
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"#;

pub struct RedisOrderStore {
    conn: RedisHandle,
    load: Script,
    commit: Script,
    read: Script,
    index: Script,
    limits: OrderLimits,
}

impl RedisOrderStore {
    pub fn new(conn: RedisHandle, limits: OrderLimits) -> Self {
        Self {
            conn,
            load: Script::new(LOAD),
            commit: Script::new(COMMIT),
            read: Script::new(READ),
            index: Script::new(INDEX),
            limits,
        }
    }

    fn keys(order_id: &str) -> [String; 3] {
        [
            format!("wp:order:{{{order_id}}}"),
            format!("wp:order:{{{order_id}}}:log"),
            format!("wp:order:{{{order_id}}}:eid"),
        ]
    }

    fn ttl_ms(&self) -> u64 {
        self.limits.ttl.as_millis().max(1) as u64
    }
}

#[async_trait]
impl OrderStore for RedisOrderStore {
    async fn load(&self, order_id: &str, event_id: Option<&str>) -> Result<Loaded, EngineError> {
        let [k_state, _, k_eid] = Self::keys(order_id);
        let (json, seen): (Option<String>, Option<u64>) = self
            .load
            .key(k_state)
            .key(k_eid)
            .arg(event_id.unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        let order = json
            .map(|j| serde_json::from_str::<Order>(&j))
            .transpose()
            .map_err(corrupt)?;
        Ok(Loaded {
            seen_event: seen.filter(|_| order.is_some()),
            order,
        })
    }

    async fn commit(&self, c: Commit<'_>) -> Result<CommitOutcome, EngineError> {
        let [k_state, k_log, k_eid] = Self::keys(c.order_id);
        let mut inv = self.commit.key(k_state);
        inv.key(k_log)
            .key(k_eid)
            .arg(c.expected_seq)
            .arg(serde_json::to_string(c.order).map_err(corrupt)?)
            .arg(c.event_id.unwrap_or(""))
            .arg(self.ttl_ms())
            .arg(self.limits.timeline_len.max(1));
        for e in c.entries {
            inv.arg(e.seq)
                .arg(serde_json::to_string(e).map_err(corrupt)?);
        }
        let (code, seq): (u8, u64) = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(match code {
            0 => CommitOutcome::Committed,
            2 => CommitOutcome::Duplicate(seq),
            _ => CommitOutcome::Conflict,
        })
    }

    async fn timeline(
        &self,
        order_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Timeline, EngineError> {
        let [k_state, k_log, _] = Self::keys(order_id);
        let (high_seq, items): (u64, Vec<String>) = self
            .read
            .key(k_state)
            .key(k_log)
            .arg(after)
            .arg(limit)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        let entries = items
            .iter()
            .map(|s| serde_json::from_str::<TimelineEntry>(s).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Timeline { entries, high_seq })
    }

    async fn index_driver(
        &self,
        driver_id: &str,
        order_id: &str,
        add: bool,
    ) -> Result<(), EngineError> {
        let _: i64 = self
            .index
            .key(format!("wp:driver-orders:{{{driver_id}}}"))
            .arg(order_id)
            .arg(if add { "1" } else { "0" })
            .arg(crate::now_ms())
            .arg(self.limits.max_orders_per_driver.max(1))
            .arg(self.ttl_ms())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn driver_orders(&self, driver_id: &str) -> Result<Vec<String>, EngineError> {
        redis::cmd("ZRANGE")
            .arg(format!("wp:driver-orders:{{{driver_id}}}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }
}

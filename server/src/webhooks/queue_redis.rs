//! The webhook retry queue on Redis: survives a restart and is shared by
//! every process. Keys per endpoint (hash tag = the endpoint key, so one
//! endpoint's keys share a slot): `wp:webhook:{ep}:due` (sorted set id →
//! due ms), `wp:webhook:{ep}:body` (hash id → body), `wp:webhook:{ep}:att`
//! (hash id → attempts). Each operation is one Lua script.

use crate::engine::redis::RedisHandle;
use async_trait::async_trait;
use redis::Script;

use super::queue::{Enqueued, Pending, WebhookQueue};
use crate::engine::EngineError;

fn redis_err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

const PUSH: &str = r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 2 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 0
"#;

const CLAIM: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
local id = due[1]
if not id then return false end
local body = redis.call('HGET', KEYS[2], id)
if not body then
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
  return false
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
return {id, body, tonumber(redis.call('HGET', KEYS[3], id) or '0')}
"#;

const DONE: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"#;

const RETRY: &str = r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"#;

pub struct RedisWebhookQueue {
    conn: RedisHandle,
    push: Script,
    claim: Script,
    done: Script,
    retry: Script,
}

impl RedisWebhookQueue {
    pub fn new(conn: RedisHandle) -> Self {
        Self {
            conn,
            push: Script::new(PUSH),
            claim: Script::new(CLAIM),
            done: Script::new(DONE),
            retry: Script::new(RETRY),
        }
    }

    fn keys(endpoint: &str) -> [String; 3] {
        [
            format!("wp:webhook:{{{endpoint}}}:due"),
            format!("wp:webhook:{{{endpoint}}}:body"),
            format!("wp:webhook:{{{endpoint}}}:att"),
        ]
    }
}

#[async_trait]
impl WebhookQueue for RedisWebhookQueue {
    async fn push(
        &self,
        endpoint: &str,
        event_id: &str,
        body: &str,
        due_ms: i64,
        cap: usize,
    ) -> Result<Enqueued, EngineError> {
        let [a, b, _] = Self::keys(endpoint);
        let code: u8 = self
            .push
            .key(a)
            .key(b)
            .arg(event_id)
            .arg(body)
            .arg(due_ms)
            .arg(cap)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(match code {
            0 => Enqueued::Queued,
            1 => Enqueued::Duplicate,
            _ => Enqueued::Full,
        })
    }

    async fn claim(
        &self,
        endpoint: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Pending>, EngineError> {
        let [a, b, c] = Self::keys(endpoint);
        let got: Option<(String, String, u32)> = self
            .claim
            .key(a)
            .key(b)
            .key(c)
            .arg(now_ms)
            .arg(lease_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(got.map(|(event_id, body, attempts)| Pending {
            event_id,
            body,
            attempts,
        }))
    }

    async fn done(&self, endpoint: &str, event_id: &str) -> Result<(), EngineError> {
        let [a, b, c] = Self::keys(endpoint);
        let _: i64 = self
            .done
            .key(a)
            .key(b)
            .key(c)
            .arg(event_id)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn retry(
        &self,
        endpoint: &str,
        event_id: &str,
        attempts: u32,
        due_ms: i64,
    ) -> Result<(), EngineError> {
        let [a, b, c] = Self::keys(endpoint);
        let _: i64 = self
            .retry
            .key(a)
            .key(b)
            .key(c)
            .arg(event_id)
            .arg(attempts)
            .arg(due_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn len(&self, endpoint: &str) -> Result<usize, EngineError> {
        let [a, _, _] = Self::keys(endpoint);
        redis::cmd("ZCARD")
            .arg(a)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)
    }
}

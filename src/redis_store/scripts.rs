//! The Lua scripts behind the store's atomic operations, sent as `EVALSHA` (a
//! server that does not know a script yet is sent it once, by redis-rs's
//! `Script`, and keeps it): the body travels and is hashed once, not per call.

use std::sync::LazyLock;

use redis::Script;

/// Reads a key; if it is empty, leaves the reservation `ARGV[1]` for `ARGV[2]` ms.
pub(super) static GET_OR_RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local v = redis.call('GET', KEYS[1]) \
         if v then return v end \
         redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
         return false",
    )
});

/// Writes `ARGV[2]` for `ARGV[3]` ms only if the key holds exactly `ARGV[1]`.
pub(super) static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
         redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end \
         return 0",
    )
});

/// Deletes the lease `KEYS[1]` only if it still holds the token `ARGV[1]`.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
         return redis.call('DEL', KEYS[1]) end \
         return 0",
    )
});

/// Moves the tag clock `KEYS[1]` on to the server's time in microseconds (or
/// one past its last value, if that is later; a value that is not a number
/// counts as 0), stamps the tags `KEYS[2..]` with it, and returns it. A
/// time-based clock keeps moving forward when the server loses its data (a
/// restart without persistence, a failover to a replica that missed writes):
/// instances' views of it stay lower bounds. (Microseconds since 1970 are below
/// 2^53: exact in Lua's doubles. Before Redis 5 a script that reads `TIME` and
/// writes must replicate its effects: `replicate_commands` asks for that, and
/// is a no-op since.)
pub(super) static STAMP_TAGS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.replicate_commands() \
         local now = redis.call('TIME') \
         local stamp = tonumber(now[1]) * 1000000 + tonumber(now[2]) \
         local last = tonumber(redis.call('GET', KEYS[1]) or '0') or 0 \
         if stamp <= last then stamp = last + 1 end \
         local text = string.format('%.0f', stamp) \
         for i = 1, #KEYS do redis.call('SET', KEYS[i], text) end \
         return stamp",
    )
});

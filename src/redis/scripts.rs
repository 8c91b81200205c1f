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

/// Moves the tag clock `KEYS[1]` on by one and stamps the tags `KEYS[2..]` with
/// its new value, which it returns.
pub(super) static STAMP_TAGS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local clock = redis.call('INCR', KEYS[1]) \
         for i = 2, #KEYS do redis.call('SET', KEYS[i], clock) end \
         return clock",
    )
});

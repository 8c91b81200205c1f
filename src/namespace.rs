//! [`Namespace`]: every name the cache derives from its prefix, name and schema
//! version — its Redis keys, the globs that walk them, its lease keys and its bus
//! channel — made in one place, so that they cannot drift apart.

use crate::key::CacheKey;
use crate::pattern::escape_glob;

/// `{prefix}:{cache name}:{schema version}:`, and the names made from it.
#[derive(Debug, Clone)]
pub(crate) struct Namespace {
    /// `{prefix}:{name}:{schema}:` (or `{name}:{schema}:` with an empty prefix).
    base: String,
    /// `base`, escaped for globs.
    glob_base: String,
}

impl Namespace {
    /// The namespace of cache `name` at `schema_version` under `prefix` (which
    /// the builder has checked: no glob characters, `:` allowed).
    pub(crate) fn new(prefix: &str, name: &str, schema_version: u32) -> Self {
        let base = if prefix.is_empty() {
            format!("{name}:{schema_version}:")
        } else {
            format!("{prefix}:{name}:{schema_version}:")
        };
        Namespace {
            glob_base: escape_glob(&base),
            base,
        }
    }

    /// The store key of a cache key.
    pub(crate) fn key<K: CacheKey>(&self, key: &K) -> String {
        let mut out = String::with_capacity(self.base.len() + 16);
        out.push_str(&self.base);
        key.write_key(&mut out);
        out
    }

    /// The store glob of a glob over cache keys' string forms.
    pub(crate) fn glob(&self, pattern: &str) -> String {
        format!("{}{pattern}", self.glob_base)
    }

    /// The store glob of every key of the namespace.
    pub(crate) fn everything(&self) -> String {
        self.glob("*")
    }

    /// The lease key of a cache key: outside the namespace's keys (no pattern or
    /// namespace walk of entries matches it).
    pub(crate) fn lease_key<K: CacheKey>(&self, key: &K) -> String {
        let mut out = String::with_capacity(self.base.len() + 24);
        out.push_str(self.base.strip_suffix(':').unwrap_or(&self.base));
        out.push_str("#lease:");
        key.write_key(&mut out);
        out
    }

    /// The store key of a tag's stamp (see `tags.rs`). Every tag key of a
    /// namespace, and its clock, share one hash slot (the `{…}` hash tag is a
    /// digest of the base, so that no character of the name can move it), so
    /// that one script can stamp several at once on a Redis Cluster; they are
    /// outside the namespace's glob, so walks never delete them.
    /// The namespace's own tag (its epoch, [`ALL_TAG`]) is `…#all`.
    pub(crate) fn tag_key(&self, tag: &str) -> String {
        if tag == ALL_TAG {
            return format!("{}#all", self.tag_base());
        }
        format!("{}#tag:{tag}", self.tag_base())
    }

    /// The store key of the namespace's tag clock.
    pub(crate) fn tag_clock(&self) -> String {
        format!("{}#tags", self.tag_base())
    }

    fn tag_base(&self) -> String {
        let digest = stable_hash(self.base.bytes());
        format!(
            "{{t{digest:016x}}}{}",
            self.base.strip_suffix(':').unwrap_or(&self.base)
        )
    }

    /// The cache key's string form in a store key of this namespace.
    pub(crate) fn key_of<'a>(&self, store_key: &'a str) -> Option<&'a str> {
        store_key.strip_prefix(&self.base)
    }

    /// The glob over cache keys in a store glob of this namespace.
    pub(crate) fn pattern_of<'a>(&self, store_glob: &'a str) -> Option<&'a str> {
        store_glob.strip_prefix(&self.glob_base)
    }

    /// The invalidation bus channel of the namespace.
    pub(crate) fn channel(&self) -> String {
        format!("tiered-bus:{}", self.base)
    }
}

/// The namespace's own tag, which every entry in L2 carries without naming
/// it: stamping it is `invalidate_all` (the namespace epoch: entries whose
/// load began before are unreadable). Its store key is `…#all`; a user tag of
/// the same name is the same tag.
pub(crate) const ALL_TAG: &str = "\0all";

/// FNV-1a over `bytes`: the same on every instance, build and platform (for
/// what instances must agree on: schema fingerprints, tag keys).
pub(crate) fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::Pattern;

    #[test]
    fn every_name_derives_from_one_base() {
        let ns = Namespace::new("svc:prod", "users", 2);
        assert_eq!(ns.key(&7u64), "svc:prod:users:2:7");
        assert_eq!(ns.lease_key(&7u64), "svc:prod:users:2#lease:7");
        assert_eq!(ns.channel(), "tiered-bus:svc:prod:users:2:");
        let all = Pattern::new(ns.everything());
        assert!(all.matches(&ns.key(&"a*b".to_owned())));
        assert!(!all.matches(&ns.lease_key(&7u64)), "leases are outside");
        assert!(!all.matches(&Namespace::new("svc:prod", "users", 3).key(&7u64)));
        assert_eq!(Namespace::new("", "t", 1).key(&1u8), "t:1:1");
        let key = "a*b[c]".to_owned();
        assert_eq!(ns.key_of(&ns.key(&key)), Some(key.as_str()));
        assert_eq!(ns.pattern_of(&ns.glob("user:[0-9]*")), Some("user:[0-9]*"));
        assert_eq!(ns.key_of("other:users:2:7"), None);
        let tag = ns.tag_key("user:{7}*");
        assert!(tag.starts_with("{t") && tag.ends_with("svc:prod:users:2#tag:user:{7}*"));
        assert_eq!(tag.find('}'), ns.tag_clock().find('}'), "one hash tag");
        assert!(!all.matches(&tag) && !all.matches(&ns.tag_clock()));
    }
}

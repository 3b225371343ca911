//! SQL text with bound values, composed in fragments: the queries that are built from
//! filters (`top`, the UI's lists) never format a value into the text.

use clickhouse::Client;

/// A value bound to a `?` of [`Sql`].
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    U32(u32),
    U64(u64),
    Str(String),
}

/// SQL text with `?` placeholders and their values, in order: fragments compose without
/// formatting a value into the text.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.text.push('?');
        self.binds.push(Bind::U32(v));
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.text.push('?');
        self.binds.push(Bind::U64(v));
        self
    }
    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.text.push('?');
        self.binds.push(Bind::Str(v.to_owned()));
        self
    }
    pub(crate) fn sql(&mut self, other: &Sql) -> &mut Self {
        self.text.push_str(&other.text);
        self.binds.extend(other.binds.iter().cloned());
        self
    }
    pub(crate) fn query(&self, client: &Client) -> clickhouse::query::Query {
        let mut q = client.query(&self.text);
        for b in &self.binds {
            q = match b {
                Bind::U32(v) => q.bind(*v),
                Bind::U64(v) => q.bind(*v),
                Bind::Str(v) => q.bind(v.as_str()),
            };
        }
        q
    }
}

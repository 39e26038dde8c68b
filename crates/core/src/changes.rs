//! The changes feed: rows since a sequence, filtered for the caller, and the wake-up used by
//! longpoll/continuous feeds.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use syncgate_auth::identity::{ALL_CHANNELS, PUBLIC_CHANNEL};
use syncgate_auth::Caller;
use syncgate_storage::{ChangeEntry, ChangesView};

use crate::database::Database;
use crate::docs::GetOptions;
use crate::error::{Error, Result};
use crate::find::SelectorFilter;
use crate::read_ahead::ReadAhead;

/// A position in the feed. `backfill` is the grant sequence of a compound `"G:S"` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Since {
    pub seq: u64,
    pub backfill: Option<u64>,
}

impl Since {
    /// Parses an integer, a numeric string, a compound `"G:S"` or `now` (given the current seq).
    pub fn parse(v: &Value, now: u64) -> Result<Since> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .map(|seq| Since {
                    seq,
                    backfill: None,
                })
                .ok_or_else(|| Error::bad(format!("Invalid sequence: {n}"))),
            Value::String(s) => Self::parse_str(s, now),
            Value::Null => Ok(Since::default()),
            other => Err(Error::bad(format!("Invalid sequence: {other}"))),
        }
    }

    pub fn parse_str(s: &str, now: u64) -> Result<Since> {
        let bad = || Error::bad(format!("Invalid sequence: \"{}\"", crate::short(s)));
        let t = s.trim().trim_matches('"');
        if t == "now" {
            return Ok(Since {
                seq: now,
                backfill: None,
            });
        }
        if t.is_empty() {
            return Ok(Since::default());
        }
        let num = |x: &str| -> Result<u64> {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            x.parse().map_err(|_| bad())
        };
        match t.split(':').collect::<Vec<_>>().as_slice() {
            [n] => Ok(Since {
                seq: num(n)?,
                backfill: None,
            }),
            [g, n] => Ok(Since {
                seq: num(n)?,
                backfill: Some(num(g)?),
            }),
            // SG's low-water form L:G:S; L may be empty
            [_, g, n] => Ok(Since {
                seq: num(n)?,
                backfill: if g.is_empty() { None } else { Some(num(g)?) },
            }),
            _ => Err(bad()),
        }
    }
}

/// Options of one `_changes` request.
#[derive(Debug, Clone, Default)]
pub struct ChangesOptions {
    pub since: Since,
    pub limit: Option<usize>,
    pub descending: bool,
    pub include_docs: bool,
    /// With `include_docs`: attachment bodies inline (base64).
    pub attachments: bool,
    pub conflicts: bool,
    /// `style=all_docs`: every leaf in `changes`.
    pub all_docs: bool,
    pub active_only: bool,
    /// `filter=_doc_ids`.
    pub doc_ids: Option<HashSet<String>>,
    /// `filter=sync_gateway/bychannel`.
    pub channels: Option<HashSet<String>>,
    /// `filter=_selector`: only changes whose revision matches (see
    /// `Database::selector_leaves`); applied after channel filtering.
    pub selector: Option<Arc<SelectorFilter>>,
}

/// One row of the feed, serialized as soon as it is built: a feed of many thousand rows holds
/// only their JSON text, not a `Value` tree per row.
pub struct ChangeRow {
    /// The row's sequence (compound inside a backfill or removal group).
    pub seq: Since,
    /// The row's JSON text.
    pub json: String,
}

/// One batch of the feed.
pub struct ChangesBatch {
    pub rows: Vec<ChangeRow>,
    /// Where the next batch starts (compound when a batch ends inside a backfill).
    pub last_seq: Since,
}

impl Since {
    /// The JSON form: a number, or `"G:S"` inside a backfill.
    pub fn to_json(&self) -> Value {
        match self.backfill {
            None => json!(self.seq),
            Some(g) => Value::String(format!("{g}:{}", self.seq)),
        }
    }
}

impl Serialize for Since {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.backfill {
            None => s.serialize_u64(self.seq),
            Some(g) => s.collect_str(&format_args!("{g}:{}", self.seq)),
        }
    }
}

/// A feed's rows rendered on demand (see [`Database::changes_paged`]).
pub struct ChangesPages {
    db: Arc<Database>,
    caller: Caller,
    opts: ChangesOptions,
    rows: std::vec::IntoIter<Row>,
    /// Where the next batch starts.
    pub last_seq: Since,
}

impl ChangesPages {
    /// Rows not yet rendered.
    pub fn remaining(&self) -> usize {
        self.rows.len()
    }

    /// The next at most `n` rows, rendered; `None` once every row was.
    pub async fn next_page(&mut self, n: usize) -> Result<Option<Vec<ChangeRow>>> {
        let mut page: Vec<Row> = self.rows.by_ref().take(n.max(1)).collect();
        if page.is_empty() {
            return Ok(None);
        }
        if self.opts.include_docs {
            self.db
                .fill_docs(&self.caller, &self.opts, &mut page)
                .await?;
        }
        page.into_iter()
            .map(Row::into_change_row)
            .collect::<Result<_>>()
            .map(Some)
    }

    /// Every remaining row, rendered, as one batch.
    pub async fn into_batch(mut self) -> Result<ChangesBatch> {
        let rows = self.next_page(usize::MAX).await?.unwrap_or_default();
        Ok(ChangesBatch {
            rows,
            last_seq: self.last_seq,
        })
    }
}

impl ChangesBatch {
    /// The body of a normal or longpoll response, `{"results":[…],"last_seq":…}` (CouchDB's
    /// member order), written straight from the serialized rows.
    pub fn to_body(&self) -> Vec<u8> {
        let rows: usize = self.rows.iter().map(|r| r.json.len() + 1).sum();
        let mut out = Vec::with_capacity(rows + 48);
        out.extend_from_slice(b"{\"results\":[");
        for (i, r) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(r.json.as_bytes());
        }
        out.extend_from_slice(b"],\"last_seq\":");
        // a Since always serializes
        let _ = serde_json::to_writer(&mut out, &self.last_seq);
        out.push(b'}');
        out
    }
}

/// A row before serialization.
struct Row {
    changes: Vec<RevRef>,
    deleted: bool,
    /// The document's JSON text (`include_docs`).
    doc: Option<Vec<u8>>,
    id: String,
    removed: Option<Vec<String>>,
    /// `include_docs`: the revision to render into `doc` (read with the batch's others).
    render: Option<String>,
    seq: Since,
}

/// Rows of a batch whose documents are not rendered yet.
struct RowBatch {
    rows: Vec<Row>,
    last_seq: Since,
}

/// Rows of an `include_docs` feed whose documents are read in one store call.
const READ_AHEAD: usize = 100;

struct RevRef {
    rev: String,
}

impl Row {
    /// `{"seq","id","changes","deleted"?,"removed"?,"doc"?}`: CouchDB's member order.
    fn into_change_row(self) -> Result<ChangeRow> {
        use syncgate_storage::json::{push_json, push_str};
        let mut out = Vec::with_capacity(96 + self.doc.as_ref().map_or(0, Vec::len));
        out.extend_from_slice(b"{\"seq\":");
        push_json(&mut out, &self.seq);
        out.extend_from_slice(b",\"id\":");
        push_str(&mut out, &self.id);
        out.extend_from_slice(b",\"changes\":[");
        for (i, c) in self.changes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"rev\":");
            push_str(&mut out, &c.rev);
            out.push(b'}');
        }
        out.push(b']');
        if self.deleted {
            out.extend_from_slice(b",\"deleted\":true");
        }
        if let Some(removed) = &self.removed {
            out.extend_from_slice(b",\"removed\":");
            push_json(&mut out, removed);
        }
        if let Some(doc) = &self.doc {
            out.extend_from_slice(b",\"doc\":");
            out.extend_from_slice(doc);
        }
        out.push(b'}');
        let json = String::from_utf8(out)
            .map_err(|e| Error::Internal(format!("a change row is not UTF-8: {e}")))?;
        Ok(ChangeRow {
            seq: self.seq,
            json,
        })
    }
}

/// Extra rows a user's feed carries at the sequence of a principal write: documents that a grant
/// made visible (backfill) or that a revocation took away (removal), older than the client's
/// checkpoint.
struct Group {
    /// The grant's or revocation's sequence: where the group sits in the feed.
    at: u64,
    /// Backfill (true) or revocation (false).
    grant: bool,
    channels: Vec<String>,
}

/// Which channels a feed shows: everything, or documents in (or removed from) a set.
enum Scope {
    All,
    Channels(HashSet<String>),
}

impl Scope {
    fn of(caller: &Caller, filter: Option<&HashSet<String>>) -> Scope {
        let filter = filter.filter(|f| !f.contains(ALL_CHANNELS));
        let user = caller
            .user()
            .filter(|u| !u.channels.contains_key(ALL_CHANNELS))
            .map(|u| {
                let mut s: HashSet<String> = u.channels.keys().cloned().collect();
                s.insert(PUBLIC_CHANNEL.to_string());
                s
            });
        match (user, filter) {
            (None, None) => Scope::All,
            (Some(u), None) => Scope::Channels(u),
            (None, Some(f)) => Scope::Channels(f.clone()),
            (Some(u), Some(f)) => Scope::Channels(u.intersection(f).cloned().collect()),
        }
    }

    fn sees(&self, channels: &[String]) -> bool {
        match self {
            Scope::All => true,
            Scope::Channels(s) => channels.iter().any(|c| s.contains(c)),
        }
    }
}

impl Database {
    /// Rows after `opts.since`, up to the current sequence, filtered for the caller. A caller
    /// limited to some channels reads through the channel index, so unrelated documents are
    /// never read; a document that left those channels comes once with `"removed"`. For a user,
    /// grants and revocations newer than the checkpoint add backfill and removal rows at the
    /// grant's sequence, as compound `"G:S"` sequences.
    ///
    /// The batch reads one [`ChangesView`]: each document appears once, at the sequence it had
    /// at `end`, even while concurrent updates become durable.
    pub async fn changes(&self, caller: &Caller, opts: &ChangesOptions) -> Result<ChangesBatch> {
        let RowBatch { mut rows, last_seq } = self.change_rows(caller, opts).await?;
        if opts.include_docs {
            self.fill_docs(caller, opts, &mut rows).await?;
        }
        Ok(ChangesBatch {
            rows: rows
                .into_iter()
                .map(Row::into_change_row)
                .collect::<Result<_>>()?,
            last_seq,
        })
    }

    /// The rows of [`Database::changes`] (same view, same rows), rendered a page at a time:
    /// with `include_docs`, a page's documents are read and rendered when the page is asked
    /// for, so a feed sent page by page never holds every document at once. A document deleted
    /// or compacted away between the view and its page is `null` (as a row whose revision's
    /// body is gone).
    pub async fn changes_paged(
        self: &Arc<Self>,
        caller: &Caller,
        opts: &ChangesOptions,
    ) -> Result<ChangesPages> {
        let RowBatch { rows, last_seq } = self.change_rows(caller, opts).await?;
        Ok(ChangesPages {
            db: self.clone(),
            caller: caller.clone(),
            opts: opts.clone(),
            rows: rows.into_iter(),
            last_seq,
        })
    }

    /// `include_docs`: each row's document rendered, the documents and bodies of
    /// [`READ_AHEAD`] rows read in one store call each.
    async fn fill_docs(
        &self,
        caller: &Caller,
        opts: &ChangesOptions,
        rows: &mut [Row],
    ) -> Result<()> {
        let get = GetOptions {
            conflicts: opts.conflicts,
            attachments: opts.attachments,
            ..Default::default()
        };
        for chunk in rows.chunks_mut(READ_AHEAD) {
            let mut ahead = ReadAhead::default();
            let ids: Vec<&str> = chunk
                .iter()
                .filter(|r| r.render.is_some())
                .map(|r| r.id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            ahead.load_metas_with_bodies(&*self.store, &ids).await?;
            let revs: Vec<(&str, &str)> = chunk
                .iter()
                .filter_map(|r| {
                    let rev = r.render.as_deref()?;
                    let node = ahead.cached_meta(&r.id)?.tree.get(rev)?;
                    (node.has_body && caller.can_read(&node.channels))
                        .then_some((r.id.as_str(), rev))
                })
                .collect();
            ahead.load_bodies(&*self.store, &revs).await?;
            for row in chunk.iter_mut() {
                let Some(winner) = row.render.take() else {
                    continue;
                };
                let Some(meta) = ahead.meta(&*self.store, &row.id).await? else {
                    continue;
                };
                let mut d = self
                    .render_in(caller, &row.id, &meta, &winner, &get, &mut ahead)
                    .await?
                    .map_or_else(|| b"null".to_vec(), |r| r.json);
                if let Some(fields) = opts.selector.as_ref().and_then(|f| f.fields.as_ref()) {
                    d = crate::mango::project_text(&d, fields).map_err(|err| {
                        Error::Internal(format!("projecting \"{}\": {err}", row.id))
                    })?;
                }
                row.doc = Some(d);
            }
        }
        Ok(())
    }

    /// The rows of [`Database::changes`], documents not yet rendered.
    async fn change_rows(&self, caller: &Caller, opts: &ChangesOptions) -> Result<RowBatch> {
        let view = self.store.changes_view();
        let end = view.seq();
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        let scope = Scope::of(caller, opts.channels.as_ref());
        if opts.descending {
            let mut entries = view.since(0, true);
            while let Some(entry) = entries.next().await {
                let entry = entry?;
                if entry.seq > end {
                    continue;
                }
                if rows.len() >= limit {
                    break;
                }
                if let Some(row) = self.change_row(caller, &scope, opts, &entry, None).await? {
                    rows.push(row);
                }
            }
            let last = rows.last().map(|r| r.seq.seq).unwrap_or(end);
            return Ok(RowBatch {
                rows,
                last_seq: Since {
                    seq: last,
                    backfill: None,
                },
            });
        }
        // `base`: every plain sequence up to it has been delivered; `resume`: inside the group
        // at G, entries up to S have been delivered.
        // A compound value is a backfill position only for a channel-limited user and a grant
        // sequence that exists; anything else falls back to its plain part (re-sending rows is
        // harmless, skipping them is not).
        let backfill = opts.since.backfill.filter(|g| {
            *g > 0 && *g <= end && caller.user().is_some() && matches!(scope, Scope::Channels(_))
        });
        let (base, resume) = match backfill {
            Some(g) => (g - 1, Some((g, opts.since.seq))),
            None => (opts.since.seq, None),
        };
        let mut groups = self
            .groups(caller, &scope, opts, base, end)
            .into_iter()
            .peekable();
        // channels lost after the checkpoint: their documents changed since then come as
        // removals (the client may hold them; a document granting access changes at the very
        // sequence that revokes it)
        let lost_since: HashSet<String> = match (&scope, caller.user()) {
            (Scope::Channels(chs), Some(u)) if base > 0 => u
                .revoked
                .iter()
                .filter(|(c, r)| **r > base && !chs.contains(*c))
                .filter(|(c, _)| {
                    opts.channels
                        .as_ref()
                        .is_none_or(|f| f.contains(*c) || f.contains(ALL_CHANNELS))
                })
                .map(|(c, _)| c.clone())
                .collect(),
            _ => HashSet::new(),
        };
        let entries = match &scope {
            Scope::Channels(chs) => {
                let mut list: Vec<String> = chs.iter().chain(&lost_since).cloned().collect();
                list.sort();
                view.in_channels(&list, base)
            }
            Scope::All => view.since(base, false),
        }
        // a feed asking for a few rows reads a few entries first (more pages when rows are
        // filtered out)
        .first_page(limit);
        let mut last_seq = Since {
            seq: end.max(base),
            backfill: None,
        };
        let mut entries = entries;
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            if entry.seq > end || rows.len() >= limit {
                break;
            }
            while let Some(g) = groups.next_if(|g| g.at < entry.seq) {
                if let Some(stop) = self
                    .group_rows(
                        &*view, caller, &scope, opts, &g, base, resume, limit, &mut rows,
                    )
                    .await?
                {
                    return Ok(RowBatch {
                        rows,
                        last_seq: stop,
                    });
                }
            }
            // in a lost channel, or left it (after the checkpoint: the client may hold it)
            let mut lost: Vec<String> = entry
                .channels
                .iter()
                .chain(&entry.removed)
                .filter(|c| lost_since.contains(*c))
                .cloned()
                .collect();
            lost.sort();
            lost.dedup();
            let revoked = (!lost.is_empty() && !scope.sees(&entry.channels)).then_some(lost);
            if let Some(row) = self
                .change_row(caller, &scope, opts, &entry, revoked)
                .await?
            {
                rows.push(row);
                if rows.len() >= limit {
                    last_seq = Since {
                        seq: entry.seq,
                        backfill: None,
                    };
                    return Ok(RowBatch { rows, last_seq });
                }
            }
        }
        for g in groups {
            if let Some(stop) = self
                .group_rows(
                    &*view, caller, &scope, opts, &g, base, resume, limit, &mut rows,
                )
                .await?
            {
                return Ok(RowBatch {
                    rows,
                    last_seq: stop,
                });
            }
        }
        Ok(RowBatch { rows, last_seq })
    }

    /// Grants and revocations of the caller newer than `base`, in feed order.
    fn groups(
        &self,
        caller: &Caller,
        scope: &Scope,
        opts: &ChangesOptions,
        base: u64,
        end: u64,
    ) -> Vec<Group> {
        let (Some(user), Scope::Channels(visible)) = (caller.user(), scope) else {
            return Vec::new();
        };
        if base == 0 {
            return Vec::new(); // a fresh client gets everything as plain rows
        }
        let filter_ok = |c: &String| {
            opts.channels
                .as_ref()
                .is_none_or(|f| f.contains(c) || f.contains(ALL_CHANNELS))
        };
        let mut by_seq: std::collections::BTreeMap<(u64, bool), Vec<String>> = Default::default();
        for (c, g) in user.channels.iter() {
            if *g > base && *g <= end && visible.contains(c) {
                by_seq.entry((*g, false)).or_default().push(c.clone());
            }
        }
        for (c, r) in user.revoked.iter() {
            if *r > base && *r <= end && filter_ok(c) {
                by_seq.entry((*r, true)).or_default().push(c.clone());
            }
        }
        by_seq
            .into_iter()
            .map(|((at, revoked), channels)| Group {
                at,
                grant: !revoked,
                channels,
            })
            .collect()
    }

    /// Appends a group's rows (documents up to `base`; after S when resuming at `G:S`). Returns where to resume
    /// when `limit` is reached inside the group.
    #[allow(clippy::too_many_arguments)]
    async fn group_rows(
        &self,
        view: &dyn ChangesView,
        caller: &Caller,
        scope: &Scope,
        opts: &ChangesOptions,
        g: &Group,
        base: u64,
        resume: Option<(u64, u64)>,
        limit: usize,
        rows: &mut Vec<Row>,
    ) -> Result<Option<Since>> {
        // channels the client could already read at its checkpoint
        let old: HashSet<&String> = caller
            .user()
            .map(|u| {
                u.channels
                    .iter()
                    .filter(|(_, s)| **s <= base)
                    .map(|(c, _)| c)
                    .collect()
            })
            .unwrap_or_default();
        // resuming inside this group: entries up to S were delivered
        let from = resume.filter(|(at, _)| *at == g.at).map_or(0, |(_, s)| s);
        let mut entries = view.in_channels(&g.channels, from);
        while let Some(entry) = entries.next().await {
            let entry = entry?;
            if entry.seq > base {
                break;
            }
            let in_group = entry.channels.iter().any(|c| g.channels.contains(c));
            if !in_group || entry.channels.iter().any(|c| old.contains(c)) && g.grant {
                continue; // not in the channel now, or the client already had it
            }
            let row = if g.grant {
                self.change_row(caller, scope, opts, &entry, None).await?
            } else if scope.sees(&entry.channels) || opts.active_only {
                None // still readable through another channel
            } else {
                let lost: Vec<String> = entry
                    .channels
                    .iter()
                    .filter(|c| g.channels.contains(c))
                    .cloned()
                    .collect();
                self.change_row(caller, scope, opts, &entry, Some(lost))
                    .await?
            };
            if let Some(mut row) = row {
                row.seq = Since {
                    seq: entry.seq,
                    backfill: Some(g.at),
                };
                rows.push(row);
                if rows.len() >= limit {
                    return Ok(Some(Since {
                        seq: entry.seq,
                        backfill: Some(g.at),
                    }));
                }
            }
        }
        Ok(None)
    }

    /// One row, or `None` when the caller should not see it. `revoked` forces a removal row for
    /// those channels (a revocation).
    async fn change_row(
        &self,
        caller: &Caller,
        scope: &Scope,
        opts: &ChangesOptions,
        e: &ChangeEntry,
        revoked: Option<Vec<String>>,
    ) -> Result<Option<Row>> {
        if let Some(ids) = &opts.doc_ids {
            if !ids.contains(&e.id) {
                return Ok(None);
            }
        }
        let (visible, removed): (bool, Vec<String>) = match (scope, revoked) {
            (_, Some(lost)) => (false, lost),
            (Scope::All, None) => (true, Vec::new()),
            (Scope::Channels(chs), None) => (
                e.channels.iter().any(|c| chs.contains(c)),
                e.removed
                    .iter()
                    .filter(|c| chs.contains(*c))
                    .cloned()
                    .collect(),
            ),
        };
        if !visible && removed.is_empty() {
            return Ok(None);
        }
        let deleted = e.deleted();
        if opts.active_only && (deleted || !visible) {
            return Ok(None);
        }
        let winner = e.leaves.first().map(|l| l.rev.clone()).unwrap_or_default();
        let seq = Since {
            seq: e.seq,
            backfill: None,
        };
        if !visible {
            let doc = opts.include_docs.then(|| {
                let mut d = b"{\"_id\":".to_vec();
                syncgate_storage::json::push_str(&mut d, &e.id);
                d.extend_from_slice(b",\"_rev\":");
                syncgate_storage::json::push_str(&mut d, &winner);
                d.extend_from_slice(b",\"_removed\":true}");
                d
            });
            return Ok(Some(Row {
                changes: vec![RevRef { rev: winner }],
                // a tombstone that left the channels says so (Sync Gateway)
                deleted,
                doc,
                id: e.id.clone(),
                removed: Some(removed),
                render: None,
                seq,
            }));
        }
        let changes: Vec<RevRef> = if let Some(f) = &opts.selector {
            let revs = self
                .selector_leaves(caller, e, &f.selector, opts.all_docs)
                .await?;
            if revs.is_empty() {
                return Ok(None);
            }
            revs.into_iter().map(|rev| RevRef { rev }).collect()
        } else if opts.all_docs {
            e.leaves
                .iter()
                .map(|l| RevRef { rev: l.rev.clone() })
                .collect()
        } else {
            vec![RevRef {
                rev: winner.clone(),
            }]
        };
        // the document is rendered with the batch's others (`fill_docs`)
        Ok(Some(Row {
            changes,
            deleted,
            doc: None,
            id: e.id.clone(),
            removed: None,
            render: opts.include_docs.then_some(winner),
            seq,
        }))
    }

    /// The caller as it is now: a user's grants and revocations re-read from the store (cached
    /// until a principal changes). `None` when the user was deleted or disabled, or GUEST was
    /// turned off.
    pub async fn refresh_caller(&self, caller: &Caller) -> Option<Caller> {
        match caller {
            Caller::Admin => Some(Caller::Admin),
            Caller::User(u) => match &u.name {
                None => self.auth.guest().await.map(Caller::User),
                Some(name) => match self.auth.principals().load(name).await {
                    Ok(Some(l)) if !l.record.disabled => Some(Caller::User(l.ctx.clone())),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "reloading a feed's user failed");
                        Some(caller.clone())
                    }
                },
            },
        }
    }

    /// Waits until the sequence passes `seq`, `timeout` elapses or the server shuts down.
    /// Returns true when there may be new changes.
    pub async fn wait_for_change(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.store.subscribe();
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            return false;
        }
        let wait = async {
            loop {
                if *rx.borrow_and_update() > seq {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::select! {
            r = wait => r,
            _ = tokio::time::sleep(timeout) => false,
            _ = shutdown.changed() => false,
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_serialize_like_json_objects() {
        let row = Row {
            changes: vec![RevRef { rev: "2-b".into() }],
            deleted: true,
            doc: Some(br#"{"_id":"d","z":1,"a":[1]}"#.to_vec()),
            id: "d".into(),
            removed: None,
            render: None,
            seq: Since {
                seq: 7,
                backfill: Some(20),
            },
        }
        .into_change_row()
        .unwrap();
        let expected = json!({"seq": "20:7", "id": "d", "changes": [{"rev": "2-b"}],
            "deleted": true, "doc": {"_id": "d", "z": 1, "a": [1]}});
        assert_eq!(row.json, expected.to_string());
        let removed = Row {
            changes: vec![RevRef { rev: "1-a".into() }],
            deleted: false,
            doc: None,
            id: "e".into(),
            removed: Some(vec!["x".into()]),
            render: None,
            seq: Since {
                seq: 3,
                backfill: None,
            },
        }
        .into_change_row()
        .unwrap();
        let batch = ChangesBatch {
            rows: vec![row, removed],
            last_seq: Since {
                seq: 9,
                backfill: None,
            },
        };
        let expected = json!({"results": [expected,
            {"seq": 3, "id": "e", "changes": [{"rev": "1-a"}], "removed": ["x"]}], "last_seq": 9});
        assert_eq!(batch.to_body(), expected.to_string().into_bytes());
    }

    #[test]
    fn since_forms() {
        assert_eq!(Since::parse(&json!(5), 9).unwrap().seq, 5);
        assert_eq!(Since::parse(&json!("7"), 9).unwrap().seq, 7);
        assert_eq!(Since::parse(&json!("now"), 9).unwrap().seq, 9);
        assert_eq!(
            Since::parse(&json!("20:7"), 9).unwrap(),
            Since {
                seq: 7,
                backfill: Some(20)
            }
        );
        assert_eq!(Since::parse(&json!("\"3\""), 9).unwrap().seq, 3);
        for bad in [
            json!("x"),
            json!("-1"),
            json!(-1),
            json!("1:2:3:4"),
            json!([1]),
            json!("1.5"),
        ] {
            assert!(Since::parse(&bad, 9).is_err(), "{bad}");
        }
    }
}

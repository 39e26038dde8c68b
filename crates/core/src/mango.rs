//! Mango selectors, as CouchDB evaluates them for `POST /{db}/_find` and
//! `_changes?filter=_selector`.
//!
//! A selector is parsed once ([`Selector::parse`]) into a compiled tree and then matched against
//! any number of documents ([`Selector::matches`]). Parsing follows CouchDB's normalization
//! (`mango_selector:normalize`), done in one pass:
//!
//! - several members in one object are an implicit `$and`; a bare value is an implicit `$eq`;
//! - an object under a field name that is not an operator descends into that field
//!   (`{"a":{"b":1}}` is `{"a.b":1}`); dotted names are paths, `\.` escapes a dot, and a path
//!   segment that is an integer indexes an array (`"tags.0"`);
//! - `$not` and `$nor` are pushed down to the field conditions (De Morgan; `$eq`↔`$ne`,
//!   `$lt`↔`$gte`, `$in`↔`$nin`, `$exists` flipped), so — exactly as in CouchDB — a condition
//!   on a field the document does not have is false, whether negated or not, except
//!   `$exists: false`. In particular `{"type":{"$ne":"leaf"}}` does **not** match a document
//!   without `type` (a plain tombstone `{_id,_rev,_deleted}` included), and neither does
//!   `{"$not":{"type":"leaf"}}`.
//!
//! Operators: `$eq $ne $gt $gte $lt $lte $in $nin $exists $type $and $or $nor $not $all
//! $elemMatch $size $regex`. Any other `$` name is a 400 naming it: `not_supported` for
//! operators CouchDB has and this server does not (`$mod $allMatch $keyMapMatch $beginsWith
//! $text $where $geoWithin $geoIntersects $near $nearSphere`), `invalid_operator` otherwise.
//!
//! Comparisons use CouchDB's collation across types: `null < false < true < numbers < strings
//! < arrays < objects`; arrays compare element by element, then by length; objects member by
//! member (key, then value), then by size. Numbers compare by value (`1` equals `1.0`).
//! **Approximation:** strings compare by Unicode code point, where CouchDB uses ICU (UCA)
//! collation — they order differently for mixed case (`"B" < "a"` here, `"a" < "B"` in
//! CouchDB) and accents; equality is the same. `_id` is compared the same way (CouchDB compares
//! `_id` by raw bytes, which for strings is this order).
//!
//! `$regex` uses the `regex` crate: an unanchored search like CouchDB's PCRE `re:run`, but
//! without look-around and back-references; a pattern it cannot compile is a 400 `bad_arg`.
//! `$all` tests membership with the collation's equality (CouchDB uses Erlang's exact term
//! equality, which tells `1` from `1.0`).

use std::cmp::Ordering;
use std::fmt;

use std::borrow::Cow;

use regex::Regex;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use syncgate_storage::json::{push_compact, push_key, RawMembers};

/// A selector or projection the server refuses: CouchDB's error name and reason (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MangoError {
    pub error: &'static str,
    pub reason: String,
}

impl MangoError {
    fn new(error: &'static str, reason: impl Into<String>) -> Self {
        MangoError {
            error,
            reason: reason.into(),
        }
    }

    fn bad_arg(op: &str, arg: &Value) -> Self {
        MangoError::new(
            "bad_arg",
            format!("Bad argument for operator {op}: {}", shown(arg)),
        )
    }
}

impl fmt::Display for MangoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.reason)
    }
}

impl std::error::Error for MangoError {}

/// A JSON value shortened for an error message.
fn shown(v: &Value) -> String {
    crate::short(&v.to_string())
}

/// A field path: `"a.b\.c.0"` is `["a", "b.c", "0"]`.
pub type FieldPath = Vec<String>;

/// Splits a field name at unescaped dots (CouchDB's `mango_util:parse_field`): `\.` is a
/// literal dot and every backslash is dropped. An empty segment is a 400
/// `invalid_field_name`.
pub fn parse_field(name: &str) -> Result<FieldPath, MangoError> {
    let bad = || MangoError::new("invalid_field_name", format!("Invalid field name: {name}"));
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut prev_backslash = false;
    for c in name.chars() {
        match c {
            '.' if !prev_backslash => {
                if cur.is_empty() {
                    return Err(bad());
                }
                parts.push(std::mem::take(&mut cur));
            }
            '\\' => {}
            other => cur.push(other),
        }
        prev_backslash = c == '\\';
    }
    if cur.is_empty() {
        return Err(bad());
    }
    parts.push(cur);
    Ok(parts)
}

/// A compiled selector.
#[derive(Debug, Clone)]
pub struct Selector {
    root: Node,
}

#[derive(Debug, Clone)]
enum Node {
    /// The empty selector `{}`: matches everything.
    All,
    /// All must match (`[]` matches).
    And(Vec<Node>),
    /// One must match (`[]` matches, as CouchDB's matcher).
    Or(Vec<Node>),
    /// A condition on the value at `path` (an empty path is the value itself: inside
    /// `$elemMatch`, the array element).
    Field { path: FieldPath, cond: Cond },
}

#[derive(Debug, Clone)]
enum Cond {
    Eq(Value),
    Ne(Value),
    Lt(Value),
    Lte(Value),
    Gt(Value),
    Gte(Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
    Type(String),
    All(Vec<Value>),
    ElemMatch(Box<Node>),
    Size(u64),
    Regex(Regex),
    /// A negated condition that has no direct opposite (`$regex`, `$type`, `$size`, `$all`,
    /// `$elemMatch`).
    Not(Box<Cond>),
}

impl Cond {
    fn negate(self) -> Cond {
        match self {
            Cond::Eq(v) => Cond::Ne(v),
            Cond::Ne(v) => Cond::Eq(v),
            Cond::Lt(v) => Cond::Gte(v),
            Cond::Lte(v) => Cond::Gt(v),
            Cond::Gt(v) => Cond::Lte(v),
            Cond::Gte(v) => Cond::Lt(v),
            Cond::In(v) => Cond::Nin(v),
            Cond::Nin(v) => Cond::In(v),
            Cond::Exists(b) => Cond::Exists(!b),
            Cond::Not(c) => *c,
            other => Cond::Not(Box::new(other)),
        }
    }
}

/// Operators CouchDB has that this server does not evaluate.
const NOT_SUPPORTED: &[&str] = &[
    "$mod",
    "$allMatch",
    "$keyMapMatch",
    "$beginsWith",
    "$text",
    "$where",
    "$geoWithin",
    "$geoIntersects",
    "$near",
    "$nearSphere",
];

/// Where a condition is being compiled.
#[derive(Clone, Copy)]
struct Ctx {
    /// Conditions below are negated (`$not`/`$nor` pushed down).
    neg: bool,
    /// Inside `$elemMatch`: an empty path is the element itself.
    elem: bool,
}

impl Selector {
    /// Compiles a selector. It must be a JSON object; `{}` matches every document.
    pub fn parse(v: &Value) -> Result<Selector, MangoError> {
        let Value::Object(m) = v else {
            return Err(MangoError::new(
                "invalid_selector_json",
                format!("Selector must be a JSON object, not: {}", shown(v)),
            ));
        };
        if m.is_empty() {
            return Ok(Selector { root: Node::All });
        }
        let root = compile_map(
            m,
            &[],
            Ctx {
                neg: false,
                elem: false,
            },
        )?;
        Ok(Selector { root })
    }

    /// True when the document (its JSON with `_id`, `_rev` and, for a tombstone, `_deleted`)
    /// matches.
    pub fn matches(&self, doc: &Value) -> bool {
        eval(&self.root, doc)
    }
}

fn compile_map(m: &Map<String, Value>, path: &[String], ctx: Ctx) -> Result<Node, MangoError> {
    if m.is_empty() {
        // a bare `{}` where a condition is expected is an equality with `{}` (CouchDB)
        return terminal(path, Cond::Eq(Value::Object(Map::new())), ctx);
    }
    if m.len() == 1 {
        let (k, v) = m.iter().next().expect("one member");
        return compile_pair(k, v, path, ctx);
    }
    let parts = m
        .iter()
        .map(|(k, v)| compile_pair(k, v, path, ctx))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if ctx.neg {
        Node::Or(parts)
    } else {
        Node::And(parts)
    })
}

/// A selector position holding a non-object is an implicit `$eq` on the current path.
fn compile_value(v: &Value, path: &[String], ctx: Ctx) -> Result<Node, MangoError> {
    match v {
        Value::Object(m) => compile_map(m, path, ctx),
        other => terminal(path, Cond::Eq(other.clone()), ctx),
    }
}

fn terminal(path: &[String], cond: Cond, ctx: Ctx) -> Result<Node, MangoError> {
    if path.is_empty() && !ctx.elem {
        return Err(MangoError::new(
            "invalid_selector",
            "One or more conditions is missing a field name.",
        ));
    }
    Ok(Node::Field {
        path: path.to_vec(),
        cond: if ctx.neg { cond.negate() } else { cond },
    })
}

fn array_arg<'a>(op: &str, v: &'a Value) -> Result<&'a Vec<Value>, MangoError> {
    v.as_array().ok_or_else(|| MangoError::bad_arg(op, v))
}

fn compile_pair(k: &str, v: &Value, path: &[String], ctx: Ctx) -> Result<Node, MangoError> {
    let cond = match k {
        "$and" | "$or" | "$nor" => {
            let args = array_arg(k, v)?;
            // $and: all; $or: any; $nor: all of the negations. Negation swaps all/any.
            let (all, child_neg) = match k {
                "$and" => (!ctx.neg, ctx.neg),
                "$or" => (ctx.neg, ctx.neg),
                _ => (!ctx.neg, !ctx.neg),
            };
            let child = Ctx {
                neg: child_neg,
                ..ctx
            };
            let nodes = args
                .iter()
                .map(|a| compile_value(a, path, child))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if all {
                Node::And(nodes)
            } else {
                Node::Or(nodes)
            });
        }
        "$not" => {
            let Value::Object(m) = v else {
                return Err(MangoError::bad_arg(k, v));
            };
            return compile_map(
                m,
                path,
                Ctx {
                    neg: !ctx.neg,
                    ..ctx
                },
            );
        }
        "$elemMatch" => {
            let Value::Object(m) = v else {
                return Err(MangoError::bad_arg(k, v));
            };
            let inner = compile_map(
                m,
                &[],
                Ctx {
                    neg: false,
                    elem: true,
                },
            )?;
            Cond::ElemMatch(Box::new(inner))
        }
        "$eq" => Cond::Eq(v.clone()),
        "$ne" => Cond::Ne(v.clone()),
        "$lt" => Cond::Lt(v.clone()),
        "$lte" => Cond::Lte(v.clone()),
        "$gt" => Cond::Gt(v.clone()),
        "$gte" => Cond::Gte(v.clone()),
        "$in" => Cond::In(array_arg(k, v)?.clone()),
        "$nin" => Cond::Nin(array_arg(k, v)?.clone()),
        "$all" => Cond::All(array_arg(k, v)?.clone()),
        "$exists" => Cond::Exists(v.as_bool().ok_or_else(|| MangoError::bad_arg(k, v))?),
        "$type" => Cond::Type(
            v.as_str()
                .ok_or_else(|| MangoError::bad_arg(k, v))?
                .to_string(),
        ),
        "$size" => Cond::Size(v.as_u64().ok_or_else(|| MangoError::bad_arg(k, v))?),
        "$regex" => {
            let pattern = v.as_str().ok_or_else(|| MangoError::bad_arg(k, v))?;
            let re = Regex::new(pattern).map_err(|e| {
                let why = match e {
                    regex::Error::Syntax(_) => "not a supported regular expression",
                    regex::Error::CompiledTooBig(_) => "too large",
                    _ => "invalid",
                };
                MangoError::new(
                    "bad_arg",
                    format!("Bad argument for operator $regex: {} ({why})", shown(v)),
                )
            })?;
            Cond::Regex(re)
        }
        op if NOT_SUPPORTED.contains(&op) => {
            return Err(MangoError::new(
                "not_supported",
                format!("Unsupported operator: {op}"),
            ))
        }
        op if op.starts_with('$') => {
            return Err(MangoError::new(
                "invalid_operator",
                format!("Invalid operator: {}", crate::short(op)),
            ))
        }
        field => {
            let mut p = path.to_vec();
            p.extend(parse_field(field)?);
            return compile_value(v, &p, ctx);
        }
    };
    terminal(path, cond, ctx)
}

/// What a path leads to in a document.
enum Lookup<'a> {
    Found(&'a Value),
    /// An object lacks the member.
    NotFound,
    /// The path runs through a scalar, or a non-index (or out-of-range index) into an array.
    BadPath,
}

fn lookup<'a>(mut v: &'a Value, path: &[String]) -> Lookup<'a> {
    for seg in path {
        v = match v {
            Value::Object(m) => match m.get(seg) {
                Some(x) => x,
                None => return Lookup::NotFound,
            },
            Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get(i)) {
                Some(x) => x,
                None => return Lookup::BadPath,
            },
            _ => return Lookup::BadPath,
        };
    }
    Lookup::Found(v)
}

fn eval(node: &Node, v: &Value) -> bool {
    match node {
        Node::All => true,
        Node::And(ns) => ns.iter().all(|n| eval(n, v)),
        Node::Or(ns) => ns.is_empty() || ns.iter().any(|n| eval(n, v)),
        Node::Field { path, cond } => match lookup(v, path) {
            Lookup::Found(x) => eval_cond(cond, x),
            Lookup::NotFound => matches!(cond, Cond::Exists(false)),
            Lookup::BadPath => false,
        },
    }
}

fn eq(a: &Value, b: &Value) -> bool {
    collate(a, b) == Ordering::Equal
}

fn eval_cond(cond: &Cond, v: &Value) -> bool {
    match cond {
        Cond::Eq(a) => eq(v, a),
        Cond::Ne(a) => !eq(v, a),
        Cond::Lt(a) => collate(v, a) == Ordering::Less,
        Cond::Lte(a) => collate(v, a) != Ordering::Greater,
        Cond::Gt(a) => collate(v, a) == Ordering::Greater,
        Cond::Gte(a) => collate(v, a) != Ordering::Less,
        Cond::In(args) => match v {
            Value::Array(items) => args.iter().any(|a| items.iter().any(|x| eq(x, a))),
            _ => args.iter().any(|a| eq(v, a)),
        },
        Cond::Nin(args) => match v {
            Value::Array(items) => !args.iter().any(|a| items.iter().any(|x| eq(x, a))),
            _ => args.iter().all(|a| !eq(v, a)),
        },
        Cond::Exists(b) => *b,
        Cond::Type(t) => type_name(v) == t,
        Cond::All(args) => match v {
            Value::Array(items) if !args.is_empty() => {
                args.iter().all(|a| items.iter().any(|x| eq(x, a)))
                    || matches!(args.as_slice(), [a @ Value::Array(_)] if eq(a, v))
            }
            _ => false,
        },
        Cond::ElemMatch(n) => match v {
            Value::Array(items) => items.iter().any(|x| eval(n, x)),
            _ => false,
        },
        Cond::Size(n) => matches!(v, Value::Array(a) if a.len() as u64 == *n),
        Cond::Regex(re) => matches!(v, Value::String(s) if re.is_match(s)),
        Cond::Not(c) => !eval_cond(c, v),
    }
}

/// The `$type` name of a value.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(false) => 1,
        Value::Bool(true) => 2,
        Value::Number(_) => 3,
        Value::String(_) => 4,
        Value::Array(_) => 5,
        Value::Object(_) => 6,
    }
}

fn num_cmp(a: &serde_json::Number, b: &serde_json::Number) -> Ordering {
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    if let (Some(x), Some(y)) = (int(a), int(b)) {
        return x.cmp(&y);
    }
    // a number serde_json cannot hold as f64 (only with arbitrary precision) parses to ±inf
    let float = |n: &serde_json::Number| {
        n.as_f64()
            .unwrap_or_else(|| n.to_string().parse().unwrap_or(f64::NAN))
    };
    float(a).partial_cmp(&float(b)).unwrap_or(Ordering::Equal)
}

/// CouchDB's collation of JSON values (strings by code point; see the module docs).
pub fn collate(a: &Value, b: &Value) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = collate(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            for ((kp, vp), (kq, vq)) in x.iter().zip(y) {
                let o = kp.cmp(kq).then_with(|| collate(vp, vq));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        // same rank: null/null, false/false, true/true
        _ => Ordering::Equal,
    }
}

/// A `fields` list (CouchDB's `mango_fields`): `None` for "all fields" (absent or `[]`).
pub fn parse_fields(v: Option<&Value>) -> Result<Option<Vec<FieldPath>>, MangoError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(MangoError::new(
                "invalid_fields",
                format!("Fields must be an array of strings, not: {}", shown(other)),
            ))
        }
    };
    if items.is_empty() {
        return Ok(None);
    }
    items
        .iter()
        .map(|f| match f {
            Value::String(s) => parse_field(s),
            other => Err(MangoError::new(
                "invalid_field",
                format!("Invalid JSON for field spec: {}", shown(other)),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A JSON value split down to its scalars, each kept as its original text (number digits and
/// member order survive a projection).
#[derive(Clone)]
enum RawTree<'a> {
    Obj(Vec<(Cow<'a, str>, RawTree<'a>)>),
    Arr(Vec<RawTree<'a>>),
    Leaf(&'a RawValue),
}

impl<'a> RawTree<'a> {
    fn parse(v: &'a RawValue) -> Result<RawTree<'a>, serde_json::Error> {
        let text = v.get();
        Ok(match text.trim_start().as_bytes().first() {
            Some(b'{') => RawTree::Obj(
                RawMembers::parse(text.as_bytes())?
                    .0
                    .into_iter()
                    .map(|(k, v)| Ok((k, RawTree::parse(v)?)))
                    .collect::<Result<_, serde_json::Error>>()?,
            ),
            Some(b'[') => RawTree::Arr(
                serde_json::from_str::<Vec<&'a RawValue>>(text)?
                    .into_iter()
                    .map(RawTree::parse)
                    .collect::<Result<_, _>>()?,
            ),
            _ => RawTree::Leaf(v),
        })
    }

    fn lookup(&self, path: &[String]) -> Option<&RawTree<'a>> {
        let mut v = self;
        for seg in path {
            v = match v {
                RawTree::Obj(m) => &m.iter().find(|(k, _)| k == seg)?.1,
                RawTree::Arr(a) => a.get(seg.parse::<usize>().ok()?)?,
                RawTree::Leaf(_) => return None,
            };
        }
        Some(v)
    }

    fn set(&mut self, path: &[String], value: RawTree<'a>) {
        let Some((name, rest)) = path.split_first() else {
            return;
        };
        match self {
            RawTree::Obj(m) => match m.iter_mut().find(|(k, _)| k == name) {
                Some((_, slot)) if rest.is_empty() => *slot = value,
                Some((_, child)) => child.set(rest, value),
                None => {
                    let mut nested = value;
                    for seg in rest.iter().rev() {
                        nested = RawTree::Obj(vec![(Cow::Owned(seg.clone()), nested)]);
                    }
                    m.push((Cow::Owned(name.clone()), nested));
                }
            },
            RawTree::Arr(a) => {
                if let Some(slot) = name.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    if rest.is_empty() {
                        *slot = value;
                    } else {
                        slot.set(rest, value);
                    }
                }
            }
            RawTree::Leaf(_) => {}
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            RawTree::Obj(m) => {
                out.push(b'{');
                for (k, v) in m {
                    push_key(out, k);
                    v.write(out);
                }
                out.push(b'}');
            }
            RawTree::Arr(a) => {
                out.push(b'[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
            RawTree::Leaf(raw) => push_compact(out, raw.get()),
        }
    }
}

/// Keeps only `fields` of a document's JSON text, nested as in the document (CouchDB's
/// `mango_fields:extract`), in the order listed; values keep their text. Fields the document
/// lacks (or a path through a scalar) are left out; `_id` is kept only when listed.
pub fn project_text(doc: &[u8], fields: &[FieldPath]) -> Result<Vec<u8>, serde_json::Error> {
    let raw: &RawValue = serde_json::from_slice(doc)?;
    let tree = RawTree::parse(raw)?;
    let mut out = RawTree::Obj(Vec::new());
    for f in fields {
        if let Some(v) = tree.lookup(f) {
            out.set(f, v.clone());
        }
    }
    let mut text = Vec::with_capacity(doc.len().min(256));
    out.write(&mut text);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: Value) -> Selector {
        Selector::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn m(s: Value, doc: Value) -> bool {
        sel(s).matches(&doc)
    }

    fn err(v: Value) -> MangoError {
        Selector::parse(&v).expect_err(&v.to_string())
    }

    #[test]
    fn field_paths() {
        assert_eq!(parse_field("a").unwrap(), vec!["a"]);
        assert_eq!(parse_field("a.b.c").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(parse_field("a\\.b").unwrap(), vec!["a.b"]);
        assert_eq!(parse_field("a.b\\.c").unwrap(), vec!["a", "b.c"]);
        for bad in ["", "a..b", ".a", "a."] {
            assert_eq!(parse_field(bad).unwrap_err().error, "invalid_field_name");
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(m(json!({}), json!({"_id": "x"})));
        assert!(m(json!({}), json!({"_id": "x", "_deleted": true})));
    }

    #[test]
    fn eq_implicit_and_explicit() {
        let doc = json!({"_id": "a", "type": "note", "n": 1, "tags": ["x", "y"], "o": {"k": 1}});
        assert!(m(json!({"type": "note"}), doc.clone()));
        assert!(m(json!({"type": {"$eq": "note"}}), doc.clone()));
        assert!(!m(json!({"type": "leaf"}), doc.clone()));
        assert!(m(json!({"n": 1.0}), doc.clone()), "1 equals 1.0");
        // arrays and objects compare whole; a scalar does not match inside an array
        assert!(m(json!({"tags": ["x", "y"]}), doc.clone()));
        assert!(!m(json!({"tags": "x"}), doc.clone()));
        assert!(!m(json!({"tags": ["y", "x"]}), doc.clone()));
        assert!(m(json!({"o": {"$eq": {"k": 1}}}), doc.clone()));
        // an object value under a field is a nested path, `{}` an equality with {}
        assert!(m(json!({"o": {"k": 1}}), doc.clone()));
        assert!(!m(json!({"o": {}}), doc.clone()));
        assert!(m(json!({"e": {}}), json!({"e": {}})));
        // null is a value, not a missing field
        assert!(m(json!({"z": null}), json!({"z": null})));
        assert!(!m(json!({"z": null}), json!({})));
        assert!(!m(json!({"type": "note"}), json!({})));
    }

    #[test]
    fn ne_and_missing_fields() {
        // CouchDB: a condition on a missing field never matches, except $exists:false
        assert!(m(
            json!({"type": {"$ne": "leaf"}}),
            json!({"type": "plain"})
        ));
        assert!(!m(
            json!({"type": {"$ne": "leaf"}}),
            json!({"type": "leaf"})
        ));
        assert!(!m(json!({"type": {"$ne": "leaf"}}), json!({"_id": "x"})));
        assert!(!m(
            json!({"type": {"$ne": "leaf"}}),
            json!({"_id": "x", "_rev": "2-a", "_deleted": true})
        ));
        assert!(m(json!({"type": {"$ne": "leaf"}}), json!({"type": null})));
        assert!(
            m(json!({"n": {"$ne": "1"}}), json!({"n": 1})),
            "type mismatch"
        );
        // negation is pushed to the field, so it does not match missing fields either
        assert!(!m(json!({"$not": {"type": "leaf"}}), json!({})));
        assert!(m(json!({"$not": {"type": "leaf"}}), json!({"type": "x"})));
        assert!(!m(json!({"type": {"$not": {"$eq": "leaf"}}}), json!({})));
        assert!(!m(json!({"$nor": [{"a": 1}]}), json!({})));
        // ... except $exists, which flips
        assert!(m(json!({"$not": {"a": {"$exists": true}}}), json!({})));
    }

    #[test]
    fn ordering_operators() {
        let d = json!({"n": 5, "s": "m", "a": [1, 2]});
        assert!(m(json!({"n": {"$gt": 4}}), d.clone()));
        assert!(!m(json!({"n": {"$gt": 5}}), d.clone()));
        assert!(m(json!({"n": {"$gte": 5}}), d.clone()));
        assert!(m(json!({"n": {"$lt": 5.5}}), d.clone()));
        assert!(!m(json!({"n": {"$lt": 5}}), d.clone()));
        assert!(m(json!({"n": {"$lte": 5}}), d.clone()));
        assert!(m(json!({"n": {"$gt": 4, "$lt": 6}}), d.clone()));
        assert!(!m(json!({"n": {"$gt": 4, "$lt": 5}}), d.clone()));
        assert!(m(json!({"s": {"$gte": "a", "$lt": "n"}}), d.clone()));
        // across types: numbers < strings < arrays < objects; null < false < true < numbers
        assert!(m(json!({"n": {"$lt": "0"}}), d.clone()));
        assert!(m(json!({"n": {"$gt": true}}), d.clone()));
        assert!(m(json!({"n": {"$gt": null}}), d.clone()));
        assert!(m(json!({"s": {"$lt": []}}), d.clone()));
        assert!(m(json!({"a": {"$lt": {}}}), d.clone()));
        assert!(m(json!({"a": {"$gt": [1]}}), d.clone()));
        assert!(m(json!({"a": {"$lt": [1, 3]}}), d.clone()));
        // a missing field compares with nothing
        assert!(!m(json!({"x": {"$gt": null}}), d.clone()));
        assert!(!m(json!({"x": {"$lt": 0}}), d));
        // large integers compare exactly
        assert!(m(
            json!({"n": {"$gt": 9007199254740992u64}}),
            json!({"n": 9007199254740993u64})
        ));
    }

    #[test]
    fn collation_order() {
        let ordered = [
            json!(null),
            json!(false),
            json!(true),
            json!(-1),
            json!(0),
            json!(0.5),
            json!(2),
            json!(""),
            json!("A"),
            json!("a"),
            json!("b"),
            json!([]),
            json!([1]),
            json!([1, 2]),
            json!([2]),
            json!({}),
            json!({"a": 1}),
            json!({"a": 2}),
            json!({"a": 2, "b": 0}),
            json!({"b": 0}),
        ];
        for (i, x) in ordered.iter().enumerate() {
            for (j, y) in ordered.iter().enumerate() {
                assert_eq!(collate(x, y), i.cmp(&j), "{x} vs {y}");
            }
        }
    }

    #[test]
    fn in_and_nin() {
        assert!(m(json!({"t": {"$in": ["a", "b"]}}), json!({"t": "b"})));
        assert!(!m(json!({"t": {"$in": ["a", "b"]}}), json!({"t": "c"})));
        assert!(!m(json!({"t": {"$in": []}}), json!({"t": "c"})));
        assert!(!m(json!({"t": {"$in": ["a"]}}), json!({})));
        // an array in the document matches when any element is listed
        assert!(m(
            json!({"t": {"$in": ["x", "b"]}}),
            json!({"t": ["a", "b"]})
        ));
        assert!(!m(json!({"t": {"$in": ["x"]}}), json!({"t": ["a", "b"]})));
        assert!(m(json!({"t": {"$nin": ["a", "b"]}}), json!({"t": "c"})));
        assert!(!m(json!({"t": {"$nin": ["a", "b"]}}), json!({"t": "a"})));
        assert!(!m(json!({"t": {"$nin": ["x"]}}), json!({"t": ["x", "y"]})));
        assert!(m(json!({"t": {"$nin": ["z"]}}), json!({"t": ["x", "y"]})));
        assert!(m(json!({"t": {"$nin": []}}), json!({"t": 1})));
        assert!(
            !m(json!({"t": {"$nin": ["a"]}}), json!({})),
            "missing field"
        );
        assert!(m(json!({"n": {"$in": [1.0]}}), json!({"n": 1})));
    }

    #[test]
    fn exists() {
        assert!(m(json!({"a": {"$exists": true}}), json!({"a": null})));
        assert!(!m(json!({"a": {"$exists": true}}), json!({})));
        assert!(m(json!({"a": {"$exists": false}}), json!({})));
        assert!(!m(json!({"a": {"$exists": false}}), json!({"a": 1})));
        assert!(m(json!({"a.b": {"$exists": false}}), json!({"a": {}})));
        // a path through a scalar is neither present nor absent (CouchDB's bad_path)
        assert!(!m(json!({"a.b": {"$exists": false}}), json!({"a": 5})));
        assert!(!m(json!({"a.b": {"$exists": true}}), json!({"a": 5})));
        // combined with another condition on the same field: both must hold
        assert!(!m(json!({"a": {"$exists": false, "$ne": 1}}), json!({})));
    }

    #[test]
    fn type_operator() {
        let d = json!({"n": null, "b": false, "i": 3, "f": 1.5, "s": "", "a": [], "o": {}});
        for (f, t) in [
            ("n", "null"),
            ("b", "boolean"),
            ("i", "number"),
            ("f", "number"),
            ("s", "string"),
            ("a", "array"),
            ("o", "object"),
        ] {
            assert!(m(json!({f: {"$type": t}}), d.clone()), "{f} {t}");
            assert!(!m(json!({f: {"$type": "nope"}}), d.clone()));
            assert!(m(json!({f: {"$not": {"$type": "nope"}}}), d.clone()));
        }
        assert!(!m(json!({"x": {"$type": "null"}}), d));
    }

    #[test]
    fn combinators() {
        let d = json!({"a": 1, "b": 2});
        assert!(m(json!({"$and": [{"a": 1}, {"b": 2}]}), d.clone()));
        assert!(!m(json!({"$and": [{"a": 1}, {"b": 3}]}), d.clone()));
        assert!(m(json!({"$or": [{"a": 9}, {"b": 2}]}), d.clone()));
        assert!(!m(json!({"$or": [{"a": 9}, {"b": 9}]}), d.clone()));
        assert!(m(json!({"$nor": [{"a": 9}, {"b": 9}]}), d.clone()));
        assert!(!m(json!({"$nor": [{"a": 1}, {"b": 9}]}), d.clone()));
        assert!(m(json!({"$not": {"a": 9}}), d.clone()));
        assert!(!m(json!({"$not": {"a": 1}}), d.clone()));
        assert!(m(
            json!({"$not": {"$and": [{"a": 1}, {"b": 9}]}}),
            d.clone()
        ));
        assert!(!m(
            json!({"$not": {"$or": [{"a": 1}, {"b": 9}]}}),
            d.clone()
        ));
        assert!(m(json!({"$not": {"$not": {"a": 1}}}), d.clone()));
        assert!(m(json!({"$not": {"$nor": [{"a": 1}]}}), d.clone()));
        assert!(
            m(json!({"a": {"$or": [1, 5]}}), d.clone()),
            "field-level $or"
        );
        assert!(m(
            json!({"a": {"$and": [{"$gt": 0}, {"$lt": 2}]}}),
            d.clone()
        ));
        assert!(m(json!({"a": 1, "$or": [{"b": 2}, {"c": 3}]}), d.clone()));
        // empty lists, as CouchDB's matcher
        assert!(m(json!({"$and": []}), d.clone()));
        assert!(m(json!({"$or": []}), d.clone()));
        assert!(m(json!({"$nor": []}), d));
    }

    #[test]
    fn all_elem_match_size() {
        let d = json!({"t": ["a", "b", "c"], "s": "a", "r": [{"k": 1}, {"k": 5}], "n": [[1, 2]]});
        assert!(m(json!({"t": {"$all": ["a", "c"]}}), d.clone()));
        assert!(!m(json!({"t": {"$all": ["a", "z"]}}), d.clone()));
        assert!(!m(json!({"t": {"$all": []}}), d.clone()));
        assert!(!m(json!({"s": {"$all": ["a"]}}), d.clone()), "not an array");
        assert!(m(json!({"n": {"$all": [[1, 2]]}}), d.clone()));
        assert!(m(json!({"t": {"$all": [["a", "b", "c"]]}}), d.clone()));
        assert!(m(json!({"t": {"$elemMatch": {"$eq": "b"}}}), d.clone()));
        assert!(!m(json!({"t": {"$elemMatch": {"$eq": "z"}}}), d.clone()));
        assert!(m(
            json!({"r": {"$elemMatch": {"k": {"$gt": 3}}}}),
            d.clone()
        ));
        assert!(!m(
            json!({"r": {"$elemMatch": {"k": {"$gt": 5}}}}),
            d.clone()
        ));
        assert!(m(
            json!({"r": {"$elemMatch": {"k": {"$gte": 1, "$lt": 2}}}}),
            d.clone()
        ));
        assert!(m(
            json!({"t": {"$elemMatch": {"$gte": "b", "$lt": "c"}}}),
            d.clone()
        ));
        assert!(!m(json!({"s": {"$elemMatch": {"$eq": "a"}}}), d.clone()));
        assert!(m(json!({"t": {"$size": 3}}), d.clone()));
        assert!(!m(json!({"t": {"$size": 2}}), d.clone()));
        assert!(
            !m(json!({"s": {"$size": 1}}), d.clone()),
            "$size only for arrays"
        );
        assert!(m(json!({"t": {"$not": {"$size": 2}}}), d.clone()));
        assert!(!m(json!({"x": {"$not": {"$size": 2}}}), d));
    }

    #[test]
    fn regex() {
        let d = json!({"p": "notes/2024/today.md", "n": 5});
        assert!(m(json!({"p": {"$regex": "^notes/"}}), d.clone()));
        assert!(
            m(json!({"p": {"$regex": "today"}}), d.clone()),
            "unanchored"
        );
        assert!(!m(json!({"p": {"$regex": "^today"}}), d.clone()));
        assert!(m(json!({"p": {"$regex": "(?i)TODAY"}}), d.clone()));
        assert!(!m(json!({"n": {"$regex": "5"}}), d.clone()), "strings only");
        assert!(m(json!({"p": {"$not": {"$regex": "^x"}}}), d.clone()));
        assert!(!m(json!({"x": {"$not": {"$regex": "^x"}}}), d));
        let e = err(json!({"p": {"$regex": "(?<=a)b"}}));
        assert_eq!(e.error, "bad_arg");
        assert!(e.reason.contains("$regex"), "{e}");
        assert_eq!(err(json!({"p": {"$regex": 1}})).error, "bad_arg");
    }

    #[test]
    fn nested_and_dotted_paths() {
        let d = json!({"a": {"b": {"c": 1}}, "x.y": 2, "l": [{"k": "v"}, 7]});
        assert!(m(json!({"a.b.c": 1}), d.clone()));
        assert!(m(json!({"a": {"b": {"c": 1}}}), d.clone()));
        assert!(m(json!({"a": {"b.c": {"$gt": 0}}}), d.clone()));
        assert!(m(json!({"a.b": {"c": 1}}), d.clone()));
        assert!(!m(json!({"a.b.c": 2}), d.clone()));
        assert!(!m(json!({"a.c": 1}), d.clone()));
        assert!(m(json!({"x\\.y": 2}), d.clone()), "escaped dot");
        assert!(!m(json!({"x.y": 2}), d.clone()));
        assert!(m(json!({"l.0.k": "v"}), d.clone()), "array index");
        assert!(m(json!({"l.1": 7}), d.clone()));
        assert!(
            !m(json!({"l.2": {"$exists": false}}), d.clone()),
            "bad path"
        );
        assert!(!m(json!({"l.k": "v"}), d.clone()));
        assert!(m(json!({"_id": "d"}), json!({"_id": "d"})));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let e = err(json!({"a": {"$foo": 1}}));
        assert_eq!(e.error, "invalid_operator");
        assert!(e.reason.contains("$foo"));
        let e = err(json!({"$foo": 1}));
        assert_eq!(e.error, "invalid_operator");
        let e = err(json!({"a": {"$mod": [2, 1]}}));
        assert_eq!(e.error, "not_supported");
        assert!(e.reason.contains("$mod"));
        for (s, op) in [
            (json!({"a": {"$in": 1}}), "$in"),
            (json!({"a": {"$nin": "x"}}), "$nin"),
            (json!({"a": {"$all": {}}}), "$all"),
            (json!({"a": {"$exists": "yes"}}), "$exists"),
            (json!({"a": {"$type": 1}}), "$type"),
            (json!({"a": {"$size": -1}}), "$size"),
            (json!({"a": {"$size": 1.5}}), "$size"),
            (json!({"a": {"$elemMatch": []}}), "$elemMatch"),
            (json!({"$and": {}}), "$and"),
            (json!({"$or": 1}), "$or"),
            (json!({"$nor": "x"}), "$nor"),
            (json!({"$not": [1]}), "$not"),
        ] {
            let e = err(s.clone());
            assert_eq!(e.error, "bad_arg", "{s}");
            assert!(e.reason.contains(op), "{s}: {e}");
        }
        assert_eq!(err(json!([1])).error, "invalid_selector_json");
        assert_eq!(err(json!("x")).error, "invalid_selector_json");
        assert_eq!(err(json!({"$eq": 1})).error, "invalid_selector");
        assert_eq!(err(json!({"$and": [1]})).error, "invalid_selector");
        assert_eq!(err(json!({"a..b": 1})).error, "invalid_field_name");
        assert_eq!(err(json!({"": 1})).error, "invalid_field_name");
    }

    #[test]
    fn projection() {
        let doc = br#"{"_id":"d","a":{"b":1,"c":2.50},"l":[1,{"k":2}],"z":0,"big":12345678901234567890123}"#;
        let f = |v: Value| parse_fields(Some(&v)).unwrap().unwrap();
        let p = |fields: Value| String::from_utf8(project_text(doc, &f(fields)).unwrap()).unwrap();
        assert_eq!(p(json!(["z", "_id"])), r#"{"z":0,"_id":"d"}"#);
        assert_eq!(
            p(json!(["a.b", "missing", "a.x.y", "z.q"])),
            r#"{"a":{"b":1}}"#
        );
        assert_eq!(p(json!(["l.1.k"])), r#"{"l":{"1":{"k":2}}}"#);
        assert_eq!(p(json!(["a", "a.b"])), r#"{"a":{"b":1,"c":2.50}}"#);
        assert_eq!(
            p(json!(["big", "l"])),
            r#"{"big":12345678901234567890123,"l":[1,{"k":2}]}"#
        );
        assert_eq!(p(json!(["nothing"])), "{}");
        let spaced = br#"{ "a" : [ 1 , { "b" : "x y" } ] }"#;
        assert_eq!(
            project_text(spaced, &f(json!(["a"]))).unwrap(),
            br#"{"a":[1,{"b":"x y"}]}"#.to_vec()
        );
        assert!(project_text(b"{", &f(json!(["a"]))).is_err());
        assert_eq!(parse_fields(Some(&json!([]))).unwrap(), None);
        assert_eq!(parse_fields(None).unwrap(), None);
        assert_eq!(
            parse_fields(Some(&json!("a"))).unwrap_err().error,
            "invalid_fields"
        );
        assert_eq!(
            parse_fields(Some(&json!([1]))).unwrap_err().error,
            "invalid_field"
        );
    }
}

//! The JavaScript engine behind the sync function: QuickJS (rquickjs) runtimes owned by a small
//! pool of worker threads. Each worker compiles the function once into its own runtime; async
//! code sends calls over a channel and awaits the answer, so JS never runs on a reactor thread.
//! An interrupt handler stops a call that runs past the timeout, and the runtime that ran it is
//! replaced (as is one that ran out of memory).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rquickjs::context::EvalOptions;
use rquickjs::{Context, Ctx, Function, Persistent, Runtime, Value};
use syncgate_auth::ChannelMap;

const PRELUDE: &str = include_str!("prelude.js");
/// Memory one runtime may allocate.
pub const MEMORY_LIMIT: usize = 64 << 20;
/// JS stack of one runtime (the worker thread's stack is larger).
const JS_STACK: usize = 1 << 20;
const THREAD_STACK: usize = 8 << 20;

/// A syntax error in the function's source, located in the user's text (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "JavaScript error at line {} column {}: {}",
                self.line, self.column, self.message
            )
        } else {
            write!(f, "JavaScript error: {}", self.message)
        }
    }
}

/// Why a call produced no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// `throw({forbidden})` or a failed `require*`: 403 with this reason.
    Forbidden(String),
    /// `throw({unauthorized})`: 401.
    Unauthorized(String),
    /// Any other exception (the JS message, for the log only).
    Exception(String),
    /// The call ran past the timeout.
    TimedOut,
}

/// Who a call acts for: what `requireUser`, `requireRole` and `requireAccess` check.
#[derive(Debug, Clone)]
pub struct CallUser {
    /// The user's name (`""` for GUEST).
    pub name: String,
    pub roles: Vec<String>,
    /// The user's channels: looked up by `requireAccess`, never copied into the runtime (a
    /// user may hold one channel per shared document).
    pub channels: ChannelMap,
    /// `{"name","roles"}` as the helpers see them, encoded once for every call of a request.
    ctx_json: String,
}

impl CallUser {
    pub fn new(name: String, roles: Vec<String>, channels: ChannelMap) -> CallUser {
        let ctx_json = serde_json::json!({"name": name, "roles": roles}).to_string();
        CallUser {
            name,
            roles,
            channels,
            ctx_json,
        }
    }
}

/// One call's inputs: the documents as JSON text.
#[derive(Debug, Clone)]
pub struct CallInput {
    pub doc: String,
    pub old_doc: Option<String>,
    /// `None` for the admin (every `require*` passes).
    pub user: Option<Arc<CallUser>>,
}

thread_local! {
    /// The user of the call running on this worker thread (read by `requireAccess`).
    static CALL_USER: RefCell<Option<Arc<CallUser>>> = const { RefCell::new(None) };
}

/// Whether the current call's user holds `channel` (`*` included).
fn has_channel(channel: String) -> bool {
    CALL_USER.with(|u| match &*u.borrow() {
        None => true,
        Some(u) => u.channels.contains_key(&channel) || u.channels.contains_key("*"),
    })
}

/// What the helpers collected, as the JSON text `{"channels","access","roles"}`.
pub type CallResult = Result<String, CallError>;

struct Job {
    input: CallInput,
    reply: tokio::sync::oneshot::Sender<CallResult>,
}

/// A compiled function in one runtime.
struct Vm {
    // field order: the persistent function and the context go before their runtime
    run: Persistent<Function<'static>>,
    ctx: Context,
    _rt: Runtime,
    /// Nanoseconds since `base` after which the interrupt handler stops the call.
    deadline: Arc<AtomicU64>,
    base: Instant,
}

fn eval_options(name: &str) -> EvalOptions {
    let mut o = EvalOptions::default();
    o.strict = false;
    o.global = true;
    o.filename = Some(name.to_string());
    o
}

/// The pending exception's description: its message (and stack when there is one).
fn describe<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> (String, Option<String>) {
    if let Some(exc) = v.as_exception() {
        let msg = exc.message().unwrap_or_default();
        let name: Option<String> = exc.get("name").ok();
        let text = match name {
            Some(n) if !n.is_empty() => format!("{n}: {msg}"),
            _ => msg,
        };
        return (text, exc.stack());
    }
    if let Some(s) = v.as_string().and_then(|s| s.to_string().ok()) {
        return (s, None);
    }
    let text = ctx
        .json_stringify(v)
        .ok()
        .flatten()
        .and_then(|s| s.to_string().ok())
        .unwrap_or_else(|| "a non-JSON value".into());
    (text, None)
}

/// `line:column` of the first frame in `file` of a stack trace.
fn location(stack: &str, file: &str) -> Option<(u32, u32)> {
    let at = stack.find(&format!("{file}:"))? + file.len() + 1;
    let mut parts = stack[at..].split(|c: char| !c.is_ascii_digit());
    let line = parts.next()?.parse().ok()?;
    let column = parts.next()?.parse().ok()?;
    Some((line, column))
}

impl Vm {
    fn new(source: &str) -> Result<Vm, CompileError> {
        let internal = |e: rquickjs::Error| CompileError {
            line: 0,
            column: 0,
            message: format!("cannot start the JavaScript engine: {e}"),
        };
        let rt = Runtime::new().map_err(internal)?;
        rt.set_memory_limit(MEMORY_LIMIT);
        rt.set_max_stack_size(JS_STACK);
        let deadline = Arc::new(AtomicU64::new(u64::MAX));
        let base = Instant::now();
        let d = deadline.clone();
        rt.set_interrupt_handler(Some(Box::new(move || {
            base.elapsed().as_nanos() as u64 > d.load(Ordering::Relaxed)
        })));
        let ctx = Context::full(&rt).map_err(internal)?;
        let run = ctx.with(|ctx| -> Result<_, CompileError> {
            let fail = |ctx: &Ctx<'_>, e: rquickjs::Error| -> CompileError {
                if !matches!(e, rquickjs::Error::Exception) {
                    return CompileError {
                        line: 0,
                        column: 0,
                        message: e.to_string(),
                    };
                }
                let (message, stack) = describe(ctx, ctx.catch());
                // the source is compiled as "(\n" + source + "\n)": its line 1 is line 2
                let (line, column) = stack
                    .as_deref()
                    .and_then(|s| location(s, "sync"))
                    .map(|(l, c)| (l.saturating_sub(1), c))
                    .unwrap_or((0, 0));
                CompileError {
                    line,
                    column,
                    message,
                }
            };
            let has = Function::new(ctx.clone(), has_channel).map_err(|e| fail(&ctx, e))?;
            ctx.globals()
                .set("__sg_has_channel", has)
                .map_err(|e| fail(&ctx, e))?;
            ctx.eval_with_options::<(), _>(PRELUDE, eval_options("prelude"))
                .map_err(|e| fail(&ctx, e))?;
            let wrapped = format!("(\n{source}\n)");
            let f: Value = ctx
                .eval_with_options(wrapped, eval_options("sync"))
                .map_err(|e| fail(&ctx, e))?;
            let bind: Function = ctx.globals().get("__sg_bind").map_err(|e| fail(&ctx, e))?;
            let run: Function = bind.call((f,)).map_err(|e| fail(&ctx, e))?;
            Ok(Persistent::save(&ctx, run))
        })?;
        Ok(Vm {
            run,
            ctx,
            _rt: rt,
            deadline,
            base,
        })
    }

    /// Runs one call. The second value is true when this runtime must be replaced.
    fn call(&self, input: &CallInput, timeout: Duration) -> (CallResult, bool) {
        let limit = self.base.elapsed() + timeout;
        self.deadline
            .store(limit.as_nanos() as u64, Ordering::Relaxed);
        // the helpers see the name and roles as JSON; the channels through `has_channel`
        let user_ctx = input.user.as_ref().map(|u| u.ctx_json.as_str());
        CALL_USER.with(|u| *u.borrow_mut() = input.user.clone());
        let result = self.ctx.with(|ctx| {
            let run = match self.run.clone().restore(&ctx) {
                Ok(f) => f,
                Err(e) => return (Err(CallError::Exception(e.to_string())), true),
            };
            let out: rquickjs::Result<String> =
                run.call((input.doc.as_str(), input.old_doc.as_deref(), user_ctx));
            match out {
                Ok(s) => (Ok(s), false),
                Err(rquickjs::Error::Exception) => {
                    let (msg, stack) = describe(&ctx, ctx.catch());
                    if self.base.elapsed() > limit {
                        return (Err(CallError::TimedOut), true);
                    }
                    let fatal = msg.contains("out of memory");
                    let detail = match stack {
                        Some(s) if !s.is_empty() => format!("{msg}\n{s}"),
                        _ => msg,
                    };
                    (Err(CallError::Exception(detail)), fatal)
                }
                Err(e) => (Err(CallError::Exception(e.to_string())), true),
            }
        });
        self.deadline.store(u64::MAX, Ordering::Relaxed);
        CALL_USER.with(|u| *u.borrow_mut() = None);
        result
    }
}

/// Checks that `source` compiles to a function (what config validation and
/// `PUT _config/sync` run).
pub fn check(source: &str) -> Result<(), CompileError> {
    Vm::new(source).map(|_| ())
}

/// A compiled sync function served by a pool of worker threads. Dropping it ends the workers
/// once the calls already queued are answered.
pub struct Engine {
    source: Arc<str>,
    /// One queue per worker (no lock shared between workers): a call goes to the worker with
    /// the fewest calls queued.
    workers: Vec<WorkerQueue>,
    /// Where the search for the least busy worker starts (rotates, to spread ties).
    next: AtomicUsize,
}

struct WorkerQueue {
    tx: mpsc::Sender<Job>,
    /// Calls sent to this worker and not answered yet.
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Compiles `source` (once here, to report errors; then once per worker) and starts
    /// `workers` threads.
    pub fn start(source: &str, timeout: Duration, workers: usize) -> Result<Engine, CompileError> {
        check(source)?;
        let source: Arc<str> = Arc::from(source);
        let mut queues = Vec::new();
        for i in 0..workers.max(1) {
            let (tx, rx) = mpsc::channel::<Job>();
            let queued = Arc::new(AtomicUsize::new(0));
            let src = source.clone();
            let count = queued.clone();
            std::thread::Builder::new()
                .name(format!("sync-fn-{i}"))
                .stack_size(THREAD_STACK)
                .spawn(move || worker(&src, timeout, &rx, &count))
                .map_err(|e| CompileError {
                    line: 0,
                    column: 0,
                    message: format!("cannot start a JavaScript worker thread: {e}"),
                })?;
            queues.push(WorkerQueue { tx, queued });
        }
        Ok(Engine {
            source,
            workers: queues,
            next: AtomicUsize::new(0),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the function on a worker and awaits its result.
    pub async fn call(&self, input: CallInput) -> CallResult {
        self.submit(input).await
    }

    /// Queues a call now; the returned future awaits its result (so several calls can run on
    /// the workers at once).
    pub fn submit(
        &self,
        input: CallInput,
    ) -> impl std::future::Future<Output = CallResult> + Send + 'static {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let w = (0..n)
            .map(|i| &self.workers[(start + i) % n])
            .min_by_key(|w| w.queued.load(Ordering::Relaxed))
            .unwrap_or(&self.workers[0]);
        w.queued.fetch_add(1, Ordering::Relaxed);
        let sent = w.tx.send(Job { input, reply }).is_ok();
        async move {
            if !sent {
                return Err(CallError::Exception(
                    "the JavaScript workers have stopped".into(),
                ));
            }
            rx.await
                .unwrap_or_else(|_| Err(CallError::Exception("a JavaScript worker stopped".into())))
        }
    }
}

fn worker(source: &str, timeout: Duration, rx: &mpsc::Receiver<Job>, queued: &AtomicUsize) {
    let mut vm: Option<Vm> = None;
    while let Ok(job) = rx.recv() {
        if vm.is_none() {
            match Vm::new(source) {
                Ok(v) => vm = Some(v),
                Err(e) => {
                    queued.fetch_sub(1, Ordering::Relaxed);
                    let _ = job.reply.send(Err(CallError::Exception(e.to_string())));
                    continue;
                }
            }
        }
        let Some(v) = vm.as_ref() else { continue };
        let (result, replace) = v.call(&job.input, timeout);
        if replace {
            vm = None;
        }
        queued.fetch_sub(1, Ordering::Relaxed);
        let _ = job.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(doc: &str, old: Option<&str>, ctx: Option<&str>) -> CallInput {
        CallInput {
            doc: doc.into(),
            old_doc: old.map(str::to_string),
            user: ctx.map(|c| Arc::new(super::super::call_user_from_json(c).unwrap())),
        }
    }

    fn engine(src: &str) -> Engine {
        Engine::start(src, Duration::from_millis(200), 2).unwrap()
    }

    #[tokio::test]
    async fn channels_access_roles() {
        let e = engine(
            "function(doc, oldDoc) { channel(doc.channels); channel('a', ['b', 5, null]);\
             access(doc.owner, 'ch-' + doc._id); access(['u1','u2'], ['x','y']); role('u1', 'role:r'); }",
        );
        let out = e
            .call(input(
                r#"{"_id":"d","channels":"c","owner":"o"}"#,
                None,
                None,
            ))
            .await
            .unwrap();
        assert_eq!(
            out,
            r#"{"channels":["c","a","b"],"access":{"o":["ch-d"],"u1":["x","y"],"u2":["x","y"]},"roles":{"u1":["role:r"]}}"#
        );
    }

    #[tokio::test]
    async fn throws_and_requires() {
        let e = engine(
            "function(doc, oldDoc) { if (doc.t == 'f') throw({forbidden: 'no way'});\
             if (doc.t == 'u') throw({unauthorized: 'login'}); if (doc.t == 's') throw('text');\
             if (doc.t == 'x') doc.a.b.c; if (doc.t == 'user') requireUser(oldDoc.owner);\
             if (doc.t == 'role') requireRole('mod'); if (doc.t == 'acc') requireAccess('c');\
             if (doc.t == 'admin') requireAdmin(); }",
        );
        let call = |doc: &str, old: Option<&str>, ctx: Option<&str>| e.call(input(doc, old, ctx));
        assert_eq!(
            call(r#"{"t":"f"}"#, None, None).await.unwrap(),
            r#"{"reject":403,"reason":"no way"}"#
        );
        assert_eq!(
            call(r#"{"t":"u"}"#, None, None).await.unwrap(),
            r#"{"reject":401,"reason":"login"}"#
        );
        assert!(matches!(
            call(r#"{"t":"s"}"#, None, None).await,
            Err(CallError::Exception(m)) if m.contains("text")
        ));
        assert!(matches!(
            call(r#"{"t":"x"}"#, None, None).await,
            Err(CallError::Exception(m)) if m.contains("TypeError")
        ));
        let alice = Some(r#"{"name":"alice","roles":["mod"],"channels":["c"]}"#);
        let bob = Some(r#"{"name":"bob","roles":[],"channels":["*"]}"#);
        let owner = Some(r#"{"owner":"alice"}"#);
        let ok = r#"{"channels":[],"access":{},"roles":{}}"#;
        // requireRole/requireAccess say they read the caller's roles or channels
        let consulted = r#"{"channels":[],"access":{},"roles":{},"consulted":true}"#;
        assert_eq!(call(r#"{"t":"user"}"#, owner, alice).await.unwrap(), ok);
        assert_eq!(
            call(r#"{"t":"user"}"#, owner, bob).await.unwrap(),
            r#"{"reject":403,"reason":"sg wrong user"}"#
        );
        assert_eq!(call(r#"{"t":"user"}"#, owner, None).await.unwrap(), ok);
        assert_eq!(
            call(r#"{"t":"role"}"#, None, alice).await.unwrap(),
            consulted
        );
        assert_eq!(
            call(r#"{"t":"role"}"#, None, bob).await.unwrap(),
            r#"{"reject":403,"reason":"sg missing role"}"#
        );
        assert_eq!(call(r#"{"t":"acc"}"#, None, bob).await.unwrap(), consulted);
        assert_eq!(
            call(r#"{"t":"acc"}"#, None, alice).await.unwrap(),
            consulted
        );
        let carol = Some(r#"{"name":"carol","roles":[],"channels":["d"]}"#);
        assert_eq!(
            call(r#"{"t":"acc"}"#, None, carol).await.unwrap(),
            r#"{"reject":403,"reason":"sg missing channel access"}"#
        );
        assert_eq!(
            call(r#"{"t":"admin"}"#, None, alice).await.unwrap(),
            r#"{"reject":403,"reason":"sg admin required"}"#
        );
        assert_eq!(call(r#"{"t":"admin"}"#, None, None).await.unwrap(), ok);
    }

    #[tokio::test]
    async fn timeout_replaces_the_runtime() {
        let e = Engine::start(
            "function(doc) { if (doc.loop) while (true) {} channel('ok'); }",
            Duration::from_millis(100),
            1,
        )
        .unwrap();
        let t = Instant::now();
        assert_eq!(
            e.call(input(r#"{"loop":true}"#, None, None)).await,
            Err(CallError::TimedOut)
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(
            e.call(input("{}", None, None)).await.unwrap(),
            r#"{"channels":["ok"],"access":{},"roles":{}}"#
        );
    }

    #[tokio::test]
    async fn recursion_and_memory_are_exceptions() {
        let e = engine(
            "function(doc) { if (doc.r) { var f = function(n) { return f(n + 1) + 1; }; f(0); }\
             if (doc.m) { var a = []; while (true) a.push({x: a.length, s: 'abc' + a.length}); } }",
        );
        assert!(matches!(
            e.call(input(r#"{"r":1}"#, None, None)).await,
            Err(CallError::Exception(_))
        ));
        assert!(matches!(
            e.call(input(r#"{"m":1}"#, None, None)).await,
            Err(CallError::Exception(_)) | Err(CallError::TimedOut)
        ));
        assert!(e.call(input("{}", None, None)).await.is_ok());
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = check("function(doc) {\n  channel(doc.x;\n}").unwrap_err();
        assert_eq!(err.line, 2, "{err:?}");
        assert!(err.column > 0, "{err:?}");
        assert!(check("42").is_err());
        assert!(check("function(doc){ channel(doc.channels); }").is_ok());
        // ES5 sources in sloppy mode, as Sync Gateway runs them
        assert!(check("function(doc){ x = 1; with (doc) {} }").is_ok());
    }

    #[tokio::test]
    async fn helpers_cannot_be_replaced() {
        let e = engine("function(doc) { try { channel = null; } catch (e) {} channel('c'); }");
        assert_eq!(
            e.call(input("{}", None, None)).await.unwrap(),
            r#"{"channels":["c"],"access":{},"roles":{}}"#
        );
    }
}

//! Linearizability checker for raftset's key-value register model.
//!
//! Model: every key is an independent register holding `Option<Vec<u8>>`
//! (`None` = absent) with read, write, compare-and-swap, delete and decimal
//! integer increment. Operations on different keys commute, so a history is
//! linearizable iff every per-key sub-history is (P-compositionality); keys are
//! checked one at a time, in key order.
//!
//! Algorithm: Wing & Gong's depth-first search over "which pending operation
//! takes effect next", pruned with Lowe's cache of (linearized set, state), as
//! in Knossos and Porcupine. Operations with an unknown outcome have no return
//! event: they may take effect at any point after their invocation, or never.
//! Because that makes them concurrent with the whole rest of the history, the
//! search only considers linearizations in a normal form that loses nothing:
//! an unknown operation must change the state, a run of unknown operations must
//! be needed by the known operation right after it (otherwise the run could be
//! dropped or moved later), identical unknown operations are used in invocation
//! order, and the cache prunes by dominance — a (known set, state) that already
//! failed while fewer unknown operations were spent fails again with more of
//! them spent. A brute-force oracle in the tests cross-checks these rules.
//!
//! Limitation: acceptance stays fast, but refuting a history costs roughly
//! exponentially more with every unknown increment/CAS/write that remains a
//! candidate, because each can "patch" wrong orderings; a tight budget then
//! yields `Inconclusive` rather than a wrong verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use fixedbitset::FixedBitSet;
use rustc_hash::FxHashMap;

/// An operation on a single key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write(Vec<u8>),
    /// `expected: None` means "the key must be absent".
    Cas {
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    Delete,
    /// Absent counts as 0; the stored value must be the decimal ASCII of an i64.
    Increment(i64),
}

/// What the client learned about an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The operation completed and we saw its result.
    Ok(OkValue),
    /// Definitely did not take effect (e.g. rejected before proposing).
    Fail,
    /// May or may not have taken effect, at any time after invoke.
    Unknown,
}

/// The result reported for a completed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OkValue {
    Read(Option<Vec<u8>>),
    Written,
    /// `true` = swapped, `false` = the comparison failed.
    CasResult(bool),
    Deleted,
    /// The new value.
    Incremented(i64),
}

/// One client operation: invocation and (maybe) completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub client: u64,
    pub key: Vec<u8>,
    pub op: Op,
    /// Monotonic nanoseconds.
    pub invoke: u64,
    /// `None` for unknown outcomes: treated as completing at +infinity.
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable { key: Vec<u8>, explanation: String },
    Inconclusive { key: Vec<u8>, reason: String },
}

/// Checks `history` against the register model, key by key.
///
/// `budget` bounds the wall-clock time of the whole check; a key whose search
/// is still running when it runs out yields `Inconclusive`. A definite
/// violation on any key takes precedence over an inconclusive key.
pub fn check(history: &History, budget: Duration) -> Verdict {
    // A budget too large to represent as an Instant means "no limit".
    let deadline = Instant::now().checked_add(budget);
    let mut by_key: BTreeMap<&[u8], Vec<&Event>> = BTreeMap::new();
    for ev in &history.events {
        let drop = match ev.outcome {
            Outcome::Fail => true,
            // An unanswered read has no effect and constrains nothing.
            Outcome::Unknown => matches!(ev.op, Op::Read),
            Outcome::Ok(_) => false,
        };
        if !drop {
            by_key.entry(ev.key.as_slice()).or_default().push(ev);
        }
    }
    let mut inconclusive = None;
    for (key, events) in by_key {
        match KeyChecker::new(&events).run(deadline, budget) {
            KeyResult::Linearizable => {}
            KeyResult::NotLinearizable(explanation) => {
                return Verdict::NotLinearizable {
                    key: key.to_vec(),
                    explanation,
                };
            }
            KeyResult::OutOfTime(reason) => {
                // Keep going: the deadline is only polled every few hundred
                // steps, so small later keys still get checked and a definite
                // violation there is the more useful answer.
                if inconclusive.is_none() {
                    inconclusive = Some(Verdict::Inconclusive {
                        key: key.to_vec(),
                        reason,
                    });
                }
            }
        }
    }
    inconclusive.unwrap_or(Verdict::Linearizable)
}

// ---------------------------------------------------------------------------
// Model

/// Interned register state: 0 is "absent", n > 0 indexes `Values::bytes`.
/// Interning keeps cache keys to one machine word per state.
type St = u32;
const ABSENT: St = 0;

struct Values {
    /// FxHash: the cache is hashed millions of times and needs no DoS
    /// resistance.
    ids: FxHashMap<Vec<u8>, St>,
    /// Index 0 is a placeholder for ABSENT.
    bytes: Vec<Vec<u8>>,
    /// Decimal interpretation for Increment; absent counts as 0.
    ints: Vec<Option<i64>>,
}

impl Values {
    fn new() -> Self {
        Values {
            ids: FxHashMap::default(),
            bytes: vec![Vec::new()],
            ints: vec![Some(0)],
        }
    }

    fn intern(&mut self, v: &[u8]) -> St {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = self.bytes.len() as St;
        self.bytes.push(v.to_vec());
        self.ints.push(
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok()),
        );
        self.ids.insert(v.to_vec(), id);
        id
    }

    fn intern_opt(&mut self, v: Option<&Vec<u8>>) -> St {
        v.map_or(ABSENT, |v| self.intern(v))
    }

    fn describe(&self, st: St) -> String {
        if st == ABSENT {
            return "absent".to_string();
        }
        self.bytes
            .get(st as usize)
            .map_or_else(|| "?".to_string(), |b| fmt_bytes(b))
    }

    /// The model's transition function: the state after `op` with result
    /// `res` is applied to `st`, or None if that result is impossible there.
    fn step(&mut self, st: St, op: MOp, res: MRes) -> Option<St> {
        match (op, res) {
            (MOp::Read, MRes::Read(v)) => (v == st).then_some(st),
            (MOp::Write(v), MRes::Written | MRes::Unknown) => Some(v),
            (MOp::Delete, MRes::Deleted | MRes::Unknown) => Some(ABSENT),
            (MOp::Cas { expected, new }, MRes::Cas(true)) => (st == expected).then_some(new),
            (MOp::Cas { expected, .. }, MRes::Cas(false)) => (st != expected).then_some(st),
            (MOp::Cas { expected, new }, MRes::Unknown) => {
                Some(if st == expected { new } else { st })
            }
            (MOp::Inc(d), MRes::Inc(new_st, n)) => {
                let cur = self.ints.get(st as usize).copied().flatten()?;
                (cur.checked_add(d)? == n).then_some(new_st)
            }
            (MOp::Inc(d), MRes::Unknown) => {
                let cur = self.ints.get(st as usize).copied().flatten()?;
                let n = cur.checked_add(d)?;
                Some(self.intern(n.to_string().as_bytes()))
            }
            // Result of the wrong kind for the operation: never valid.
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MOp {
    Read,
    Write(St),
    Cas { expected: St, new: St },
    Delete,
    Inc(i64),
}

impl MOp {
    /// Blind operations set the state without looking at it.
    fn is_blind(self) -> bool {
        matches!(self, MOp::Write(_) | MOp::Delete)
    }
}

#[derive(Debug, Clone, Copy)]
enum MRes {
    Unknown,
    Read(St),
    Written,
    Cas(bool),
    Deleted,
    /// Interned new state and its integer value.
    Inc(St, i64),
}

// ---------------------------------------------------------------------------
// Search

const NIL: usize = usize::MAX;
const HEAD: usize = 0;
/// How many operations of the longest prefix an explanation lists.
const MAX_LISTED: usize = 12;
const MAX_PENDING_LISTED: usize = 6;

struct OpInfo<'a> {
    ev: &'a Event,
    op: MOp,
    res: MRes,
    unknown: bool,
    /// Bit index in the known or unknown bitset, depending on `unknown`.
    slot: usize,
    /// Previous unknown op (by invocation) identical to this one; this one
    /// may only be linearized after it.
    prev_same: Option<usize>,
}

struct Frame {
    /// The operation whose linearization led to this node.
    via: Option<usize>,
    state: St,
    /// If this node ends a run of unknown ops: the state before that run.
    chain_start: Option<St>,
    /// Candidate range in the shared candidate stack, and the next to try.
    start: usize,
    next: usize,
    end: usize,
}

/// Where the deepest failed attempt got stuck, for the explanation.
struct Stuck {
    path: Vec<usize>,
    state: St,
    blocked: Option<usize>,
    pending: Vec<usize>,
}

/// state -> known-op bitset -> (chain_start, unknown-op bitset) of every node
/// whose whole subtree failed. Keyed by state first, so a lookup borrows the
/// live bitset and allocates nothing.
type FailedCache = FxHashMap<St, FxHashMap<FixedBitSet, Vec<(Option<St>, FixedBitSet)>>>;

enum KeyResult {
    Linearizable,
    NotLinearizable(String),
    OutOfTime(String),
}

struct KeyChecker<'a> {
    ops: Vec<OpInfo<'a>>,
    vals: Values,
    // Doubly linked list of call/return entries in time order (HEAD is a
    // sentinel), so linearized ops can be unlinked and relinked in O(1).
    next: Vec<usize>,
    prev: Vec<usize>,
    node_op: Vec<usize>,
    node_is_ret: Vec<bool>,
    call_node: Vec<usize>,
    ret_node: Vec<Option<usize>>,
    /// Linearized known ops.
    kbits: FixedBitSet,
    /// Linearized unknown ops.
    ubits: FixedBitSet,
    known_left: usize,
    n_unknown: usize,
}

impl<'a> KeyChecker<'a> {
    fn new(events: &[&'a Event]) -> Self {
        let mut vals = Values::new();
        let mut ops = Vec::with_capacity(events.len());
        let (mut n_known, mut n_unknown) = (0, 0);
        for &ev in events {
            let op = match &ev.op {
                Op::Read => MOp::Read,
                Op::Write(v) => MOp::Write(vals.intern(v)),
                Op::Cas { expected, new } => MOp::Cas {
                    expected: vals.intern_opt(expected.as_ref()),
                    new: vals.intern(new),
                },
                Op::Delete => MOp::Delete,
                Op::Increment(d) => MOp::Inc(*d),
            };
            let res = match &ev.outcome {
                // Fail events are filtered out by `check`; treating a stray
                // one as unknown is the conservative reading.
                Outcome::Unknown | Outcome::Fail => MRes::Unknown,
                Outcome::Ok(OkValue::Read(v)) => MRes::Read(vals.intern_opt(v.as_ref())),
                Outcome::Ok(OkValue::Written) => MRes::Written,
                Outcome::Ok(OkValue::CasResult(b)) => MRes::Cas(*b),
                Outcome::Ok(OkValue::Deleted) => MRes::Deleted,
                Outcome::Ok(OkValue::Incremented(n)) => {
                    MRes::Inc(vals.intern(n.to_string().as_bytes()), *n)
                }
            };
            let unknown = matches!(res, MRes::Unknown);
            let slot = if unknown {
                &mut n_unknown
            } else {
                &mut n_known
            };
            ops.push(OpInfo {
                ev,
                op,
                res,
                unknown,
                slot: *slot,
                prev_same: None,
            });
            *slot += 1;
        }

        // (time, kind, op): at equal times calls sort before returns, so
        // operations touching at an instant count as concurrent (the
        // permissive reading, as in Porcupine).
        let mut entries: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, o) in ops.iter().enumerate() {
            entries.push((o.ev.invoke, 0, i));
            if !o.unknown {
                // A completed op without a completion time could have
                // returned any time later; clamp so it never returns before
                // it was invoked.
                let ret = o.ev.complete.unwrap_or(u64::MAX).max(o.ev.invoke);
                entries.push((ret, 1, i));
            }
        }
        entries.sort_unstable();

        let m = entries.len();
        let mut next = vec![NIL; m + 1];
        let mut prev = vec![NIL; m + 1];
        let mut node_op = vec![NIL; m + 1];
        let mut node_is_ret = vec![false; m + 1];
        let mut call_node = vec![NIL; ops.len()];
        let mut ret_node = vec![None; ops.len()];
        let mut last_same: FxHashMap<MOp, usize> = FxHashMap::default();
        for (idx, &(_, kind, o)) in entries.iter().enumerate() {
            let node = idx + 1;
            prev[node] = node - 1;
            next[node - 1] = node;
            node_op[node] = o;
            node_is_ret[node] = kind == 1;
            if kind == 1 {
                ret_node[o] = Some(node);
            } else {
                call_node[o] = node;
                if ops[o].unknown {
                    ops[o].prev_same = last_same.insert(ops[o].op, o);
                }
            }
        }

        KeyChecker {
            ops,
            vals,
            next,
            prev,
            node_op,
            node_is_ret,
            call_node,
            ret_node,
            kbits: FixedBitSet::with_capacity(n_known),
            ubits: FixedBitSet::with_capacity(n_unknown),
            known_left: n_known,
            n_unknown,
        }
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        if n != NIL {
            self.prev[n] = x;
        }
    }

    // lift/unlift must mirror each other exactly (dancing links).
    fn lift(&mut self, o: usize) {
        self.unlink(self.call_node[o]);
        if let Some(r) = self.ret_node[o] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, o: usize) {
        if let Some(r) = self.ret_node[o] {
            self.relink(r);
        }
        self.relink(self.call_node[o]);
    }

    fn mark(&mut self, o: usize, on: bool) {
        let (unknown, slot) = (self.ops[o].unknown, self.ops[o].slot);
        let bits = if unknown {
            &mut self.ubits
        } else {
            &mut self.kbits
        };
        bits.set(slot, on);
    }

    /// Pushes the ops that may take effect next: every call before the first
    /// pending return. Known ops go first because a linearizable history
    /// rarely needs an unknown op at any given point.
    fn candidates(&self, in_chain: bool, out: &mut Vec<usize>) {
        for want_unknown in [false, true] {
            let mut e = self.next[HEAD];
            while e != NIL && !self.node_is_ret[e] {
                let o = self.node_op[e];
                let info = &self.ops[o];
                let allowed = info.unknown == want_unknown
                    && !(in_chain && info.op.is_blind())
                    && info
                        .prev_same
                        .is_none_or(|p| self.ubits.contains(self.ops[p].slot));
                if allowed {
                    out.push(o);
                }
                e = self.next[e];
            }
        }
    }

    fn snapshot(&self, frames: &[Frame]) -> Stuck {
        let path = frames.iter().filter_map(|f| f.via).collect();
        let state = frames.last().map_or(ABSENT, |f| f.state);
        let mut pending = Vec::new();
        let mut blocked = None;
        let mut e = self.next[HEAD];
        while e != NIL {
            let o = self.node_op[e];
            if self.node_is_ret[e] {
                blocked = Some(o);
                break;
            }
            if !self.ops[o].unknown {
                pending.push(o);
            }
            e = self.next[e];
        }
        Stuck {
            path,
            state,
            blocked,
            pending,
        }
    }

    fn run(mut self, deadline: Option<Instant>, budget: Duration) -> KeyResult {
        if self.known_left == 0 {
            // Unknown ops alone can always be left out.
            return KeyResult::Linearizable;
        }
        // (known set + state) -> (chain_start, unknown set) of nodes whose
        // whole subtree failed. Only finished nodes go in, which is what makes
        // the dominance pruning sound.
        let mut failed: FailedCache = FxHashMap::default();
        let mut cands: Vec<usize> = Vec::new();
        let mut frames: Vec<Frame> = Vec::new();
        let mut best: Option<Stuck> = None;
        let mut steps: u64 = 0;

        self.candidates(false, &mut cands);
        frames.push(Frame {
            via: None,
            state: ABSENT,
            chain_start: None,
            start: 0,
            next: 0,
            end: cands.len(),
        });

        while let Some(top) = frames.last_mut() {
            steps += 1;
            if steps.is_multiple_of(256) && deadline.is_some_and(|d| Instant::now() >= d) {
                let deepest = best.as_ref().map_or(0, |b| b.path.len());
                return KeyResult::OutOfTime(format!(
                    "time budget of {budget:?} exhausted after {steps} search steps on {} \
                     operations ({} with unknown outcome); deepest failed prefix had {deepest} \
                     operations",
                    self.ops.len(),
                    self.n_unknown
                ));
            }

            if top.next < top.end {
                let o = cands[top.next];
                top.next += 1;
                let (st, chain_start) = (top.state, top.chain_start);
                let OpInfo {
                    op, res, unknown, ..
                } = self.ops[o];
                let Some(ns) = self.vals.step(st, op, res) else {
                    continue;
                };
                if unknown && ns == st {
                    // An unknown op that changes nothing can be left out.
                    continue;
                }
                if let (false, Some(before)) = (unknown, chain_start) {
                    // A run of unknown ops must be needed by the known op that
                    // follows it. If that op is also valid from the state
                    // before the run, the run can be dropped (the op sets the
                    // state on its own) or moved after it (the op preserves
                    // the state), so some other branch covers this one.
                    if self.vals.step(before, op, res).is_some() {
                        continue;
                    }
                }
                let chain = if unknown {
                    Some(chain_start.unwrap_or(st))
                } else {
                    None
                };
                self.mark(o, true);
                let dominated = failed
                    .get(&ns)
                    .and_then(|by_known| by_known.get(&self.kbits))
                    .is_some_and(|seen| {
                        seen.iter()
                            .any(|(c, u)| (c.is_none() || *c == chain) && u.is_subset(&self.ubits))
                    });
                if dominated {
                    self.mark(o, false);
                    continue;
                }
                self.lift(o);
                if !unknown {
                    self.known_left -= 1;
                    if self.known_left == 0 {
                        return KeyResult::Linearizable;
                    }
                }
                let start = cands.len();
                self.candidates(chain.is_some(), &mut cands);
                frames.push(Frame {
                    via: Some(o),
                    state: ns,
                    chain_start: chain,
                    start,
                    next: start,
                    end: cands.len(),
                });
            } else {
                // Every continuation from this node failed.
                let depth = frames.len() - 1;
                if best.as_ref().is_none_or(|b| depth > b.path.len()) {
                    best = Some(self.snapshot(&frames));
                }
                let Some(f) = frames.pop() else { break };
                failed
                    .entry(f.state)
                    .or_default()
                    .entry(self.kbits.clone())
                    .or_default()
                    .push((f.chain_start, self.ubits.clone()));
                cands.truncate(f.start);
                if let Some(o) = f.via {
                    self.unlift(o);
                    self.mark(o, false);
                    if !self.ops[o].unknown {
                        self.known_left += 1;
                    }
                }
            }
        }
        KeyResult::NotLinearizable(self.explain(best))
    }

    fn explain(&self, best: Option<Stuck>) -> String {
        let mut s = format!(
            "no valid linearization of the {} operations on this key ({} with unknown outcome).",
            self.ops.len(),
            self.n_unknown
        );
        let Some(b) = best else { return s };
        let _ = write!(
            s,
            "\nlongest linearizable prefix: {} operation(s), leaving the key {}:",
            b.path.len(),
            self.vals.describe(b.state)
        );
        let skip = b.path.len().saturating_sub(MAX_LISTED);
        if skip > 0 {
            let _ = write!(s, "\n  ... {skip} earlier operation(s) omitted");
        }
        for &o in &b.path[skip..] {
            let _ = write!(s, "\n  {}", fmt_event(self.ops[o].ev));
        }
        if let Some(o) = b.blocked {
            let _ = write!(
                s,
                "\nfirst operation that could not be placed before it completed: {}",
                fmt_event(self.ops[o].ev)
            );
        }
        let others: Vec<usize> = b
            .pending
            .into_iter()
            .filter(|&o| Some(o) != b.blocked)
            .collect();
        if !others.is_empty() {
            let _ = write!(
                s,
                "\nother operations pending at that point (every order was tried):"
            );
            for &o in others.iter().take(MAX_PENDING_LISTED) {
                let _ = write!(s, "\n  {}", fmt_event(self.ops[o].ev));
            }
            if others.len() > MAX_PENDING_LISTED {
                let _ = write!(s, "\n  ... {} more", others.len() - MAX_PENDING_LISTED);
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Formatting

fn fmt_bytes(b: &[u8]) -> String {
    if b.iter().all(|c| (0x20..0x7f).contains(c)) {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        let mut s = String::from("0x");
        for c in b {
            let _ = write!(s, "{c:02x}");
        }
        s
    }
}

fn fmt_opt(v: Option<&Vec<u8>>) -> String {
    v.map_or_else(|| "absent".to_string(), |v| fmt_bytes(v))
}

fn fmt_op(op: &Op) -> String {
    match op {
        Op::Read => "Read".to_string(),
        Op::Write(v) => format!("Write({})", fmt_bytes(v)),
        Op::Cas { expected, new } => {
            format!("Cas({} -> {})", fmt_opt(expected.as_ref()), fmt_bytes(new))
        }
        Op::Delete => "Delete".to_string(),
        Op::Increment(d) => format!("Increment({d})"),
    }
}

fn fmt_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Ok(OkValue::Read(v)) => format!("Read({})", fmt_opt(v.as_ref())),
        Outcome::Ok(OkValue::Written) => "Written".to_string(),
        Outcome::Ok(OkValue::CasResult(b)) => format!("CasResult({b})"),
        Outcome::Ok(OkValue::Deleted) => "Deleted".to_string(),
        Outcome::Ok(OkValue::Incremented(n)) => format!("Incremented({n})"),
        Outcome::Fail => "Fail".to_string(),
        Outcome::Unknown => "Unknown".to_string(),
    }
}

fn fmt_event(ev: &Event) -> String {
    let complete = match (&ev.outcome, ev.complete) {
        (Outcome::Unknown, _) | (_, None) => "never".to_string(),
        (_, Some(c)) => c.to_string(),
    };
    format!(
        "client {}: {} -> {} [invoked {}, completed {}]",
        ev.client,
        fmt_op(&ev.op),
        fmt_outcome(&ev.outcome),
        ev.invoke,
        complete
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_secs(10);

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn write(v: &str) -> Op {
        Op::Write(b(v))
    }

    fn cas(expected: Option<&str>, new: &str) -> Op {
        Op::Cas {
            expected: expected.map(b),
            new: b(new),
        }
    }

    fn read_ok(v: Option<&str>) -> Outcome {
        Outcome::Ok(OkValue::Read(v.map(b)))
    }

    fn ok(v: OkValue) -> Outcome {
        Outcome::Ok(v)
    }

    fn ev(client: u64, key: &str, op: Op, invoke: u64, complete: u64, outcome: Outcome) -> Event {
        Event {
            client,
            key: b(key),
            op,
            invoke,
            complete: Some(complete),
            outcome,
        }
    }

    fn unknown(client: u64, key: &str, op: Op, invoke: u64) -> Event {
        Event {
            client,
            key: b(key),
            op,
            invoke,
            complete: None,
            outcome: Outcome::Unknown,
        }
    }

    fn verdict(events: Vec<Event>) -> Verdict {
        check(&History { events }, BUDGET)
    }

    fn assert_good(events: Vec<Event>) {
        let v = verdict(events.clone());
        assert_eq!(
            v,
            Verdict::Linearizable,
            "expected linearizable: {events:#?}"
        );
    }

    fn assert_bad(events: Vec<Event>) -> (Vec<u8>, String) {
        match verdict(events.clone()) {
            Verdict::NotLinearizable { key, explanation } => (key, explanation),
            other => panic!("expected NotLinearizable, got {other:?} for {events:#?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_good(vec![]);
    }

    #[test]
    fn sequential_history_good() {
        let k = "k";
        assert_good(vec![
            ev(1, k, Op::Read, 0, 1, read_ok(None)),
            ev(1, k, write("1"), 2, 3, ok(OkValue::Written)),
            ev(2, k, Op::Read, 4, 5, read_ok(Some("1"))),
            ev(1, k, write("2"), 6, 7, ok(OkValue::Written)),
            ev(2, k, Op::Read, 8, 9, read_ok(Some("2"))),
            ev(1, k, Op::Delete, 10, 11, ok(OkValue::Deleted)),
            ev(2, k, Op::Read, 12, 13, read_ok(None)),
            ev(1, k, cas(None, "3"), 14, 15, ok(OkValue::CasResult(true))),
            ev(
                2,
                k,
                cas(Some("2"), "9"),
                16,
                17,
                ok(OkValue::CasResult(false)),
            ),
            ev(1, k, Op::Increment(1), 18, 19, ok(OkValue::Incremented(4))),
            ev(
                2,
                k,
                Op::Increment(-10),
                20,
                21,
                ok(OkValue::Incremented(-6)),
            ),
            ev(1, k, Op::Read, 22, 23, read_ok(Some("-6"))),
        ]);
    }

    #[test]
    fn concurrent_writes_and_reads_good_in_several_interleavings() {
        // W1 [0,10] and W2 [5,15] overlap, so either order is possible.
        let base = || {
            vec![
                ev(1, "k", write("1"), 0, 10, ok(OkValue::Written)),
                ev(2, "k", write("2"), 5, 15, ok(OkValue::Written)),
            ]
        };
        let good_reads: Vec<Vec<(u64, u64, Option<&str>)>> = vec![
            vec![(1, 4, None)],
            vec![(1, 4, Some("1"))],
            vec![(6, 8, Some("2")), (16, 20, Some("1"))],
            vec![(6, 8, Some("1")), (16, 20, Some("2"))],
            vec![(6, 8, Some("2")), (9, 12, Some("1")), (16, 20, Some("1"))],
            vec![(16, 20, Some("2")), (21, 22, Some("2"))],
            vec![(0, 30, None), (11, 12, Some("1")), (13, 14, Some("2"))],
        ];
        for reads in good_reads {
            let mut h = base();
            for (i, (inv, comp, v)) in reads.into_iter().enumerate() {
                h.push(ev(10 + i as u64, "k", Op::Read, inv, comp, read_ok(v)));
            }
            assert_good(h);
        }
        // After both writes completed, the value cannot change any more.
        let mut h = base();
        h.push(ev(3, "k", Op::Read, 16, 17, read_ok(Some("1"))));
        h.push(ev(4, "k", Op::Read, 18, 19, read_ok(Some("2"))));
        assert_bad(h);
        // W1 completed at 10, so a read starting at 11 cannot see absent.
        let mut h = base();
        h.push(ev(3, "k", Op::Read, 11, 12, read_ok(None)));
        assert_bad(h);
    }

    #[test]
    fn stale_read_after_completed_write_bad() {
        let (key, explanation) = assert_bad(vec![
            ev(1, "k", write("1"), 0, 1, ok(OkValue::Written)),
            ev(2, "k", write("2"), 2, 3, ok(OkValue::Written)),
            ev(3, "k", Op::Read, 4, 5, read_ok(Some("1"))),
        ]);
        assert_eq!(key, b("k"));
        assert!(
            explanation.contains("longest linearizable prefix: 2 operation(s)"),
            "{explanation}"
        );
        assert!(
            explanation.contains(
                "could not be placed before it completed: client 3: Read -> Read(\"1\") \
                 [invoked 4, completed 5]"
            ),
            "{explanation}"
        );
    }

    #[test]
    fn read_of_value_never_written_bad() {
        assert_bad(vec![
            ev(1, "k", write("1"), 0, 1, ok(OkValue::Written)),
            ev(2, "k", Op::Read, 0, 5, read_ok(Some("zzz"))),
        ]);
        assert_bad(vec![ev(2, "k", Op::Read, 0, 5, read_ok(Some("1")))]);
    }

    #[test]
    fn new_old_inversion_bad() {
        let h = |first: &str, second: &str| {
            vec![
                ev(1, "k", write("0"), 0, 1, ok(OkValue::Written)),
                ev(1, "k", write("1"), 2, 100, ok(OkValue::Written)),
                ev(2, "k", Op::Read, 10, 20, read_ok(Some(first))),
                ev(3, "k", Op::Read, 30, 40, read_ok(Some(second))),
            ]
        };
        assert_bad(h("1", "0"));
        assert_good(h("0", "1"));
        assert_good(h("0", "0"));
        assert_good(h("1", "1"));
    }

    #[test]
    fn cas_concurrent_both_succeed_bad() {
        assert_bad(vec![
            ev(1, "k", write("0"), 0, 1, ok(OkValue::Written)),
            ev(
                2,
                "k",
                cas(Some("0"), "1"),
                2,
                10,
                ok(OkValue::CasResult(true)),
            ),
            ev(
                3,
                "k",
                cas(Some("0"), "2"),
                3,
                11,
                ok(OkValue::CasResult(true)),
            ),
        ]);
        // Same on an absent key with "must be absent" CAS.
        assert_bad(vec![
            ev(2, "k", cas(None, "1"), 2, 10, ok(OkValue::CasResult(true))),
            ev(3, "k", cas(None, "2"), 3, 11, ok(OkValue::CasResult(true))),
        ]);
    }

    #[test]
    fn cas_one_succeeds_one_fails_good() {
        let h = |final_read: &str| {
            vec![
                ev(1, "k", write("0"), 0, 1, ok(OkValue::Written)),
                ev(
                    2,
                    "k",
                    cas(Some("0"), "1"),
                    2,
                    10,
                    ok(OkValue::CasResult(true)),
                ),
                ev(
                    3,
                    "k",
                    cas(Some("0"), "2"),
                    3,
                    11,
                    ok(OkValue::CasResult(false)),
                ),
                ev(4, "k", Op::Read, 12, 13, read_ok(Some(final_read))),
            ]
        };
        assert_good(h("1"));
        // Only the successful CAS can have written.
        assert_bad(h("2"));
        assert_good(vec![
            ev(2, "k", cas(None, "1"), 2, 10, ok(OkValue::CasResult(false))),
            ev(3, "k", cas(None, "2"), 3, 11, ok(OkValue::CasResult(true))),
        ]);
        // A failed CAS whose expectation must have held is a violation.
        assert_bad(vec![
            ev(1, "k", write("0"), 0, 1, ok(OkValue::Written)),
            ev(
                2,
                "k",
                cas(Some("0"), "1"),
                2,
                3,
                ok(OkValue::CasResult(false)),
            ),
        ]);
    }

    #[test]
    fn concurrent_increments_same_value_bad() {
        assert_bad(vec![
            ev(1, "k", Op::Increment(1), 0, 10, ok(OkValue::Incremented(1))),
            ev(2, "k", Op::Increment(1), 1, 11, ok(OkValue::Incremented(1))),
        ]);
        // Real-time order: the increment returning 2 finished before the one
        // returning 1 started.
        assert_bad(vec![
            ev(1, "k", Op::Increment(1), 0, 1, ok(OkValue::Incremented(2))),
            ev(2, "k", Op::Increment(1), 2, 3, ok(OkValue::Incremented(1))),
        ]);
    }

    #[test]
    fn concurrent_increments_correct_totals_good() {
        let h = |final_read: &str| {
            vec![
                ev(1, "k", Op::Increment(1), 0, 10, ok(OkValue::Incremented(2))),
                ev(2, "k", Op::Increment(1), 1, 11, ok(OkValue::Incremented(1))),
                ev(3, "k", Op::Increment(5), 2, 12, ok(OkValue::Incremented(7))),
                ev(4, "k", Op::Read, 13, 14, read_ok(Some(final_read))),
            ]
        };
        assert_good(h("7"));
        assert_bad(h("6"));
    }

    #[test]
    fn increment_on_non_integer_is_invalid() {
        assert_bad(vec![
            ev(1, "k", write("abc"), 0, 1, ok(OkValue::Written)),
            ev(2, "k", Op::Increment(1), 2, 3, ok(OkValue::Incremented(1))),
        ]);
        assert_good(vec![
            ev(1, "k", write("41"), 0, 1, ok(OkValue::Written)),
            ev(2, "k", Op::Increment(1), 2, 3, ok(OkValue::Incremented(42))),
            ev(3, "k", Op::Read, 4, 5, read_ok(Some("42"))),
        ]);
    }

    #[test]
    fn result_of_wrong_kind_is_invalid() {
        assert_bad(vec![ev(1, "k", Op::Read, 0, 1, ok(OkValue::Written))]);
    }

    #[test]
    fn failed_ops_are_dropped() {
        assert_good(vec![
            ev(1, "k", write("x"), 0, 1, Outcome::Fail),
            ev(2, "k", Op::Read, 2, 3, read_ok(None)),
        ]);
        assert_bad(vec![
            ev(1, "k", write("x"), 0, 1, Outcome::Fail),
            ev(2, "k", Op::Read, 2, 3, read_ok(Some("x"))),
        ]);
    }

    #[test]
    fn unknown_write_later_visible_good() {
        assert_good(vec![
            unknown(1, "k", write("1"), 5),
            ev(2, "k", Op::Read, 10, 11, read_ok(None)),
            ev(2, "k", Op::Read, 20, 21, read_ok(Some("1"))),
            ev(2, "k", Op::Read, 30, 31, read_ok(Some("1"))),
        ]);
    }

    #[test]
    fn unknown_write_never_visible_good() {
        assert_good(vec![
            ev(3, "k", write("0"), 0, 1, ok(OkValue::Written)),
            unknown(1, "k", write("1"), 5),
            ev(2, "k", Op::Read, 10, 11, read_ok(Some("0"))),
            ev(2, "k", Op::Read, 20, 21, read_ok(Some("0"))),
        ]);
    }

    #[test]
    fn unknown_write_visible_then_gone_bad() {
        // Once seen it took effect; nothing else could restore "0".
        assert_bad(vec![
            ev(3, "k", write("0"), 0, 1, ok(OkValue::Written)),
            unknown(1, "k", write("1"), 5),
            ev(2, "k", Op::Read, 10, 11, read_ok(Some("1"))),
            ev(2, "k", Op::Read, 20, 21, read_ok(Some("0"))),
        ]);
    }

    #[test]
    fn read_before_unknown_write_invoked_bad() {
        assert_bad(vec![
            ev(2, "k", Op::Read, 0, 1, read_ok(Some("1"))),
            unknown(1, "k", write("1"), 5),
        ]);
    }

    #[test]
    fn unknown_write_overwritten_then_read_good() {
        // The unknown write took effect between two known writes and was seen.
        assert_good(vec![
            unknown(1, "k", write("u"), 0),
            ev(2, "k", write("a"), 1, 2, ok(OkValue::Written)),
            ev(3, "k", Op::Read, 3, 4, read_ok(Some("u"))),
            ev(2, "k", write("b"), 5, 6, ok(OkValue::Written)),
            ev(3, "k", Op::Read, 7, 8, read_ok(Some("b"))),
        ]);
    }

    #[test]
    fn unknown_cas_and_increments() {
        assert_good(vec![
            ev(1, "k", write("0"), 0, 1, ok(OkValue::Written)),
            unknown(2, "k", cas(Some("0"), "5"), 2),
            ev(3, "k", Op::Read, 10, 11, read_ok(Some("5"))),
        ]);
        // Six identical unknown increments: any count 0..=6 may have applied,
        // but the counter never goes down.
        let h = |reads: &[&str]| {
            let mut h: Vec<Event> = (0..6)
                .map(|c| unknown(c, "k", Op::Increment(1), c))
                .collect();
            for (i, r) in reads.iter().enumerate() {
                let t = 100 + 10 * i as u64;
                h.push(ev(10, "k", Op::Read, t, t + 1, read_ok(Some(r))));
            }
            h
        };
        assert_good(h(&["3"]));
        assert_good(h(&["1", "3", "6"]));
        assert_bad(h(&["3", "2"]));
        assert_bad(h(&["7"]));
        assert_good(vec![
            unknown(1, "k", Op::Increment(2), 0),
            ev(2, "k", Op::Increment(1), 5, 6, ok(OkValue::Incremented(3))),
        ]);
        assert_bad(vec![
            unknown(1, "k", Op::Increment(2), 0),
            ev(2, "k", Op::Increment(1), 5, 6, ok(OkValue::Incremented(2))),
        ]);
    }

    #[test]
    fn per_key_independence_names_bad_key() {
        let (key, _) = assert_bad(vec![
            ev(1, "a", write("1"), 0, 1, ok(OkValue::Written)),
            ev(1, "b", write("1"), 0, 1, ok(OkValue::Written)),
            ev(2, "a", Op::Read, 2, 3, read_ok(Some("1"))),
            ev(2, "b", write("2"), 2, 3, ok(OkValue::Written)),
            // Fine for "a" would be stale for "b": keys must not mix.
            ev(3, "b", Op::Read, 4, 5, read_ok(Some("1"))),
            ev(3, "a", Op::Read, 4, 5, read_ok(Some("1"))),
        ]);
        assert_eq!(key, b("b"));
        // A value written to one key is not visible on another.
        let (key, _) = assert_bad(vec![
            ev(1, "a", write("1"), 0, 1, ok(OkValue::Written)),
            ev(2, "c", Op::Read, 2, 3, read_ok(Some("1"))),
        ]);
        assert_eq!(key, b("c"));
    }

    // ---- randomized ----

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// Applies `op` atomically to a real register.
    fn apply(reg: &mut Option<Vec<u8>>, op: &Op) -> OkValue {
        match op {
            Op::Read => OkValue::Read(reg.clone()),
            Op::Write(v) => {
                *reg = Some(v.clone());
                OkValue::Written
            }
            Op::Cas { expected, new } => {
                let swap = reg == expected;
                if swap {
                    *reg = Some(new.clone());
                }
                OkValue::CasResult(swap)
            }
            Op::Delete => {
                *reg = None;
                OkValue::Deleted
            }
            Op::Increment(d) => {
                let cur: i64 = reg
                    .as_ref()
                    .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                let n = cur + d;
                *reg = Some(n.to_string().into_bytes());
                OkValue::Incremented(n)
            }
        }
    }

    /// Share of operations whose outcome is unknown. Each one stays a
    /// candidate for the rest of the history, so refuting a history costs
    /// roughly exponentially more with every unknown increment/CAS alive.
    const UNKNOWN_PCT: u64 = 1;

    enum Fate {
        Normal,
        Fail,
        Unknown,
    }

    struct Pending {
        op: Op,
        invoke: u64,
        fate: Fate,
        result: Option<OkValue>,
    }

    /// Simulates `keys * clients_per_key` clients, client c working on key
    /// c % keys, each op taking effect atomically at one step between its
    /// invocation and completion, so the history is linearizable by
    /// construction. Unknown ops take effect at give-up time, later, or never.
    fn simulate(
        seed: u64,
        keys: usize,
        clients_per_key: usize,
        ops_per_client: usize,
        unknown_pct: u64,
    ) -> History {
        let mut rng = XorShift(seed);
        let n = keys * clients_per_key;
        let mut regs: Vec<Option<Vec<u8>>> = vec![None; keys];
        let mut pending: Vec<Option<Pending>> = (0..n).map(|_| None).collect();
        let mut done = vec![0usize; n];
        let mut orphans: Vec<(usize, Op)> = Vec::new();
        let mut events = Vec::new();
        let mut t = 0u64;
        let key_name = |k: usize| format!("key{k}").into_bytes();
        loop {
            if done.iter().all(|&d| d == ops_per_client) && pending.iter().all(Option::is_none) {
                break;
            }
            t += 1 + rng.below(5);
            if !orphans.is_empty() && rng.chance(5) {
                let i = rng.below(orphans.len() as u64) as usize;
                let (k, op) = orphans.swap_remove(i);
                if rng.chance(70) {
                    apply(&mut regs[k], &op);
                }
            }
            let c = rng.below(n as u64) as usize;
            let k = c % keys;
            match pending[c].take() {
                None => {
                    if done[c] == ops_per_client {
                        continue;
                    }
                    let val = |rng: &mut XorShift| rng.below(20).to_string().into_bytes();
                    let op = match rng.below(100) {
                        0..=39 => Op::Read,
                        40..=59 => Op::Write(val(&mut rng)),
                        60..=71 => Op::Cas {
                            expected: if rng.chance(70) {
                                regs[k].clone()
                            } else {
                                Some(val(&mut rng))
                            },
                            new: val(&mut rng),
                        },
                        72..=79 => Op::Delete,
                        _ => Op::Increment(1 + rng.below(3) as i64),
                    };
                    let roll = rng.below(100);
                    let fate = if roll < 2 {
                        Fate::Fail
                    } else if roll < 2 + unknown_pct {
                        Fate::Unknown
                    } else {
                        Fate::Normal
                    };
                    pending[c] = Some(Pending {
                        op,
                        invoke: t,
                        fate,
                        result: None,
                    });
                }
                Some(mut p) => {
                    let outcome = match p.fate {
                        Fate::Normal => match p.result.take() {
                            None => {
                                p.result = Some(apply(&mut regs[k], &p.op));
                                pending[c] = Some(p);
                                continue;
                            }
                            Some(r) => Outcome::Ok(r),
                        },
                        Fate::Fail => Outcome::Fail,
                        Fate::Unknown => {
                            if rng.chance(30) {
                                apply(&mut regs[k], &p.op);
                            } else {
                                orphans.push((k, p.op.clone()));
                            }
                            Outcome::Unknown
                        }
                    };
                    let complete = match outcome {
                        Outcome::Unknown => None,
                        _ => Some(t),
                    };
                    events.push(Event {
                        client: c as u64,
                        key: key_name(k),
                        op: p.op,
                        invoke: p.invoke,
                        complete,
                        outcome,
                    });
                    done[c] += 1;
                }
            }
        }
        History { events }
    }

    #[test]
    fn randomized_linearizable_histories_accepted_and_mutation_rejected() {
        for seed in [0x9E37_79B9_7F4A_7C15u64, 12345, 777] {
            let mut h = simulate(seed, 3, 5, 200, UNKNOWN_PCT);
            assert_eq!(h.events.len(), 3 * 5 * 200);
            let unknowns = h
                .events
                .iter()
                .filter(|e| e.outcome == Outcome::Unknown)
                .count();
            assert!(unknowns > 0, "simulation should produce unknown outcomes");

            let started = Instant::now();
            let v = check(&h, Duration::from_secs(20));
            let took = started.elapsed();
            assert_eq!(v, Verdict::Linearizable, "seed {seed:#x}");
            eprintln!("seed {seed:#x}: accepted in {took:?} ({unknowns} unknown outcomes)");
            assert!(
                took < Duration::from_secs(10),
                "seed {seed:#x} too slow: {took:?}"
            );

            // Corrupt a read late in the history so the search must exhaust
            // (almost) the whole key before giving up.
            let idx = h
                .events
                .iter()
                .rposition(|e| e.op == Op::Read && matches!(e.outcome, Outcome::Ok(_)))
                .unwrap();
            h.events[idx].outcome = read_ok(Some("impossible"));
            let bad_key = h.events[idx].key.clone();
            let started = Instant::now();
            match check(&h, Duration::from_secs(20)) {
                Verdict::NotLinearizable { key, explanation } => {
                    assert_eq!(key, bad_key);
                    assert!(explanation.contains("\"impossible\""), "{explanation}");
                }
                other => panic!("seed {seed:#x}: mutated history not rejected: {other:?}"),
            }
            eprintln!(
                "seed {seed:#x}: mutation rejected in {:?}",
                started.elapsed()
            );

            // A genuinely stale read appended after everything else.
            let mut h = simulate(seed, 3, 5, 200, UNKNOWN_PCT);
            let last = h
                .events
                .iter()
                .map(|e| e.complete.unwrap_or(e.invoke))
                .max()
                .unwrap();
            h.events.push(ev(
                999,
                "key0",
                write("old"),
                last + 1,
                last + 2,
                ok(OkValue::Written),
            ));
            h.events.push(ev(
                999,
                "key0",
                write("new"),
                last + 3,
                last + 4,
                ok(OkValue::Written),
            ));
            h.events.push(ev(
                998,
                "key0",
                Op::Read,
                last + 5,
                last + 6,
                read_ok(Some("old")),
            ));
            let (key, _) = match check(&h, Duration::from_secs(20)) {
                Verdict::NotLinearizable { key, explanation } => (key, explanation),
                other => panic!("seed {seed:#x}: stale read not rejected: {other:?}"),
            };
            assert_eq!(key, b("key0"));
        }
    }

    #[test]
    fn zero_budget_on_large_history_is_inconclusive() {
        let h = simulate(42, 1, 5, 200, UNKNOWN_PCT);
        match check(&h, Duration::ZERO) {
            Verdict::Inconclusive { key, reason } => {
                assert_eq!(key, b("key0"));
                assert!(reason.contains("time budget"), "{reason}");
            }
            other => panic!("expected Inconclusive, got {other:?}"),
        }
        // A definite violation on a small key still wins over that.
        let mut h = h;
        h.events
            .push(ev(1, "zz", Op::Read, 0, 1, read_ok(Some("nope"))));
        let (key, _) = match check(&h, Duration::ZERO) {
            Verdict::NotLinearizable { key, explanation } => (key, explanation),
            other => panic!("expected NotLinearizable, got {other:?}"),
        };
        assert_eq!(key, b("zz"));
    }

    // ---- cross-check against brute force ----

    /// Independent, direct implementation of the model, for the oracle.
    fn ref_step(state: &Option<Vec<u8>>, e: &Event) -> Option<Option<Vec<u8>>> {
        let as_int = |s: &Option<Vec<u8>>| -> Option<i64> {
            match s {
                None => Some(0),
                Some(v) => std::str::from_utf8(v).ok()?.parse().ok(),
            }
        };
        let unknown = e.outcome == Outcome::Unknown;
        match (&e.op, &e.outcome) {
            (Op::Read, Outcome::Ok(OkValue::Read(v))) => (v == state).then(|| state.clone()),
            (Op::Read, _) if unknown => Some(state.clone()),
            (Op::Write(v), Outcome::Ok(OkValue::Written)) => Some(Some(v.clone())),
            (Op::Write(v), _) if unknown => Some(Some(v.clone())),
            (Op::Delete, Outcome::Ok(OkValue::Deleted)) => Some(None),
            (Op::Delete, _) if unknown => Some(None),
            (Op::Cas { expected, new }, Outcome::Ok(OkValue::CasResult(true))) => {
                (state == expected).then(|| Some(new.clone()))
            }
            (Op::Cas { expected, .. }, Outcome::Ok(OkValue::CasResult(false))) => {
                (state != expected).then(|| state.clone())
            }
            (Op::Cas { expected, new }, _) if unknown => Some(if state == expected {
                Some(new.clone())
            } else {
                state.clone()
            }),
            (Op::Increment(d), Outcome::Ok(OkValue::Incremented(n))) => {
                (as_int(state)?.checked_add(*d)? == *n).then(|| Some(n.to_string().into_bytes()))
            }
            (Op::Increment(d), _) if unknown => Some(Some(
                as_int(state)?.checked_add(*d)?.to_string().into_bytes(),
            )),
            _ => None,
        }
    }

    /// Tries every order of every subset that includes all completed ops.
    fn brute_force(evs: &[&Event], done: &mut Vec<bool>, state: &Option<Vec<u8>>) -> bool {
        let known_pending =
            |j: usize, done: &[bool]| !done[j] && evs[j].outcome != Outcome::Unknown;
        if (0..evs.len()).all(|j| !known_pending(j, done)) {
            return true;
        }
        for i in 0..evs.len() {
            if done[i] {
                continue;
            }
            let must_wait = (0..evs.len()).any(|j| {
                j != i && known_pending(j, done) && evs[j].complete.unwrap() < evs[i].invoke
            });
            if must_wait {
                continue;
            }
            if let Some(next) = ref_step(state, evs[i]) {
                done[i] = true;
                if brute_force(evs, done, &next) {
                    return true;
                }
                done[i] = false;
            }
        }
        false
    }

    fn random_small_history(rng: &mut XorShift) -> Vec<Event> {
        let val = |rng: &mut XorShift| rng.below(3).to_string().into_bytes();
        let opt_val = |rng: &mut XorShift| if rng.chance(25) { None } else { Some(val(rng)) };
        let n = 1 + rng.below(6);
        (0..n)
            .map(|c| {
                let op = match rng.below(5) {
                    0 => Op::Read,
                    1 => Op::Write(val(rng)),
                    2 => Op::Cas {
                        expected: opt_val(rng),
                        new: val(rng),
                    },
                    3 => Op::Delete,
                    _ => Op::Increment(rng.below(3) as i64 - 1),
                };
                let outcome = match rng.below(10) {
                    0..=2 => Outcome::Unknown,
                    3 => Outcome::Fail,
                    _ => Outcome::Ok(match &op {
                        Op::Read => OkValue::Read(opt_val(rng)),
                        Op::Write(_) => OkValue::Written,
                        Op::Cas { .. } => OkValue::CasResult(rng.chance(50)),
                        Op::Delete => OkValue::Deleted,
                        Op::Increment(_) => OkValue::Incremented(rng.below(4) as i64 - 1),
                    }),
                };
                let invoke = rng.below(10);
                let complete = match outcome {
                    Outcome::Unknown => None,
                    _ => Some(invoke + rng.below(6)),
                };
                Event {
                    client: c,
                    key: b("k"),
                    op,
                    invoke,
                    complete,
                    outcome,
                }
            })
            .collect()
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        let (mut good, mut bad) = (0, 0);
        for case in 0..20_000 {
            let events = random_small_history(&mut rng);
            let kept: Vec<&Event> = events
                .iter()
                .filter(|e| e.outcome != Outcome::Fail)
                .collect();
            let expected = brute_force(&kept, &mut vec![false; kept.len()], &None);
            let got = verdict(events.clone());
            match (&got, expected) {
                (Verdict::Linearizable, true) => good += 1,
                (Verdict::NotLinearizable { .. }, false) => bad += 1,
                _ => panic!(
                    "case {case}: checker says {got:?}, brute force says {expected}: {events:#?}"
                ),
            }
        }
        // Both verdicts must be well represented or the comparison is hollow.
        assert!(good > 2_000 && bad > 2_000, "good {good}, bad {bad}");
    }
}

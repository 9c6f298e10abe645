//! The NAS-Bench-201 cell search space (Dong & Yang, ICLR 2020), shared by the knas host
//! and its policy SDK: one implementation of the ops, edges, string form and dense index.
//!
//! A cell is a DAG over 4 nodes: node 0 is the cell input, node 3 its output, and every
//! node `j` sums one operation applied to each earlier node `i < j`. That gives 6 edges,
//! listed in [`EDGES`] in the order the NB201 string form writes them:
//!
//! ```text
//! |op~0|+|op~0|op~1|+|op~0|op~1|op~2|
//!   1→      2←0   2←1     3←0  3←1  3←2
//! ```
//!
//! Each edge holds one of five operations ([`Op`]), so there are 5⁶ = 15,625 cells.
//!
//! Besides single architectures ([`Arch`]), policies may ask about *supernets*
//! ([`Candidate`]): several operations on an edge, whose outputs are summed. The string form
//! of a supernet lists an edge's operations separated by commas, e.g.
//! `|nor_conv_3x3,skip_connect~0|+…`.

// Part of the policy SDK's API (re-exported as `knas_policy_sdk::nb201`): every public
// item is documented.
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Number of intermediate + output nodes' incoming edges in a cell.
pub const NUM_EDGES: usize = 6;
/// Number of candidate operations per edge.
pub const NUM_OPS: usize = 5;
/// Number of distinct single-op cells: 5⁶.
pub const NUM_ARCHS: usize = 15_625;

/// The edges of a cell as `(from, to)` node pairs, in NB201 string order.
pub const EDGES: [(usize, usize); NUM_EDGES] = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)];

/// One candidate operation on an edge. The discriminant is the op index used in dense
/// indices and in the policy contract; the order is NB201's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Op {
    /// Outputs zeros: the edge is absent.
    None = 0,
    /// Identity.
    SkipConnect = 1,
    /// ReLU → 1×1 convolution → batch norm.
    Conv1x1 = 2,
    /// ReLU → 3×3 convolution → batch norm.
    Conv3x3 = 3,
    /// 3×3 average pooling, stride 1 (padding not counted).
    AvgPool3x3 = 4,
}

impl Op {
    /// All operations, in index order.
    pub const ALL: [Op; NUM_OPS] = [Op::None, Op::SkipConnect, Op::Conv1x1, Op::Conv3x3, Op::AvgPool3x3];

    /// NB201's name for the operation.
    pub fn name(self) -> &'static str {
        match self {
            Op::None => "none",
            Op::SkipConnect => "skip_connect",
            Op::Conv1x1 => "nor_conv_1x1",
            Op::Conv3x3 => "nor_conv_3x3",
            Op::AvgPool3x3 => "avg_pool_3x3",
        }
    }

    /// The operation with this index, if it is one.
    pub fn from_index(index: usize) -> Option<Op> {
        Op::ALL.get(index).copied()
    }

    /// The operation's index (0..5).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The operation with this NB201 name.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of operations on one edge (a bit per [`Op`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct OpSet(u8);

impl OpSet {
    /// No operation at all. Not a valid edge: [`Candidate::new`] rejects it.
    pub const EMPTY: OpSet = OpSet(0);
    /// All five operations.
    pub const FULL: OpSet = OpSet((1 << NUM_OPS) - 1);

    /// The set holding only `op`.
    pub fn single(op: Op) -> OpSet {
        OpSet(1 << op.index())
    }

    /// Whether `op` is in the set.
    pub fn contains(self, op: Op) -> bool {
        self.0 & (1 << op.index()) != 0
    }

    /// The set with `op` added.
    pub fn with(self, op: Op) -> OpSet {
        OpSet(self.0 | (1 << op.index()))
    }

    /// The set with `op` removed.
    pub fn without(self, op: Op) -> OpSet {
        OpSet(self.0 & !(1 << op.index()))
    }

    /// Number of operations in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The operations in the set, in index order.
    pub fn ops(self) -> impl Iterator<Item = Op> {
        Op::ALL.into_iter().filter(move |op| self.contains(*op))
    }

    /// The only operation of a one-element set.
    pub fn as_single(self) -> Option<Op> {
        if self.len() == 1 { self.ops().next() } else { None }
    }
}

/// Why an architecture string or index was rejected. `column` is 1-based, in characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchError {
    /// The string is not in NB201's `|op~0|+|op~0|op~1|+|…|` form.
    #[error("column {column}: {message} (in {input:?})")]
    Syntax {
        /// The whole string, as given.
        input: String,
        /// Where the problem starts.
        column: usize,
        /// What is wrong there.
        message: String,
    },
    /// An edge lists no operation (a supernet's edge must keep at least one).
    #[error("edge {edge} ({from}→{to}) has no operation")]
    EmptyEdge {
        /// The edge, 0..6 in NB201's order.
        edge: usize,
        /// The node it leaves.
        from: usize,
        /// The node it enters.
        to: usize,
    },
    /// The index as it was written.
    #[error("architecture index {0} is out of range 0..{NUM_ARCHS}")]
    IndexOutOfRange(String),
    /// A supernet where a single architecture is needed.
    #[error("the candidate has several operations on edge {edge} ({from}→{to}); a single architecture needs exactly one")]
    NotSingle {
        /// The first edge with several operations.
        edge: usize,
        /// The node it leaves.
        from: usize,
        /// The node it enters.
        to: usize,
    },
}

/// A cell with a *set* of operations on every edge: a single architecture when every set
/// has one element, a supernet (edge outputs summed) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Candidate {
    edges: [OpSet; NUM_EDGES],
}

impl Candidate {
    /// A candidate from its edge sets; every edge needs at least one operation.
    pub fn new(edges: [OpSet; NUM_EDGES]) -> Result<Candidate, ArchError> {
        if let Some(edge) = edges.iter().position(|set| set.is_empty()) {
            let (from, to) = EDGES[edge];
            return Err(ArchError::EmptyEdge { edge, from, to });
        }
        Ok(Candidate { edges })
    }

    /// The supernet with every operation on every edge.
    pub fn full() -> Candidate {
        Candidate { edges: [OpSet::FULL; NUM_EDGES] }
    }

    /// The operation set of each edge.
    pub fn edges(&self) -> &[OpSet; NUM_EDGES] {
        &self.edges
    }

    /// This candidate without `op` on `edge`; an error if that empties the edge.
    pub fn without(&self, edge: usize, op: Op) -> Result<Candidate, ArchError> {
        let mut edges = self.edges;
        edges[edge] = edges[edge].without(op);
        Candidate::new(edges)
    }

    /// Whether there is exactly one operation per edge.
    pub fn is_single(&self) -> bool {
        self.edges.iter().all(|set| set.len() == 1)
    }

    /// The single architecture, if this candidate is one.
    pub fn to_arch(&self) -> Result<Arch, ArchError> {
        let mut ops = [Op::None; NUM_EDGES];
        for (edge, set) in self.edges.iter().enumerate() {
            ops[edge] = set.as_single().ok_or_else(|| {
                let (from, to) = EDGES[edge];
                ArchError::NotSingle { edge, from, to }
            })?;
        }
        Ok(Arch { ops })
    }
}

impl From<Arch> for Candidate {
    fn from(arch: Arch) -> Candidate {
        Candidate { edges: arch.ops.map(OpSet::single) }
    }
}

impl fmt::Display for Candidate {
    /// NB201 form; an edge with several operations lists them joined by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("|")?;
        for (edge, (from, to)) in EDGES.iter().enumerate() {
            if edge > 0 && EDGES[edge - 1].1 != *to {
                f.write_str("+|")?;
            }
            let names: Vec<&str> = self.edges[edge].ops().map(Op::name).collect();
            write!(f, "{}~{from}|", names.join(","))?;
        }
        Ok(())
    }
}

impl FromStr for Candidate {
    type Err = ArchError;

    fn from_str(input: &str) -> Result<Candidate, ArchError> {
        Parser { input, pos: 0 }.candidate()
    }
}

impl Serialize for Candidate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Candidate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A single NB201 architecture: one operation per edge.
///
/// Dense index: the six op indices read as a base-5 number, the first edge (in string
/// order, `0→1`) being the most significant digit. So index 0 is all-`none`, index 15624 is
/// all-`avg_pool_3x3`, and sorting by index sorts by the op sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch {
    ops: [Op; NUM_EDGES],
}

impl Arch {
    /// The architecture with these edge operations (in [`EDGES`] order).
    pub fn new(ops: [Op; NUM_EDGES]) -> Arch {
        Arch { ops }
    }

    /// The operation on each edge.
    pub fn ops(&self) -> &[Op; NUM_EDGES] {
        &self.ops
    }

    /// The dense index in `0..15625` (see the type's documentation for the order).
    pub fn index(&self) -> usize {
        self.ops.iter().fold(0, |acc, op| acc * NUM_OPS + op.index())
    }

    /// The architecture with this dense index.
    pub fn from_index(index: usize) -> Result<Arch, ArchError> {
        if index >= NUM_ARCHS {
            return Err(ArchError::IndexOutOfRange(index.to_string()));
        }
        let mut ops = [Op::None; NUM_EDGES];
        let mut rest = index;
        for slot in ops.iter_mut().rev() {
            *slot = Op::ALL[rest % NUM_OPS];
            rest /= NUM_OPS;
        }
        Ok(Arch { ops })
    }

    /// A uniformly random architecture.
    pub fn random(rng: &mut impl rand::Rng) -> Arch {
        Arch::from_index(rng.random_range(0..NUM_ARCHS)).expect("index drawn in range")
    }

    /// This architecture with `edge` set to `op`.
    pub fn with_op(&self, edge: usize, op: Op) -> Arch {
        let mut ops = self.ops;
        ops[edge] = op;
        Arch { ops }
    }

    /// This architecture with one uniformly chosen edge set to a different op: the
    /// mutation of NB201's regularized evolution baseline.
    pub fn mutate(&self, rng: &mut impl rand::Rng) -> Arch {
        let edge = rng.random_range(0..NUM_EDGES);
        let shift = rng.random_range(1..NUM_OPS);
        self.with_op(edge, Op::ALL[(self.ops[edge].index() + shift) % NUM_OPS])
    }

    /// The architectures one mutation away (each edge set to each other op): 24 of them.
    pub fn neighbours(&self) -> impl Iterator<Item = Arch> + '_ {
        (0..NUM_EDGES).flat_map(move |edge| Op::ALL.into_iter().filter(move |op| *op != self.ops[edge]).map(move |op| self.with_op(edge, op)))
    }

    /// `n` distinct architectures drawn uniformly, reproducibly from `seed` (at most the
    /// whole space). A smaller sample is a prefix of a larger one with the same seed (a
    /// forward Fisher–Yates shuffle).
    pub fn sample(n: usize, seed: u64) -> Vec<Arch> {
        use rand::{Rng, SeedableRng};
        let n = n.min(NUM_ARCHS);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xa5c4);
        let mut indices: Vec<usize> = (0..NUM_ARCHS).collect();
        for i in 0..n {
            let j = rng.random_range(i..NUM_ARCHS);
            indices.swap(i, j);
        }
        indices[..n].iter().map(|&i| Arch::from_index(i).expect("index in range")).collect()
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Candidate::from(*self).fmt(f)
    }
}

impl FromStr for Arch {
    type Err = ArchError;

    /// Parses the NB201 form; a bare number is taken as a dense index.
    fn from_str(input: &str) -> Result<Arch, ArchError> {
        let trimmed = input.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            let index = trimmed.parse().map_err(|_| ArchError::IndexOutOfRange(trimmed.to_owned()))?;
            return Arch::from_index(index);
        }
        trimmed.parse::<Candidate>()?.to_arch()
    }
}

impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A hand-written recursive-descent parser, so that errors can say exactly where and what.
struct Parser<'a> {
    input: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, at: usize, message: impl Into<String>) -> ArchError {
        ArchError::Syntax {
            input: self.input.to_owned(),
            column: self.input[..at].chars().count() + 1,
            message: message.into(),
        }
    }

    fn expect(&mut self, want: char) -> Result<(), ArchError> {
        match self.input[self.pos..].chars().next() {
            Some(c) if c == want => {
                self.pos += c.len_utf8();
                Ok(())
            }
            Some(c) => Err(self.error(self.pos, format!("expected '{want}', found '{c}'"))),
            None => Err(self.error(self.pos, format!("expected '{want}', found the end of the string"))),
        }
    }

    fn candidate(mut self) -> Result<Candidate, ArchError> {
        // Surrounding whitespace is harmless (lines read from files often carry it).
        let start = self.input.len() - self.input.trim_start().len();
        let end = self.input.trim_end().len();
        self.pos = start;
        let mut edges = [OpSet::EMPTY; NUM_EDGES];
        let mut edge = 0;
        for node in 1..=3 {
            if node > 1 {
                self.expect('+')?;
            }
            self.expect('|')?;
            for from in 0..node {
                edges[edge] = self.edge(node, from)?;
                self.expect('|')?;
                edge += 1;
            }
            if node < 3 && self.pos < end && !self.input[self.pos..].starts_with('+') {
                let found = if self.input[self.pos..].starts_with('|') { "'|'" } else { "more text" };
                return Err(self.error(
                    self.pos,
                    format!("node {node} takes exactly {node} input edge(s); expected '+' or the end, found {found}"),
                ));
            }
        }
        if self.pos < end {
            return Err(self.error(self.pos, "unexpected text after the third node (a cell has 3 nodes)"));
        }
        Ok(Candidate { edges })
    }

    /// Parses `op[,op…]~from` for the edge `from → node`.
    fn edge(&mut self, node: usize, from: usize) -> Result<OpSet, ArchError> {
        let rest = &self.input[self.pos..];
        let len = rest.find(['|', '+']).unwrap_or(rest.len());
        let text = &rest[..len];
        let start = self.pos;
        let Some(tilde) = text.rfind('~') else {
            return Err(self.error(
                start,
                format!("edge {from}→{node}: expected 'op~{from}', found {text:?} (missing '~')"),
            ));
        };
        let mut set = OpSet::EMPTY;
        let mut offset = start;
        for name in text[..tilde].split(',') {
            let Some(op) = Op::from_name(name) else {
                let names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
                return Err(self.error(
                    offset,
                    format!("unknown operation {name:?} on edge {from}→{node} (known: {})", names.join(", ")),
                ));
            };
            if set.contains(op) {
                return Err(self.error(offset, format!("operation {name:?} repeated on edge {from}→{node}")));
            }
            set = set.with(op);
            offset += name.len() + 1;
        }
        let source = &text[tilde + 1..];
        if source != from.to_string() {
            return Err(self.error(
                start + tilde + 1,
                format!("edge {} of node {node} must come from node {from}, found '~{source}'", from + 1),
            ));
        }
        self.pos += len;
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEST_CIFAR10: &str = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|";

    #[test]
    fn every_index_round_trips_through_the_string_form() {
        for index in 0..NUM_ARCHS {
            let arch = Arch::from_index(index).unwrap();
            assert_eq!(arch.index(), index);
            let text = arch.to_string();
            let parsed: Arch = text.parse().unwrap();
            assert_eq!(parsed, arch, "{text}");
        }
    }

    #[test]
    fn index_order_is_documented_base_five_first_edge_most_significant() {
        assert_eq!(Arch::from_index(0).unwrap().to_string(), "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|");
        let last = Arch::from_index(NUM_ARCHS - 1).unwrap();
        assert!(last.ops().iter().all(|op| *op == Op::AvgPool3x3));
        // Last edge (2→3) is the least significant digit.
        assert_eq!(Arch::from_index(1).unwrap().ops()[5], Op::SkipConnect);
        assert_eq!(Arch::from_index(5usize.pow(5)).unwrap().ops()[0], Op::SkipConnect);
        assert!(Arch::from_index(NUM_ARCHS).is_err());
        // A number too large for any integer type is reported as typed.
        let err = "184467440737095516150000".parse::<Arch>().unwrap_err().to_string();
        assert_eq!(err, "architecture index 184467440737095516150000 is out of range 0..15625");
    }

    #[test]
    fn parses_the_canonical_form() {
        let arch: Arch = BEST_CIFAR10.parse().unwrap();
        assert_eq!(
            arch.ops(),
            &[Op::Conv3x3, Op::Conv3x3, Op::Conv3x3, Op::SkipConnect, Op::Conv3x3, Op::Conv3x3]
        );
        assert_eq!(arch.to_string(), BEST_CIFAR10);
        assert_eq!(format!("  {BEST_CIFAR10}\n").parse::<Arch>().unwrap(), arch);
        assert_eq!(arch.index().to_string().parse::<Arch>().unwrap(), arch);
    }

    #[test]
    fn supernets_round_trip() {
        let full = Candidate::full();
        let text = full.to_string();
        assert!(text.starts_with("|none,skip_connect,nor_conv_1x1,nor_conv_3x3,avg_pool_3x3~0|+|"));
        assert_eq!(text.parse::<Candidate>().unwrap(), full);
        assert!(!full.is_single());
        assert!(matches!(full.to_arch(), Err(ArchError::NotSingle { edge: 0, .. })));
        let err = text.parse::<Arch>().unwrap_err();
        assert!(err.to_string().contains("several operations on edge 0"), "{err}");
    }

    fn syntax_error(input: &str) -> (usize, String) {
        match input.parse::<Candidate>() {
            Err(ArchError::Syntax { column, message, .. }) => (column, message),
            other => panic!("expected a syntax error for {input:?}, got {other:?}"),
        }
    }

    #[test]
    fn malformed_strings_say_what_and_where() {
        let (column, message) = syntax_error("|conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|");
        assert_eq!(column, 2);
        assert!(message.contains("unknown operation \"conv_3x3\""), "{message}");

        let (column, message) = syntax_error("|none~0|+|none~0|none~2|+|none~0|none~1|none~2|");
        assert_eq!(column, 23);
        assert!(message.contains("must come from node 1, found '~2'"), "{message}");

        let (_, message) = syntax_error("|none~0|+|none~0|none~1|");
        assert!(message.contains("expected '+'"), "{message}");

        let (_, message) = syntax_error("|none~0|+|none~0|none~1|none~2|+|none~0|none~1|none~2|");
        assert!(message.contains("node 2 takes exactly 2 input edge(s)"), "{message}");

        let (column, message) = syntax_error("none~0|+|none~0|none~1|+|none~0|none~1|none~2|");
        assert_eq!(column, 1);
        assert!(message.contains("expected '|', found 'n'"), "{message}");

        let (_, message) = syntax_error("|none0|+|none~0|none~1|+|none~0|none~1|none~2|");
        assert!(message.contains("missing '~'"), "{message}");

        let (_, message) = syntax_error("|none,none~0|+|none~0|none~1|+|none~0|none~1|none~2|");
        assert!(message.contains("repeated"), "{message}");

        let (_, message) = syntax_error("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|x");
        assert!(message.contains("unexpected text"), "{message}");

        let (_, message) = syntax_error("");
        assert!(message.contains("end of the string"), "{message}");
    }

    #[test]
    fn empty_edges_are_rejected() {
        let mut edges = [OpSet::FULL; NUM_EDGES];
        edges[4] = OpSet::EMPTY;
        assert_eq!(Candidate::new(edges), Err(ArchError::EmptyEdge { edge: 4, from: 1, to: 3 }));
    }

    #[test]
    fn samples_are_distinct_seeded_and_nested() {
        let a = Arch::sample(50, 3);
        assert_eq!(a, Arch::sample(50, 3));
        assert_eq!(Arch::sample(20, 3)[..], a[..20]);
        assert_ne!(a, Arch::sample(50, 4));
        let unique: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(unique.len(), 50);
        assert_eq!(Arch::sample(NUM_ARCHS + 5, 0).len(), NUM_ARCHS);
    }

    #[test]
    fn mutations_change_exactly_one_edge() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let arch = Arch::from_index(4242).unwrap();
        for _ in 0..100 {
            let child = arch.mutate(&mut rng);
            assert_eq!(child.ops().iter().zip(arch.ops()).filter(|(a, b)| a != b).count(), 1);
        }
        let neighbours: std::collections::HashSet<Arch> = arch.neighbours().collect();
        assert_eq!(neighbours.len(), 24);
        assert!(!neighbours.contains(&arch));
        let pruned = Candidate::full().without(2, Op::None).unwrap();
        assert_eq!(pruned.edges()[2].len(), 4);
        let single: Candidate = arch.into();
        assert!(matches!(single.without(0, arch.ops()[0]), Err(ArchError::EmptyEdge { edge: 0, .. })));
    }

    #[test]
    fn op_sets() {
        let set = OpSet::single(Op::Conv3x3).with(Op::None);
        assert_eq!(set.len(), 2);
        assert_eq!(set.ops().collect::<Vec<_>>(), vec![Op::None, Op::Conv3x3]);
        assert_eq!(set.without(Op::None).as_single(), Some(Op::Conv3x3));
        assert_eq!(OpSet::FULL.len(), NUM_OPS);
    }
}

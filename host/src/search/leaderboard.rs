//! A run's standings: its trained candidates, its best-scored ones and its winner.

use crate::run::Fidelity;
use crate::space::Candidate;
use crate::store::EvaluationRecord;

/// Best-scored candidates a leaderboard lists.
pub const TOP_SCORES: usize = 10;

/// A run's standings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Leaderboard {
    /// Trained candidates, most accurate first (then lowest loss first).
    pub trained: Vec<Standing>,
    /// Best-scored candidates, highest score first (at most [`TOP_SCORES`]).
    pub top_scores: Vec<Standing>,
    /// The most accurate trained candidate; without training, the best-scored one.
    pub winner: Option<Standing>,
}

/// One candidate's standing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Standing {
    pub candidate: Candidate,
    pub score: Option<f64>,
    /// Held-out accuracy measured by the run's training.
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    /// The candidate's accuracy in the published table the run was annotated with (what
    /// the table says, not what the run measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_accuracy: Option<f64>,
}

impl Leaderboard {
    /// Standings from a run's evaluations, with published accuracies beside them.
    pub fn of(evaluations: &[EvaluationRecord], published: &crate::store::Published) -> Leaderboard {
        let mut board = Leaderboard::measured(evaluations);
        for s in board.trained.iter_mut().chain(&mut board.top_scores).chain(&mut board.winner) {
            s.published_accuracy = published.accuracy.get(&s.candidate).copied();
        }
        board
    }

    fn measured(evaluations: &[EvaluationRecord]) -> Leaderboard {
        let score_of = |c: &Candidate| {
            evaluations.iter().find(|e| e.fidelity == Fidelity::Score && &e.candidate == c).and_then(|e| e.score)
        };
        let mut trained: Vec<Standing> = evaluations
            .iter()
            // A training judged by a loss alone (a Katib objective to minimise) stands too.
            .filter(|e| e.fidelity == Fidelity::Train && (e.accuracy.is_some() || e.loss.is_some()))
            .map(|e| Standing {
                candidate: e.candidate,
                score: score_of(&e.candidate),
                accuracy: e.accuracy,
                loss: e.loss,
                published_accuracy: None,
            })
            .collect();
        trained.sort_by(|a, b| {
            b.accuracy.unwrap_or(f64::NEG_INFINITY).total_cmp(&a.accuracy.unwrap_or(f64::NEG_INFINITY)).then(
                a.loss.unwrap_or(f64::INFINITY).total_cmp(&b.loss.unwrap_or(f64::INFINITY)),
            )
        });
        let mut top_scores: Vec<Standing> = evaluations
            .iter()
            .filter(|e| e.fidelity == Fidelity::Score && e.score.is_some())
            .map(|e| Standing { candidate: e.candidate, score: e.score, accuracy: None, loss: None, published_accuracy: None })
            .collect();
        top_scores.sort_by(|a, b| b.score.unwrap_or(f64::NEG_INFINITY).total_cmp(&a.score.unwrap_or(f64::NEG_INFINITY)));
        top_scores.truncate(TOP_SCORES);
        let winner = trained.first().or(top_scores.first()).cloned();
        Leaderboard { trained, top_scores, winner }
    }
}

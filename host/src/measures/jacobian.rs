//! **Jacobian covariance** (Mellor et al., "Neural Architecture Search without Training",
//! arXiv v1, 2020; as in the zero-cost proxies' `jacob_cov`): the correlation matrix Σ_J of
//! the per-image input gradients of the summed logits (BN on batch statistics), scored
//! −Σ_i [ln(λ_i + k) + 1/(λ_i + k)] over its eigenvalues, k = 1e-5. Images whose input
//! gradients are less correlated — a network that tells them apart — score higher.

use tch::{Kind, Tensor};

use super::{MeasureError, finite};

/// k in the score.
const K: f64 = 1e-5;

/// The score from the pass's logits and its input (which must require gradients).
/// Missing when the output does not depend on the input at all.
pub(super) fn jacov(logits: &Tensor, input: &Tensor, keep_graph: bool) -> Result<Option<f64>, MeasureError> {
    let total = logits.f_sum(Kind::Double)?;
    let grads = Tensor::f_run_backward(&[&total], &[input], keep_graph, false)?;
    let Some(jacobian) = grads.first().filter(|g| g.defined()) else {
        // The output ignores the input (a cell of `none`s): no information flows at all.
        return Ok(None);
    };
    Ok(score(jacobian)?)
}

/// The score of a Jacobian `[n, …]`; missing for one image, which has no correlations.
fn score(jacobian: &Tensor) -> Result<Option<f64>, tch::TchError> {
    if jacobian.size().first().is_none_or(|&n| n < 2) {
        return Ok(None);
    }
    let corr = jacobian.f_flatten(1, -1)?.f_to_kind(Kind::Double)?.f_corrcoef()?;
    // An image whose gradient is constant has no correlation (NaN entries): missing, the
    // same verdict as for overflowed gradients.
    let Some(eig) = super::psd_eigenvalues(&corr)? else { return Ok(None) };
    let eig = eig.f_clamp_min(0.0)?.f_add_scalar(K)?;
    let sum = eig.f_log()?.f_add(&eig.f_reciprocal()?)?.f_sum(Kind::Double)?.f_double_value(&[])?;
    Ok(finite(-sum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncorrelated_gradients_score_higher_than_correlated_ones() {
        // Orthogonal rows: correlation matrix close to the identity, eigenvalues near 1.
        let distinct = Tensor::from_slice(&[1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0]).view([3, 4]);
        // Nearly identical rows: one eigenvalue near 3, two near 0, punished by 1/(λ+k).
        let alike = Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.1, 1.1, 2.0, 3.0, 4.0]).view([3, 4]);
        let (d, a) = (score(&distinct).unwrap().unwrap(), score(&alike).unwrap().unwrap());
        assert!(d > a, "{d} vs {a}");
        // One image has no correlations: missing, not an error that loses every measure.
        assert_eq!(score(&Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0]).view([1, 4])).unwrap(), None);
        // A constant row has no correlation at all.
        let flat = Tensor::from_slice(&[1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0]).view([2, 4]);
        assert_eq!(score(&flat).unwrap(), None);
    }
}

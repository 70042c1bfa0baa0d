//! Sample-quality metrics for any image model, computed from a classifier's outputs on the
//! images (the classifier is [`crate::eval::classifier::LeNet`] for digits):
//!
//! - Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule"):
//!   `|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})` between Gaussians fitted to the
//!   classifier's penultimate features of two image sets.
//! - Classifier score (the Inception score of Salimans et al. 2016 with this classifier):
//!   `exp(E_x KL(p(y|x) || p(y)))`, between 1 and the number of classes.
//! - Class coverage: the share of images the classifier puts in each class.
//! - Conditional accuracy: how often the classifier agrees with the class that was asked for.

use anyhow::{ensure, Result};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// Mean and covariance (unbiased, as numpy's `cov`) of feature rows.
#[derive(Debug, Clone)]
pub struct Gaussian {
    pub mean: DVector<f64>,
    pub covariance: DMatrix<f64>,
}

impl Gaussian {
    /// Fits `rows` feature vectors of equal length (at least two rows).
    pub fn fit(rows: &[Vec<f32>]) -> Result<Self> {
        ensure!(
            rows.len() >= 2,
            "a covariance needs at least 2 feature vectors, got {}",
            rows.len()
        );
        let dim = rows[0].len();
        ensure!(
            rows.iter().all(|r| r.len() == dim),
            "feature vectors differ in length"
        );
        let n = rows.len();
        let x = DMatrix::from_fn(n, dim, |i, j| rows[i][j] as f64);
        let mean = x.row_mean().transpose();
        let centred = DMatrix::from_fn(n, dim, |i, j| x[(i, j)] - mean[j]);
        let covariance = centred.transpose() * &centred / (n - 1) as f64;
        Ok(Self { mean, covariance })
    }
}

/// The eigendecomposition of a symmetric matrix, or an error. nalgebra's QR iteration can
/// fail to converge, or return non-finite eigenvalues, on rank-deficient covariances
/// (nalgebra issue #379; seen as a Fréchet distance of -inf on features of noise images, in
/// one build and not another): then the singular value decomposition, which for a symmetric
/// PSD matrix gives the same spectrum, takes over.
fn symmetric_spectrum(m: &DMatrix<f64>) -> Result<(DVector<f64>, DMatrix<f64>)> {
    let finite = |v: &DVector<f64>| v.iter().all(|x| x.is_finite());
    if let Some(eig) = SymmetricEigen::try_new(m.clone(), f64::EPSILON, 100_000) {
        if finite(&eig.eigenvalues) && eig.eigenvectors.iter().all(|x| x.is_finite()) {
            return Ok((eig.eigenvalues, eig.eigenvectors));
        }
    }
    let svd = nalgebra::SVD::try_new(m.clone(), true, false, f64::EPSILON, 100_000)
        .filter(|s| finite(&s.singular_values))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the covariance of the features has no finite eigendecomposition ({}x{})",
                m.nrows(),
                m.ncols()
            )
        })?;
    let u = svd.u.expect("asked for U");
    Ok((svd.singular_values, u))
}

/// The symmetric positive semi-definite square root through the eigendecomposition
/// (eigenvalues below zero from rounding are clamped to zero).
fn psd_sqrt(m: &DMatrix<f64>) -> Result<DMatrix<f64>> {
    let (values, vectors) = symmetric_spectrum(m)?;
    let roots = values.map(|v| v.max(0.0).sqrt());
    Ok(&vectors * DMatrix::from_diagonal(&roots) * vectors.transpose())
}

/// The Fréchet distance between two Gaussians. `Tr (S_a S_b)^{1/2}` is computed as
/// `Tr (S_a^{1/2} S_b S_a^{1/2})^{1/2}`, whose argument is symmetric PSD (same eigenvalues),
/// over the features `S_a` varies in: a feature of zero variance in `S_a` (a ReLU unit that no
/// image reaches) is a zero row and column of `S_a^{1/2}`, so leaving it out of the product is
/// exact, and the eigenproblem is no longer rank-deficient there. An input or a result that is
/// not finite is an error, never a figure.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64> {
    let dim = a.mean.len();
    ensure!(
        b.mean.len() == dim && a.covariance.nrows() == dim && b.covariance.nrows() == dim,
        "Fréchet distance between Gaussians of {} and {} features",
        dim,
        b.mean.len()
    );
    let finite = |m: &DMatrix<f64>| m.iter().all(|x| x.is_finite());
    ensure!(
        finite(&a.covariance)
            && finite(&b.covariance)
            && a.mean.iter().chain(b.mean.iter()).all(|x| x.is_finite()),
        "the features hold non-finite values: no Fréchet distance"
    );
    let varied: Vec<usize> = (0..dim).filter(|&j| a.covariance[(j, j)] > 0.0).collect();
    let sa = a.covariance.select_rows(&varied).select_columns(&varied);
    let sb = b.covariance.select_rows(&varied).select_columns(&varied);
    let root_a = psd_sqrt(&sa)?;
    let inner = &root_a * &sb * &root_a;
    let inner = (&inner + inner.transpose()) * 0.5;
    let (values, _) = symmetric_spectrum(&inner)?;
    let trace_sqrt: f64 = values.iter().map(|v| v.max(0.0).sqrt()).sum();
    let diff = &a.mean - &b.mean;
    let fd = diff.dot(&diff) + a.covariance.trace() + b.covariance.trace() - 2.0 * trace_sqrt;
    ensure!(
        fd.is_finite(),
        "the Fréchet distance came out {fd}: the features' covariance is degenerate"
    );
    Ok(fd)
}

/// `exp(E_x KL(p(y|x) || p(y)))` from class probabilities, one row per image.
pub fn classifier_score(probs: &[Vec<f32>]) -> f64 {
    let classes = probs.first().map_or(0, Vec::len);
    let marginal = class_means(probs, classes);
    let kl: f64 = probs
        .iter()
        .map(|p| {
            p.iter()
                .zip(&marginal)
                .filter(|(&pi, _)| pi > 0.0)
                .map(|(&pi, &mi)| pi as f64 * ((pi as f64).ln() - mi.ln()))
                .sum::<f64>()
        })
        .sum::<f64>()
        / probs.len().max(1) as f64;
    kl.exp()
}

fn class_means(probs: &[Vec<f32>], classes: usize) -> Vec<f64> {
    let mut m = vec![0f64; classes];
    for p in probs {
        for (mi, &pi) in m.iter_mut().zip(p) {
            *mi += pi as f64;
        }
    }
    m.iter().map(|v| v / probs.len().max(1) as f64).collect()
}

/// The most likely class of each row.
pub fn predictions(probs: &[Vec<f32>]) -> Vec<usize> {
    probs
        .iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        })
        .collect()
}

/// The share of images predicted as each of `classes` classes.
pub fn class_coverage(predicted: &[usize], classes: usize) -> Vec<f64> {
    let mut counts = vec![0f64; classes];
    for &c in predicted {
        if c < classes {
            counts[c] += 1.0;
        }
    }
    counts
        .iter()
        .map(|c| c / predicted.len().max(1) as f64)
        .collect()
}

/// The share of `predicted` equal to `wanted`.
pub fn accuracy(predicted: &[usize], wanted: &[usize]) -> f64 {
    let hits = predicted.iter().zip(wanted).filter(|(a, b)| a == b).count();
    hits as f64 / predicted.len().max(1) as f64
}

/// Unsupervised clusters matched one-to-one to classes (e.g. InfoGAN's categorical code to
/// digits), with what each cluster holds, so a failed match shows which classes merged.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterAssignment {
    /// Share of the images whose cluster stands for their label.
    pub accuracy: f64,
    /// `class_of_cluster[c]`: the class cluster `c` is matched to.
    pub class_of_cluster: Vec<usize>,
    /// `images[c]`: how many images fell in cluster `c`.
    pub images: Vec<usize>,
    /// `matched[c]`: how many of those carry the label `class_of_cluster[c]`.
    pub matched: Vec<usize>,
}

/// The best one-to-one assignment of clusters to classes (the Hungarian method, Kuhn 1955).
/// `clusters` and `labels` index `0..k`; pairs outside it count as misses.
pub fn best_assignment(clusters: &[usize], labels: &[usize], k: usize) -> ClusterAssignment {
    // counts[c][l]: images of cluster c with label l.
    let mut counts = vec![vec![0i64; k]; k];
    let mut images = vec![0usize; k];
    for (&c, &l) in clusters.iter().zip(labels) {
        if c < k {
            images[c] += 1;
            if l < k {
                counts[c][l] += 1;
            }
        }
    }
    let class_of_cluster = match pathfinding::matrix::Matrix::from_rows(counts.clone()) {
        Ok(weights) => pathfinding::kuhn_munkres::kuhn_munkres(&weights).1,
        // k = 0: nothing to match.
        Err(_) => Vec::new(),
    };
    let matched: Vec<usize> = class_of_cluster
        .iter()
        .enumerate()
        .map(|(c, &l)| counts[c][l] as usize)
        .collect();
    ClusterAssignment {
        accuracy: matched.iter().sum::<usize>() as f64 / clusters.len().max(1) as f64,
        class_of_cluster,
        images,
        matched,
    }
}

/// The accuracy of unsupervised clusters as classes under [`best_assignment`].
pub fn best_assignment_accuracy(clusters: &[usize], labels: &[usize], k: usize) -> f64 {
    best_assignment(clusters, labels, k).accuracy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    fn gaussian_rows(n: usize, dim: usize, shift: f32, scale: f32, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                rng.normal_vec(dim)
                    .iter()
                    .map(|v| v * scale + shift)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn frechet_distance_of_known_gaussians() -> Result<()> {
        // Diagonal covariances: d = |mu_a - mu_b|^2 + sum (sa - sb)^2 over std devs.
        let a = Gaussian {
            mean: DVector::from_vec(vec![0.0, 1.0]),
            covariance: DMatrix::from_diagonal(&DVector::from_vec(vec![4.0, 1.0])),
        };
        let b = Gaussian {
            mean: DVector::from_vec(vec![3.0, 1.0]),
            covariance: DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 9.0])),
        };
        let want = 9.0 + (2.0f64 - 1.0).powi(2) + (1.0f64 - 3.0).powi(2);
        assert!((frechet_distance(&a, &b)? - want).abs() < 1e-9);
        assert!(frechet_distance(&a, &a)?.abs() < 1e-9);
        // A full covariance against itself rotated stays symmetric in its arguments.
        let rows = gaussian_rows(500, 6, 0.0, 1.0, 1);
        let other = gaussian_rows(500, 6, 0.5, 2.0, 2);
        let (ga, gb) = (Gaussian::fit(&rows)?, Gaussian::fit(&other)?);
        let (ab, ba) = (frechet_distance(&ga, &gb)?, frechet_distance(&gb, &ga)?);
        assert!((ab - ba).abs() < 1e-6 * ab, "{ab} vs {ba}");
        // Expected: 6 * 0.5^2 + 6 * (2 - 1)^2 = 7.5, up to sampling noise.
        assert!((ab - 7.5).abs() < 1.0, "{ab}");
        Ok(())
    }

    /// The case behind the -inf that `genzoo eval` once printed for a nearly untrained GAN:
    /// 100 sample features of which 78 of 128 never vary (ReLU units no noise image reaches)
    /// against the test digits' features. numpy (`np.linalg.eigvals(S_a @ S_b)` on the same
    /// values, float64) gives 29.30964076040437.
    #[test]
    fn frechet_distance_of_rank_deficient_features_matches_numpy() -> Result<()> {
        let table = |n: usize, f: &dyn Fn(usize, usize) -> f32| -> Vec<Vec<f32>> {
            (0..n)
                .map(|i| (0..128).map(|j| f(i, j)).collect())
                .collect()
        };
        let samples = table(100, &|i, j| {
            if j < 50 {
                ((i * 7919 + j * 104729) % 1000) as f32 / 1000.0
            } else {
                0.0
            }
        });
        let test = table(300, &|i, j| {
            ((i * 31 + j * 17 + i * j) % 997) as f32 / 997.0
        });
        let (a, b) = (Gaussian::fit(&samples)?, Gaussian::fit(&test)?);
        let fd = frechet_distance(&a, &b)?;
        assert!((fd - 29.30964076040437).abs() < 1e-6 * 29.3, "{fd}");
        // The other way round the zero columns sit in S_b, where no split applies.
        let fd_ba = frechet_distance(&b, &a)?;
        assert!((fd_ba - fd).abs() < 1e-6 * fd, "{fd_ba} vs {fd}");
        Ok(())
    }

    #[test]
    fn a_non_finite_distance_is_an_error_not_a_figure() -> Result<()> {
        let mut rows = gaussian_rows(50, 4, 0.0, 1.0, 3);
        rows[7][2] = f32::INFINITY;
        let bad = Gaussian::fit(&rows)?;
        let good = Gaussian::fit(&gaussian_rows(50, 4, 0.0, 1.0, 4))?;
        let e = frechet_distance(&bad, &good).unwrap_err().to_string();
        assert!(e.contains("non-finite"), "{e}");
        let huge = Gaussian {
            mean: DVector::from_vec(vec![f64::MAX, 0.0]),
            covariance: DMatrix::identity(2, 2),
        };
        let e = frechet_distance(
            &huge,
            &Gaussian {
                mean: DVector::from_vec(vec![-f64::MAX, 0.0]),
                covariance: DMatrix::identity(2, 2),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("came out inf"), "{e}");
        Ok(())
    }

    #[test]
    fn fit_refuses_too_few_rows() {
        let e = Gaussian::fit(&[vec![1.0]]).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
    }

    #[test]
    fn classifier_score_spans_one_to_the_class_count() {
        // Confident and balanced over 4 classes: 4. All the same class: 1. Uniform: 1.
        let eye: Vec<Vec<f32>> = (0..4)
            .map(|i| (0..4).map(|j| f32::from(i == j)).collect())
            .collect();
        assert!((classifier_score(&eye) - 4.0).abs() < 1e-9);
        assert!((classifier_score(&vec![vec![1.0, 0.0, 0.0, 0.0]; 4]) - 1.0).abs() < 1e-9);
        assert!((classifier_score(&vec![vec![0.25; 4]; 4]) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn clusters_are_matched_to_labels_one_to_one() {
        // Clusters are labels permuted (0->2, 1->0, 2->1), one image mislabelled.
        let labels = [0, 0, 1, 1, 2, 2, 2];
        let clusters = [2, 2, 0, 0, 1, 1, 0];
        let acc = best_assignment_accuracy(&clusters, &labels, 3);
        assert!((acc - 6.0 / 7.0).abs() < 1e-12, "{acc}");
        // Everything in one cluster: only one class can be matched.
        assert!(
            (best_assignment_accuracy(&[0; 6], &[0, 0, 1, 1, 2, 2], 3) - 1.0 / 3.0).abs() < 1e-12
        );
    }

    #[test]
    fn assignment_reports_what_each_cluster_holds() {
        // Cluster 0 holds both 0s and both 1s (merged), cluster 2 the 2s, cluster 1 is empty.
        let a = best_assignment(&[0, 0, 0, 0, 2, 2], &[0, 0, 1, 1, 2, 2], 3);
        assert_eq!(a.images, vec![4, 0, 2]);
        assert_eq!(a.class_of_cluster[2], 2);
        assert!(a.class_of_cluster[0] < 2, "{:?}", a.class_of_cluster);
        assert_eq!(a.matched, vec![2, 0, 2]);
        assert!((a.accuracy - 4.0 / 6.0).abs() < 1e-12, "{}", a.accuracy);
        assert_eq!(best_assignment(&[], &[], 0).accuracy, 0.0);
    }

    #[test]
    fn coverage_and_accuracy_count_predictions() {
        let probs = vec![vec![0.1, 0.9], vec![0.8, 0.2], vec![0.3, 0.7]];
        let p = predictions(&probs);
        assert_eq!(p, vec![1, 0, 1]);
        assert_eq!(class_coverage(&p, 2), vec![1.0 / 3.0, 2.0 / 3.0]);
        assert!((accuracy(&p, &[1, 1, 1]) - 2.0 / 3.0).abs() < 1e-12);
        // A prediction outside the classes counts in the total, in no class.
        assert_eq!(class_coverage(&[0, 2, 1, 1], 2), vec![0.25, 0.5]);
    }

    #[test]
    fn clusters_and_labels_outside_the_classes_are_misses() {
        // Cluster 3 and label 3 do not exist among k = 3: each such image is a miss, and the
        // cluster-3 image is in no cluster's count.
        let a = best_assignment(&[0, 3, 1, 2], &[0, 1, 3, 2], 3);
        assert_eq!(a.images, vec![1, 1, 1]);
        assert_eq!(a.matched.iter().sum::<usize>(), 2, "{a:?}");
        assert!((a.accuracy - 0.5).abs() < 1e-12, "{}", a.accuracy);
    }
}

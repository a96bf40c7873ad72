import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from edge_rec import metrics as M
from edge_rec.errors import DataError


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_ndcg_matches_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(40, 25))
    if ties:
        s = np.round(s)  # many tied scores
    y = rng.integers(0, 4, size=(40, 25)).astype(float)
    y[:, 0] = np.maximum(y[:, 0], 1)  # every request has a positive
    for k in (1, 5, 10, 25):
        assert abs(np.mean(M.ndcg_at_k(s, y, k)) - ndcg_score(y, s, k=k)) < 1e-9


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_gauc_match_sklearn(seed, ties):
    rng = np.random.default_rng(100 + seed)
    s = rng.normal(size=(30, 20))
    if ties:
        s = np.round(s * 2) / 2
    y = (rng.random((30, 20)) < 0.3).astype(int)
    y[:, 0], y[:, 1] = 1, 0
    assert abs(M.auc(s, y) - roc_auc_score(y.ravel(), s.ravel())) < 1e-9
    groups = rng.integers(0, 7, size=30)  # several requests per user
    ref_num = ref_den = 0.0
    for g in np.unique(groups):
        yy, ss = y[groups == g].ravel(), s[groups == g].ravel()
        ref_num += roc_auc_score(yy, ss) * len(yy)
        ref_den += len(yy)
    assert abs(M.gauc(s, y, groups) - ref_num / ref_den) < 1e-9


def test_recall_hit_mrr_on_a_hand_example():
    s = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    y = np.array([[0, 1, 0, 0, 1]])
    assert M.recall_at_k(s, y, 2)[0] == pytest.approx(0.5)
    assert M.recall_at_k(s, y, 5)[0] == pytest.approx(1.0)
    assert M.hit_rate_at_k(s, y, 1)[0] == 0.0
    assert M.hit_rate_at_k(s, y, 2)[0] == 1.0
    assert M.reciprocal_rank(s, y)[0] == pytest.approx(0.5)
    ideal = 1 + 1 / np.log2(3)
    assert M.ndcg_at_k(s, y, 5)[0] == pytest.approx((1 / np.log2(3) + 1 / np.log2(6)) / ideal)


def test_constant_scores_are_not_rewarded():
    # one positive among 10 identical scores: expected NDCG of a random order, pessimistic MRR
    y = np.zeros((1, 10)); y[0, 0] = 1
    s = np.zeros((1, 10))
    assert M.ndcg_at_k(s, y, 10)[0] == pytest.approx(np.mean(1 / np.log2(np.arange(10) + 2)))
    assert M.reciprocal_rank(s, y)[0] == pytest.approx(0.1)
    assert M.hit_rate_at_k(s, y, 5)[0] == 0.0
    assert M.auc(s, y) == pytest.approx(0.5)


def test_padding_is_ignored_and_nan_is_refused():
    s = np.array([[0.1, 0.9, 5.0], [0.3, 0.2, 0.0]])
    y = np.array([[1, 0, 1], [1, 0, 0]])
    valid = np.array([[True, True, False], [True, True, True]])
    short = M.ndcg_at_k(s[:1, :2], y[:1, :2], 10)[0]
    assert M.ndcg_at_k(s, y, 10, valid)[0] == pytest.approx(short)
    bad = s.copy(); bad[1, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        M.ranking_report(bad, y, valid)
    bad[1, 1] = 0.0; bad[0, 2] = np.nan  # NaN in a padded slot is fine
    M.ranking_report(bad, y, valid)


def test_requests_without_positive_are_left_out():
    s = np.array([[0.9, 0.1], [0.5, 0.4]])
    y = np.array([[1, 0], [0, 0]])
    rep = M.ranking_report(s, y)
    assert rep["ndcg@10"] == pytest.approx(1.0)
    assert rep["n_requests"] == 1

"""Full-ranking metrics against hand-computed cases, ROUGE-Lsum and accuracy on known pairs."""

from __future__ import annotations

import math

import pytest
import torch

from userllm.metrics import (
    RankingAccumulator,
    accuracy,
    popularity_scores,
    ranking_metrics,
    ranks,
    rouge_lsum,
)

# ids:                    pad  unk   2    3    4    5
SCORES = torch.tensor([[0.9, 0.9, 0.5, 0.7, 0.3, 0.7]])


def test_ties_are_pessimistic_and_reserved_ids_never_ranked():
    # target 3 (0.7) ties with item 5; pad and unknown score higher but are never ranked
    assert ranks(SCORES, torch.tensor([3])).tolist() == [2.0]
    assert ranks(SCORES, torch.tensor([5])).tolist() == [2.0]
    assert ranks(SCORES, torch.tensor([4])).tolist() == [4.0]


def test_excluded_items_do_not_compete_but_a_seen_target_does():
    seen = [torch.tensor([5, 2, 3])]  # the target 3 was seen before: it still competes
    assert ranks(SCORES, torch.tensor([3]), seen).tolist() == [1.0]
    assert ranks(SCORES, torch.tensor([4]), seen).tolist() == [1.0]


def test_exclusion_formats_agree():
    scores = torch.randn(2, 8)
    targets = torch.tensor([2, 7])
    as_list = [torch.tensor([3, 4]), torch.tensor([5])]
    as_padded = torch.tensor([[3, 4], [5, 0]])
    as_mask = torch.zeros(2, 8, dtype=torch.bool)
    as_mask[0, [3, 4]] = True
    as_mask[1, 5] = True
    expected = ranks(scores, targets, as_mask)
    assert torch.equal(ranks(scores, targets, as_list), expected)
    assert torch.equal(ranks(scores, targets, as_padded), expected)


def test_metric_values_for_a_known_rank():
    metrics = ranking_metrics(SCORES, torch.tensor([3]), ks=(1, 5))
    assert metrics["recall@1"].item() == 0.0
    assert metrics["recall@5"].item() == 1.0
    assert metrics["ndcg@1"].item() == 0.0
    assert metrics["ndcg@5"].item() == pytest.approx(1 / math.log2(3))
    assert metrics["mrr"].item() == pytest.approx(0.5)


def test_unknown_target_is_a_miss_that_still_counts():
    metrics = ranking_metrics(SCORES, torch.tensor([1]))
    assert all(v.item() == 0.0 for v in metrics.values())


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        ranks(torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), torch.tensor([2]))


def test_accumulator_over_batches_equals_one_big_batch():
    torch.manual_seed(0)
    scores, targets = torch.randn(7, 30), torch.randint(2, 30, (7,))
    seen = torch.randint(0, 30, (7, 5))
    whole = RankingAccumulator()
    whole.update(scores, targets, seen)
    parts = RankingAccumulator()
    parts.update(scores[:3], targets[:3], seen[:3])
    parts.update(scores[3:], targets[3:], seen[3:])
    assert parts.count == 7
    a, b = whole.compute(), parts.compute()
    assert {"recall@1", "recall@5", "recall@10", "recall@20", "ndcg@10", "mrr"} <= set(a)
    assert a == pytest.approx(b)


def test_popularity_baseline_runs_through_the_same_accumulator():
    counts = torch.tensor([0, 0, 5, 3, 3, 1])
    accumulator = RankingAccumulator(ks=(1, 2))
    # target 2 is the most popular: rank 1; target 4 ties with 3: rank 3;
    # target 3 ties with 4 and the user has seen 2: rank 2
    seen = [torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), torch.tensor([2])]
    accumulator.update(popularity_scores(counts), torch.tensor([2, 4, 3]), seen)
    result = accumulator.compute()
    assert result["recall@1"] == pytest.approx(1 / 3)
    assert result["recall@2"] == pytest.approx(2 / 3)
    assert result["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)


def test_rouge_lsum_on_known_pairs():
    assert rouge_lsum(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(500 / 6)
    # summary-level LCS: each reference sentence is matched across the prediction's sentences
    assert rouge_lsum(["A b. C d."], ["C d. A b."]) == pytest.approx(100.0)
    assert rouge_lsum(["great movies", "x"], ["great movie", "y"]) == pytest.approx(50.0)  # stemming


def test_accuracy_ignores_case_and_whitespace():
    assert accuracy(["Drama", " comedy "], ["drama", "Action"]) == 0.5
    with pytest.raises(ValueError):
        accuracy(["a"], [])
